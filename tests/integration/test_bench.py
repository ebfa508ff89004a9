"""``bench/engine_cpu.py`` drives the real engine through in-memory transports (plain, behind
the ingress's TLS stream, and the featureless ceiling): run briefly here so the benchmark
cannot rot unnoticed. Its own check is real: every request written upstream got its
response written downstream, so a broken engine or TLS stream fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import free_port

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(
    "args",
    [[], ["--tls"], ["--ceiling"], ["--no-access-log", "--routes", "1000"]],
    ids=["plain", "tls", "ceiling", "1000-routes"],
)
def test_engine_cpu_runs(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "engine_cpu.py", "--requests", "200", *args],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert " us/request (" in done.stdout


def test_a_failing_load_generator_stops_the_harness_saying_why() -> None:
    """wrk refused at its first connect exits 1: the harness says the command and wrk's
    own words, not a bare CalledProcessError."""
    sys.path.insert(0, str(BENCH))
    try:
        import dataplane
    finally:
        sys.path.remove(str(BENCH))
    port = free_port()  # nothing listens there
    with pytest.raises(SystemExit) as info:
        dataplane.wrk(port, 1, [])
    said = str(info.value.code)
    assert said.startswith(f"wrk -t1 -c50 -d1s --latency http://127.0.0.1:{port}/ exited 1\n")
    assert f"unable to connect to 127.0.0.1:{port} Connection refused" in said
