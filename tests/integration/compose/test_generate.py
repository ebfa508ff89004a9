"""``generate`` against a real Docker engine and as the ``localmesh`` command a user runs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from localmesh.ca import files
from localmesh.ca.authority import CertificateAuthority
from localmesh.cli import compose_cmds
from localmesh.compose.addresses import candidates
from localmesh.compose.generate import GenerateOptions, generate, renew_certs
from localmesh.compose.project import compose_command

pytestmark = pytest.mark.docker
LOCALMESH = [sys.executable, "-m", "localmesh.cli.main"]


@pytest.fixture(autouse=True)
def _ca_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMESH_HOME", str(tmp_path_factory.getbasetemp() / "localmesh-home"))
    for var in list(os.environ):
        if var.startswith("COMPOSE_"):
            monkeypatch.delenv(var)


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@pytest.fixture
def unique() -> str:
    return f"lmgen{uuid.uuid4().hex[:8]}"


@pytest.fixture
def exposing_image(docker_engine: str, tmp_path: Path, unique: str) -> Iterator[str]:
    """A local image whose only port knowledge is its EXPOSE line."""
    tag = f"localmesh-test-expose:{unique}"
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "Dockerfile").write_text(f"FROM {docker_engine}\nEXPOSE 8123\n")
    docker("build", "-q", "-t", tag, str(tmp_path / "img"))
    yield tag
    docker("image", "rm", "-f", tag, check=False)


@pytest.fixture
def squatter(docker_engine: str, unique: str) -> Iterator[str]:
    """An existing network on the subnet the project would pick first."""
    name = f"{unique}-squatter"
    docker("network", "create", "--subnet", str(candidates(unique)[0]), name)
    yield name
    docker("network", "rm", name, check=False)


def test_engine_networks_and_image_expose_are_used(
    tmp_path: Path, unique: str, exposing_image: str, squatter: str
) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "compose.yaml").write_text(
        f"name: {unique}\nservices:\n  svc:\n    image: {exposing_image}\n"
        "  client:\n    image: busybox\n"
    )
    result = generate(GenerateOptions(cwd=project, base_image="localmesh-base:bookworm"))
    plan = result.plan
    assert plan.network.subnet != str(candidates(unique)[0])  # the squatter's subnet
    assert plan.network.subnet == str(candidates(unique)[1])
    svc = plan.upstream("svc")
    assert svc is not None
    assert [(p.port, p.sources) for p in svc.ports] == [(8123, ("image",))]
    assert "no-engine" not in [w.code for w in plan.warnings]
    # init asks the same engine, so the mesh.yaml it writes names the same port
    init = subprocess.run(
        [*LOCALMESH, "init", "--stdout"], cwd=project, capture_output=True, text=True, check=False
    )
    assert init.returncode == 0, init.stderr
    assert "{port: 8123, protocol: http}   # from image; protocol by default" in init.stdout


def test_the_engine_runs_the_generated_project(
    docker_engine: str, tmp_path: Path, unique: str
) -> None:
    """Compose creates it as written (networks, static address, extra_hosts, read-only
    certificate mounts), and inside a real client the upstream's name is its VIP."""
    project = tmp_path / "p"
    project.mkdir()
    sleep = '["sleep", "infinity"]'
    (project / "compose.yaml").write_text(
        f"name: {unique}\nservices:\n"
        f"  app:\n    image: {docker_engine}\n    command: {sleep}\n    networks: [front]\n"
        f"  api:\n    image: {docker_engine}\n    command: {sleep}\n    networks: [front, back]\n"
        "    expose: ['8000']\n"
        f"  db:\n    image: {docker_engine}\n    command: {sleep}\n    networks: [back]\n"
        "networks:\n  front: {}\n  back: {}\n"
    )
    # the base image stands in for the mesh image: containers are created, not all started
    result = generate(
        GenerateOptions(cwd=project, base_image=docker_engine), image_tag=docker_engine
    )
    compose = [*compose_command(), "-f", str(result.compose_file)]
    try:
        subprocess.run([*compose, "create"], check=True, capture_output=True, cwd=project)
        mesh_net = json.loads(docker("network", "inspect", result.plan.network.name))[0]
        assert mesh_net["IPAM"]["Config"][0]["Subnet"] == result.plan.network.subnet
        assert mesh_net["IPAM"]["Config"][0]["IPRange"] == result.plan.network.ip_range
        mesh_id = docker(
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={unique}",
            "--filter",
            "label=com.docker.compose.service=localmesh",
        )
        mesh = json.loads(docker("inspect", mesh_id))[0]
        ipam = mesh["NetworkSettings"]["Networks"][result.plan.network.name]["IPAMConfig"]
        assert ipam["IPv4Address"] == result.plan.network.mesh_ip
        assert mesh["HostConfig"]["CapAdd"] in (["NET_ADMIN"], ["CAP_NET_ADMIN"])

        app_id = docker(
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={unique}",
            "--filter",
            "label=com.docker.compose.service=app",
        )
        docker("start", app_id)  # alone: its depends_on is compose's business, not ours
        api = result.plan.upstream("api")
        assert api is not None
        assert docker("exec", app_id, "getent", "hosts", "api").split()[0] == api.vip
        trust = docker("exec", app_id, "sh", "-c", "ls /etc/localmesh/trust; echo $SSL_CERT_FILE")
        assert trust.split() == ["bundle.pem", "ca.pem", "/etc/localmesh/trust/bundle.pem"]
        denied = subprocess.run(
            ["docker", "exec", app_id, "touch", "/etc/localmesh/identity/x"],
            capture_output=True,
            check=False,
        )
        assert denied.returncode != 0  # mounted read-only
    finally:
        subprocess.run([*compose, "down", "-t", "0"], capture_output=True, check=False, cwd=project)
    assert docker("network", "ls", "-q", "--filter", f"name={result.plan.network.name}") == ""


def test_an_internal_network_keeps_its_services_in(
    docker_engine: str, tmp_path: Path, unique: str
) -> None:
    """db had no way out of the host (its only network is internal): joined to the mesh
    network it would have had one, so the engine creates that network internal too."""
    project = tmp_path / "p"
    project.mkdir()
    run = f"image: {docker_engine}\n    command: [sleep, infinity]"
    (project / "compose.yaml").write_text(
        f"name: {unique}\nservices:\n"
        f"  app:\n    {run}\n    networks: [front, back]\n"
        f"  db:\n    {run}\n    networks: [back]\n"
        "networks:\n  front: {}\n  back: {internal: true}\n"
    )
    result = generate(
        GenerateOptions(cwd=project, base_image=docker_engine), image_tag=docker_engine
    )
    compose = [*compose_command(), "-f", str(result.compose_file)]
    try:
        subprocess.run([*compose, "create"], check=True, capture_output=True, cwd=project)
        mesh_net = json.loads(docker("network", "inspect", result.plan.network.name))[0]
        assert mesh_net["Internal"] is True
        front = json.loads(docker("network", "inspect", f"{unique}_front"))[0]
        assert front["Internal"] is False  # the mesh container publishes its ports here
    finally:
        subprocess.run([*compose, "down", "-t", "0"], capture_output=True, check=False, cwd=project)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".localmesh" not in p.parts
    }


def test_cli_writes_once_leaves_user_files_alone_and_refuses_its_output(
    tmp_path: Path, unique: str, docker_engine: str
) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "compose.yaml").write_text(
        f"name: {unique}\nservices:\n  web:\n    image: busybox\n"
        "    environment: {API: 'http://api:8000'}\n  api:\n    image: busybox\n"
    )
    (project / ".env").write_text("UNUSED=1\n")
    before = _digest(project)
    env = {**os.environ, "LOCALMESH_BASE_IMAGE": docker_engine}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LOCALMESH, *args], cwd=project, capture_output=True, text=True, env=env, check=False
        )

    first = cli("generate", "--json")
    assert first.returncode == 0, first.stderr
    written = (project / ".localmesh" / "compose.yaml").read_text()
    second = cli("generate")
    assert second.returncode == 0, second.stderr
    assert "api" in second.stdout
    assert "[unknown-ports]" in second.stderr  # warnings go to stderr, one line each
    # the same bytes, but for the image tag: it hashes the package, which the other
    # sessions sharing this checkout may be editing between the two runs
    tag = json.loads(first.stdout)["image"]
    again = (project / ".localmesh" / "compose.yaml").read_text()
    assert again.replace(again.split('tag: "')[1].split('"')[0], tag) == written
    data = json.loads(first.stdout)
    assert data["plan"]["upstreams"]["api"]["ports"][0]["port"] == 8000
    assert _digest(project) == before

    refused = cli("generate", "-f", ".localmesh/compose.yaml")
    assert refused.returncode == 2
    assert "generated by localmesh" in refused.stderr
    assert "Traceback" not in refused.stderr

    bad = cli("generate", "--subnet", "10.0.0.0/30")
    assert bad.returncode == 2
    assert "between /16 and /22" in bad.stderr


def test_without_an_engine_generate_still_writes_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "compose.yaml").write_text("services:\n  a:\n    image: busybox\n")
    result = generate(GenerateOptions(cwd=tmp_path, base_image="localmesh-base:bookworm"))
    assert [w.code for w in result.plan.warnings][:1] == ["no-engine"]
    assert result.plan.network.subnet == str(candidates(tmp_path.name)[0])
    assert result.compose_file.is_file()


def test_renew_certs_reissues_what_fell_due_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a foreground `localmesh up` runs every few minutes: an app's workload identity
    past 2/3 of its life is issued again in place (the app's container mounts it)."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  a:\n    image: busybox\n  b:\n    image: busybox\n"
    )
    result = generate(GenerateOptions(cwd=tmp_path, base_image="localmesh-base:bookworm"))
    assert renew_certs(result) == ()  # all fresh
    certs = result.compose_file.parent / "certs" / "services"
    ca = CertificateAuthority.load()
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(hours=17)  # 17 of 24 hours: due
    ca.issue_workload(result.mesh.mesh.trust_domain, "a", now=aged).write(
        certs / "a" / "cert.pem", certs / "a" / "key.pem"
    )
    old_a, old_b = (certs / "a" / "cert.pem").read_bytes(), (certs / "b" / "cert.pem").read_bytes()
    assert renew_certs(result) == ("a",)
    assert (certs / "a" / "cert.pem").read_bytes() != old_a
    assert (certs / "b" / "cert.pem").read_bytes() == old_b
    assert renew_certs(result) == ()


def test_container_identities_last_the_configured_workload_cert_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mesh.workload_cert_lifetime`` holds for the identities mounted into containers too
    (they were always 24 h): the docs' advice for apps that read their cert only at start."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "compose.yaml").write_text("services:\n  a:\n    image: busybox\n")
    (tmp_path / "mesh.yaml").write_text("mesh:\n  workload_cert_lifetime: 72h\n")
    result = generate(GenerateOptions(cwd=tmp_path, base_image="localmesh-base:bookworm"))
    pem = (result.compose_file.parent / "certs" / "services" / "a" / "cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(hours=72) <= lifetime <= dt.timedelta(hours=72, minutes=1)


def test_foreground_up_reports_renewals_and_survives_a_broken_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "compose.yaml").write_text("services:\n  a:\n    image: busybox\n")
    result = generate(GenerateOptions(cwd=tmp_path, base_image="localmesh-base:bookworm"))
    certs = result.compose_file.parent / "certs" / "services"
    aged = dt.datetime.now(dt.UTC) - dt.timedelta(hours=17)
    CertificateAuthority.load().issue_workload(result.mesh.mesh.trust_domain, "a", now=aged).write(
        certs / "a" / "cert.pem", certs / "a" / "key.pem"
    )
    compose_cmds._renew(result)
    assert "renewed the certificates of a" in capsys.readouterr().out
    root_key = files.ca_dir() / "root-key.pem"
    root_key.chmod(0o644)  # the CA refuses a key others can read: an error line, no traceback
    try:
        compose_cmds._renew(result)
    finally:
        root_key.chmod(0o600)
    err = capsys.readouterr().err
    assert "root-key.pem" in err
    assert "Traceback" not in err
