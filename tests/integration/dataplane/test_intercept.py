"""The catch-all intercept listener for real: an iptables REDIRECT in a network namespace
sends calls to VIPs to one listener, which reads SO_ORIGINAL_DST to find the service."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("intercept_child.py")
ROOT = Path(__file__).parents[3]


def test_intercept_listener_routes_by_original_destination() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("iptables") is None:
        pytest.fail("this test needs root, unshare and iptables (a network namespace with NAT)")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, str(CHILD)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    status, backend, request_id = result["http"]
    assert (status, backend) == (200, "api-backend")
    assert request_id
    assert result["tcp"] == "PING\n"
    assert result["unknown"] in ("", "reset")  # not a service: closed
    assert ["api", 200, "web"] in result["log"]
    assert any(dest == "cache" and src == "web" for dest, _, src in result["log"])
