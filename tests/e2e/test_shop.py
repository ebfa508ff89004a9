"""The bundled example shop, meshed on a real Docker engine: the user's whole job, end to end.

web → api → Postgres (db) and Redis (cache), names hard-coded in the apps, nothing of the
example changed. The steps run in order on one project (a module fixture brings it up):

1. ``localmesh up -d`` gets everything healthy
2. the ingress answers HTTPS with a certificate from the mesh CA
3. metrics show every hop (web→api, api→db, api→cache) with source identities
4. isolation kept: web cannot reach db (it could not before either)
5. a mesh.yaml edit (a 503 abort on api for calls from web) takes effect live, and its undo
6. api scaled to 3: requests are spread over the three; scaled back to 1: all go to it
7. db stopped: clean 503s, then recovery once it is back
8. ``localmesh down -v`` leaves no container, network or volume behind

The example's copy runs under a unique project name with free host ports, so it never
collides with a `make demo` running on the same machine.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.docker import REPO
from tests.support.services import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

T = TypeVar("T")
HOST = "shop.localhost"


@dataclass
class Shop:
    root: Path
    name: str
    env: dict[str, str]
    https: int
    admin: int
    up_output: str

    @property
    def compose(self) -> list[str]:
        from localmesh.compose.project import compose_command

        return [*compose_command(), "-f", str(self.root / ".localmesh" / "compose.yaml")]

    def localmesh(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "localmesh.cli.main", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def compose_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, check=False, timeout=120
        )

    def ca_root(self) -> Path:
        return Path(self.env["LOCALMESH_HOME"]) / "ca" / "root.pem"

    def get(self, path: str = "/") -> tuple[int, dict[str, Any]]:
        """GET through the ingress over HTTPS, verifying the mesh CA and the host name."""
        context = ssl.create_default_context(cafile=str(self.ca_root()))
        conn = _IngressConnection(HOST, self.https, context=context, timeout=20)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            data = json.loads(body)
        except ValueError:
            data = {"raw": body.decode(errors="replace")}
        return resp.status, data

    def admin_get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def edit_mesh(self, change: Callable[[str], str]) -> None:
        """Save mesh.yaml the way editors do: a new file renamed over the old one."""
        path = self.root / "mesh.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(change(path.read_text()))
        os.replace(tmp, path)


class _IngressConnection(http.client.HTTPSConnection):
    """Dial 127.0.0.1 but speak TLS (SNI, verification) and HTTP as ``shop.localhost``."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def eventually(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns a value (not None) or fail with the last attempt."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = check()
            if got is not None:
                return got
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout}s (last: {last!r})")
        time.sleep(0.3)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def project_objects(name: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={name}"
    found: dict[str, list[str]] = {}
    for kind, cmd in (
        ("containers", ["docker", "ps", "-aq", "--filter", label]),
        ("networks", ["docker", "network", "ls", "-q", "--filter", label]),
        ("volumes", ["docker", "volume", "ls", "-q", "--filter", label]),
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        found[kind] = out.split()
    return found


@pytest.fixture(scope="module")
def shop(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    base = tmp_path_factory.mktemp("e2e")
    root = base / "shop"
    shutil.copytree(REPO / "examples" / "shop", root, ignore=shutil.ignore_patterns(".localmesh"))
    name = f"shop-e2e-{secrets.token_hex(3)}"
    https, http_port, admin = free_port(), free_port(), free_port()
    mesh = (root / "mesh.yaml").read_text()
    mesh = mesh.replace("  name: shop\n", f"  name: {name}\n  admin_port: {admin}\n")
    mesh = mesh.replace(
        "ingress:\n", f"ingress:\n  https_port: {https}\n  http_port: {http_port}\n"
    )
    (root / "mesh.yaml").write_text(mesh)
    env = {
        **os.environ,
        "LOCALMESH_HOME": str(base / "home"),
        "LOCALMESH_BASE_IMAGE": docker_engine,
        "COLUMNS": "200",
    }
    shop = Shop(root=root, name=name, env=env, https=https, admin=admin, up_output="")
    up = shop.localmesh("up", "-d", "-p", name, "--timeout", "150")
    shop.up_output = up.stdout + up.stderr
    try:
        assert up.returncode == 0, f"localmesh up failed:\n{shop.up_output}"
        yield shop
    finally:
        shop.localmesh("down", "-v")
        built = subprocess.run(
            ["docker", "images", "-q", "--filter", f"reference={name}-*"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if built:  # the example's app images, built under this run's project name
            subprocess.run(["docker", "rmi", "-f", *built], capture_output=True, check=False)


def test_1_up_gets_every_service_ready_and_says_where_the_ingress_is(shop: Shop) -> None:
    assert f"https://{HOST}:{shop.https}/" in shop.up_output
    ps = shop.compose_run("ps", "--format", "json")
    rows = [json.loads(line) for line in ps.stdout.splitlines() if line.strip()]
    status = {r["Service"]: (r["State"], r["Health"]) for r in rows}
    assert status == {
        "localmesh": ("running", "healthy"),
        "web": ("running", "healthy"),
        "api": ("running", "healthy"),
        "db": ("running", "healthy"),
        "cache": ("running", "healthy"),
    }


def test_1b_the_mesh_container_runs_the_compiled_hot_path(shop: Shop) -> None:
    probe = "import localmesh.runtime.dataplane.http as m; print(m.__file__)"
    done = shop.compose_run("exec", "-T", "localmesh", "python3", "-c", probe)
    assert done.returncode == 0, done.stderr
    where = done.stdout.strip()
    if os.environ.get("LOCALMESH_PURE"):
        assert where.endswith("http.py")
    else:  # the base image has the host's Python and glibc: the extension ships and loads
        assert where.endswith(".so"), where


def test_2_the_ingress_serves_https_signed_by_the_mesh_ca(shop: Shop) -> None:
    status, body = eventually(lambda: _ok(shop.get("/")), "a 200 through the ingress")
    assert status == 200
    assert [item["name"] for item in body["api"]["items"]] == ["kettle", "teapot", "mug"]
    assert isinstance(body["api"]["hits"], int)
    context = ssl.create_default_context()  # the system roots do not know the mesh CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _IngressConnection(HOST, shop.https, context=context, timeout=5).connect()


def _ok(answer: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    return answer if answer[0] == 200 else None


def _status(answer: tuple[int, dict[str, Any]], status: int) -> dict[str, Any] | None:
    return answer[1] if answer[0] == status else None


def test_3_every_hop_went_through_the_mesh_with_source_identities(shop: Shop) -> None:
    for _ in range(3):
        assert shop.get("/")[0] == 200
    text = shop.admin_get("/metrics")
    web_to_api = metric(
        text,
        "istio_requests_total",
        reporter="source",
        source_workload="web",
        destination_workload="api",
        response_code="200",
    )
    assert web_to_api >= 3, "web → api calls are not in the mesh's metrics"
    principals = set(re.findall(r'source_principal="([^"]*)"', text))
    assert any(p.endswith("/svc/web") and p.startswith("spiffe://") for p in principals)
    for upstream in ("db", "cache"):
        opened = metric(
            text,
            "istio_tcp_connections_opened_total",
            reporter="source",
            source_workload="api",
            destination_workload=upstream,
        )
        assert opened >= 3, f"api → {upstream} connections are not in the mesh's metrics"
    records = json.loads(shop.admin_get("/logs?limit=200"))["records"]
    assert records, "the access log is empty"
    flat = json.dumps(records)
    for source, destination in (("web", "api"), ("api", "db"), ("api", "cache")):
        assert any(source in json.dumps(r) and destination in json.dumps(r) for r in records), (
            f"no access-log record for {source} → {destination}: {flat[:500]}"
        )


PG_PROBE = (
    "from wire import pg_query; "
    "print(pg_query('postgres://app@db:5432/shop', 'SELECT count(*) FROM items'))"
)


def test_4_isolation_is_kept_web_cannot_reach_the_database(shop: Shop) -> None:
    from_api = shop.compose_run("exec", "-T", "api", "python3", "-c", PG_PROBE)
    assert from_api.returncode == 0, from_api.stderr  # the probe itself works...
    assert "('3',)" in from_api.stdout
    started = time.monotonic()
    from_web = shop.compose_run("exec", "-T", "web", "python3", "-c", PG_PROBE)
    assert from_web.returncode != 0, f"web reached the database: {from_web.stdout}"  # ...not here
    assert "('3',)" not in from_web.stdout
    assert "timed out" not in from_web.stderr, "not refused, just no answer"
    assert time.monotonic() - started < 4.5  # the probe's own timeout is 5 s
    records = json.loads(shop.admin_get("/logs?limit=500"))["records"]
    denied = [r for r in records if r.get("source") == "web" and r.get("destination") == "db"]
    assert denied, "the mesh did not see web's attempt"
    assert all(r.get("flags") == "UAEX" for r in denied), denied  # denied by policy
    assert not any(r.get("upstream") for r in denied), "web's connection reached db"


FAULT = (
    "    routes:\n"
    "      - name: chaos-for-web\n"
    "        fault: {abort: {status: 503}, sources: [web]}\n"
    "        route: [{service: api}]\n"
)


def test_5_a_mesh_yaml_change_takes_effect_live(shop: Shop) -> None:
    anchor = "  api:\n    ports: [{port: 8000, protocol: http}]\n"
    shop.edit_mesh(lambda text: text.replace(anchor, anchor + FAULT))
    body = eventually(lambda: _status(shop.get("/"), 503), "the injected 503")
    assert body["error"] == "api said 503"  # the mesh answered web, web passed it on
    shop.edit_mesh(lambda text: text.replace(FAULT, ""))
    eventually(lambda: _ok(shop.get("/")), "200 again once the fault is removed")


def test_6_scaling_api_to_three_spreads_the_requests_and_back_to_one(shop: Shop) -> None:
    scaled = shop.localmesh("up", "-d", "-p", shop.name, "--timeout", "120", "--scale", "api=3")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr

    def three_seen() -> collections.Counter[str] | None:
        seen = collections.Counter(shop.get("/")[1]["api"]["served_by"] for _ in range(30))
        return seen if len(seen) == 3 else None

    seen = eventually(three_seen, "requests answered by three api replicas", timeout=45)
    assert min(seen.values()) >= 5, f"unbalanced: {dict(seen)}"

    # Scaling down is discovered too: the removed replicas leave rotation until every
    # request succeeds on the one left.
    shrunk = shop.localmesh("up", "-d", "-p", shop.name, "--timeout", "120", "--scale", "api=1")
    assert shrunk.returncode == 0, shrunk.stdout + shrunk.stderr

    def one_seen() -> collections.Counter[str] | None:
        answers = [shop.get("/") for _ in range(10)]
        if any(code != 200 for code, _ in answers):
            return None
        served = collections.Counter(body["api"]["served_by"] for _, body in answers)
        return served if len(served) == 1 else None

    eventually(one_seen, "requests answered by the one api replica left", timeout=45)


def test_7_a_stopped_database_gives_clean_503s_then_recovers(shop: Shop) -> None:
    stopped = shop.compose_run("stop", "db")
    assert stopped.returncode == 0, stopped.stderr

    body = eventually(lambda: _status(shop.get("/"), 503), "503 while the database is down")
    assert "database unavailable" in body["detail"]
    started = shop.compose_run("start", "db")
    assert started.returncode == 0, started.stderr
    eventually(lambda: _ok(shop.get("/")), "recovery once the database is back", timeout=60)


def test_8_down_leaves_nothing_behind(shop: Shop) -> None:
    down = shop.localmesh("down", "-v")
    assert down.returncode == 0, down.stdout + down.stderr
    assert project_objects(shop.name) == {"containers": [], "networks": [], "volumes": []}
