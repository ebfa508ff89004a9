"""Container mode's network mechanics in real containers on a real engine.

A mesh container (the real mesh image, NET_ADMIN) runs ``setup_network`` and discovery from
a plan; a client container reaches upstreams by name through ``--add-host`` entries, exactly
as generate's ``extra_hosts`` do. Proves: two upstreams share one port on their own VIPs,
the caller's own IP arrives as the source, an unknown port of a VIP is redirected to the
intercept listener with the dialled address intact, and Docker's DNS gives every replica.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from localmesh.compose import engine, image
from localmesh.compose.plan import (
    Client,
    MeshPlan,
    PlanPort,
    PublishedPorts,
    Upstream,
)
from localmesh.compose.planner import mesh_network
from localmesh.config.model import Protocol
from localmesh.runtime.container import INTERCEPT_PORT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HERE = Path(__file__).parent
SUBNET = "10.99.252.0/22"  # outside generate's 10.213.0.0/16 block: no clash with its tests
VIP = {"db": "10.99.253.10", "cache": "10.99.253.11", "legacy": "10.99.253.12"}


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


@dataclass
class Mesh:
    report: dict[str, object]  # what the probe printed: rules, endpoints, sources
    ips: dict[str, str]  # container name -> its IP on the network
    web: str  # the client container


def _plan(network: str) -> MeshPlan:
    return MeshPlan(
        project="lmtest",
        network=mesh_network(network, IPv4Network(SUBNET)),
        published=PublishedPorts(admin=15000),
        upstreams=(
            Upstream("cache", VIP["cache"], ("cache",), (PlanPort(5432, Protocol.TCP),)),
            Upstream("db", VIP["db"], ("db", "database"), (PlanPort(5432, Protocol.POSTGRES),)),
            Upstream("legacy", VIP["legacy"], ("legacy",), (PlanPort(80, Protocol.HTTP),), True),
        ),
        clients=(Client("web", ("cache", "db", "legacy")),),
    )


@pytest.fixture(scope="module")
def mesh(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    recipe = image.image_recipe(docker_engine)
    image.ensure_mesh_image(engine.connect(), recipe)
    tag = secrets.token_hex(3)
    network = f"lmtest-{tag}"
    names: list[str] = []
    docker("network", "create", "--subnet", SUBNET, "--ip-range", "10.99.254.0/23", network)
    try:
        plan_file = tmp_path_factory.mktemp("plan") / "plan.json"
        plan_file.write_text(_plan(network).to_json())
        # extra_hosts as generate writes them: every name of an upstream -> its VIP
        hosts = [f"--add-host={n}:{u.vip}" for u in _plan(network).upstreams for n in u.names]
        for i, alias in enumerate(["db", "db", "web"]):
            name = f"lmtest-{tag}-{alias}-{i}"
            names.append(name)
            docker(
                "run", "-d", "--name", name, "--network", network, "--network-alias", alias,
                *(hosts if alias == "web" else []), docker_engine, "sleep", "600",
            )  # fmt: skip
        mesh_name = f"lmtest-{tag}-mesh"
        names.append(mesh_name)
        docker(
            "run", "-d", "--name", mesh_name, "--network", network, "--ip", "10.99.252.2",
            "--cap-add", "NET_ADMIN",
            "-v", f"{plan_file}:/etc/localmesh/plan.json:ro",
            "-v", f"{HERE / 'container_probe.py'}:/probe.py:ro",
            "--entrypoint", "python3", recipe.tag, "/probe.py", "/etc/localmesh/plan.json",
        )  # fmt: skip
        logs = _wait_ready(mesh_name)
        report = json.loads(logs.strip().splitlines()[-1])
        ip_of = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ips = {n: docker("inspect", "-f", ip_of, n) for n in names if not n.endswith("-mesh")}
        yield Mesh(report=report, ips=ips, web=names[2])
    finally:
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)


def _wait_ready(name: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
        if "READY" in done.stdout:
            return done.stdout.split("READY")[0]
        running = docker("inspect", "-f", "{{.State.Running}}", name)
        if running != "true" or time.monotonic() > deadline:
            pytest.fail(f"mesh container did not get ready: {done.stdout}{done.stderr}")
        time.sleep(0.2)


CLIENT = (
    "import socket, sys\n"
    "for target in sys.argv[1:]:\n"
    "    host, port = target.rsplit(':', 1)\n"
    "    with socket.create_connection((host, int(port)), 5) as s:\n"
    "        print(s.makefile().readline().strip())\n"
)


def client_calls(mesh: Mesh, *targets: str) -> list[str]:
    return docker("exec", mesh.web, "python3", "-c", CLIENT, *targets).splitlines()


def test_two_upstreams_share_a_port_on_their_own_vips_and_callers_keep_their_ip(
    mesh: Mesh,
) -> None:
    web_ip = mesh.ips[mesh.web]
    assert client_calls(mesh, "db:5432", "cache:5432", "database:5432") == [
        f"db:5432 from {web_ip}",
        f"cache:5432 from {web_ip}",
        f"db:5432 from {web_ip}",
    ]


def test_unknown_port_of_a_vip_reaches_the_intercept_listener_with_the_dialled_address(
    mesh: Mesh,
) -> None:
    web_ip = mesh.ips[mesh.web]
    assert client_calls(mesh, "legacy:80", "legacy:9999", "legacy:15001") == [
        f"legacy:80 from {web_ip}",  # a known port keeps its own listener
        f"intercept {VIP['legacy']}:9999 from {web_ip}",
        f"intercept {VIP['legacy']}:15001 from {web_ip}",
    ]


def test_setup_is_idempotent_one_rule_set_after_two_runs(mesh: Mesh) -> None:
    assert mesh.report["rules"] == [
        f"-A LOCALMESH -d {VIP['legacy']}/32 -p tcp -m tcp --dport 80 -j RETURN",
        f"-A LOCALMESH -d {VIP['legacy']}/32 -p tcp -j REDIRECT --to-ports {INTERCEPT_PORT}",
    ]


def test_docker_dns_gives_every_replica_as_endpoints_and_every_caller_as_source(
    mesh: Mesh,
) -> None:
    db_ips = sorted(ip for name, ip in mesh.ips.items() if "-db-" in name)
    assert len(db_ips) == 2
    endpoints = mesh.report["endpoints"]
    assert isinstance(endpoints, dict)
    assert sorted(endpoints["db"]) == sorted(f"{ip}:5432" for ip in db_ips)
    assert endpoints["cache"] == []  # no cache container runs: an empty cluster, not stale
    sources = mesh.report["sources"]
    assert sources == {mesh.ips[mesh.web]: "web", **{ip: "db" for ip in db_ips}}
