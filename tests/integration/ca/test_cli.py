"""`localmesh ca ...` as a user runs it: a real process, a temporary LOCALMESH_HOME."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def cli(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCALMESH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "localmesh.cli.main", "ca", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=cwd,
    )


def test_init_is_idempotent_and_show_reports_it(home: Path) -> None:
    first = cli(home, "init", "--json")
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert created["created"] is True
    again = json.loads(cli(home, "init", "--json").stdout)
    assert again["created"] is False
    assert again["root"]["sha256"] == created["root"]["sha256"]
    shown = json.loads(cli(home, "show", "--json").stdout)
    assert shown["root"]["path"] == str(home / "ca" / "root.pem")
    assert "localhost" in shown["name_constraints"]["dns"]
    assert isinstance(shown["trusted_system_store"], bool)
    human = cli(home, "show")
    assert created["root"]["sha256"] in human.stdout


def test_issue_client_writes_a_usable_identity(home: Path, tmp_path: Path) -> None:
    assert cli(home, "init").returncode == 0
    out = tmp_path / "clients"
    proc = cli(home, "issue-client", "alice", "--trust-domain", "shop", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["identity"] == "spiffe://shop/client/alice"
    assert data["cert"] == str(out / "alice.pem")
    assert stat.S_IMODE((out / "alice-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate((out / "alice.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [data["identity"]]
    human = cli(home, "issue-client", "bob", "--days", "1")
    assert "spiffe://localmesh/client/bob" in human.stdout
    assert (home / "clients" / "bob-key.pem").exists()


def test_issue_client_in_a_project_takes_its_trust_domain_and_ingress(
    home: Path, tmp_path: Path
) -> None:
    """A certificate for another trust domain would name no client the policies know."""
    assert cli(home, "init").returncode == 0
    (tmp_path / "mesh.yaml").write_text(
        "mesh:\n  trust_domain: shop.test\n"
        "ingress:\n  https_port: 9443\n  hosts:\n    - host: shop2.localhost\n"
    )
    human = cli(home, "issue-client", "alice", cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    assert "issued spiffe://shop.test/client/alice" in human.stdout
    assert human.stdout.rstrip().endswith("https://shop2.localhost:9443/")
    given = cli(home, "issue-client", "alice", "--trust-domain", "other", "--json", cwd=tmp_path)
    assert json.loads(given.stdout)["identity"] == "spiffe://other/client/alice"


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ")
    assert lines[1].startswith("hint: ")
    return lines


def test_user_errors_are_one_line_with_a_hint(home: Path) -> None:
    assert "run `localmesh ca init`" in _one_error_line(cli(home, "show"))[1]
    assert cli(home, "init").returncode == 0
    assert "not a valid client name" in _one_error_line(cli(home, "issue-client", "a.b"))[0]
    os.chmod(home / "ca" / "intermediate-key.pem", 0o640)
    lines = _one_error_line(cli(home, "issue-client", "carol"))
    assert "mode 0640" in lines[0]
    assert "chmod 600" in lines[1]


def test_a_home_that_cannot_be_made_is_a_user_error(tmp_path: Path) -> None:
    """LOCALMESH_HOME under a regular file: one line naming the place, not an internal error."""
    (tmp_path / "a-file").write_text("")
    lines = _one_error_line(cli(tmp_path / "a-file" / "home", "init"))
    assert f"cannot create {tmp_path / 'a-file' / 'home' / 'ca'}: Not a directory" in lines[0]
    assert "set LOCALMESH_HOME to a directory you can write" in lines[1]
