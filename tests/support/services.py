"""Real throwaway services for tests: PostgreSQL 15, Redis, and small HTTP backends.

Each starts on a free loopback port in a temp dir and is torn down after use; nothing
shared, nothing mocked. Servers run in their own processes (Postgres, Redis) or their own
thread and event loop (HTTP backends), so any test's loop can use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import WSMsgType, web

PG_BIN = Path(os.environ.get("LOCALMESH_PG_BIN", "/usr/lib/postgresql/15/bin"))


# Below the kernel's ephemeral range (ip_local_port_range starts at 32768 by default): the
# kernel's own choice (bind to port 0) lands where every outgoing connection takes its local
# port, so a port chosen that way could be taken by a connect before the test binds it.
_PORTS: Final = range(20000, 32768)
_handed_out: set[int] = set()
_pick = random.Random()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, outside the ephemeral range and never handed out twice in
    this process (two calls in a row cannot return the same one)."""
    while True:
        port = _pick.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def _demote_to(user: str) -> tuple[Callable[[], None] | None, int, int]:
    """Postgres refuses to run as root: when we are root, run it as ``user``."""
    if os.geteuid() != 0:
        return None, os.getuid(), os.getgid()
    pw = pwd.getpwnam(user)

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return demote, pw.pw_uid, pw.pw_gid


@dataclass
class Postgres:
    host: str
    port: int
    user: str = "postgres"
    database: str = "postgres"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


@contextlib.contextmanager
def run_postgres() -> Iterator[Postgres]:
    """initdb into a temp dir (trust auth), start on a free port, stop fast on exit."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(
            f"PostgreSQL binaries not found in {PG_BIN}; apt-get install postgresql-15"
        )
    demote, uid, gid = _demote_to("postgres" if _user_exists("postgres") else "nobody")
    tmp = Path(tempfile.mkdtemp(prefix="localmesh-pg-"))
    os.chown(tmp, uid, gid)
    data = tmp / "data"
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        preexec_fn=demote,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={tmp}",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "log", "wb"),  # noqa: SIM115
        preexec_fn=demote,  # noqa: PLW1509
    )
    try:
        _wait_pg_ready(port, proc, tmp)
        yield Postgres("127.0.0.1", port, proc=proc)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_pg_ready(port: int, proc: subprocess.Popen[bytes], tmp: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited: {(tmp / 'log').read_text()[-2000:]}")
        ok = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], check=False
        )
        if ok.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("postgres did not become ready in 30 s")


@dataclass
class Redis:
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


@contextlib.contextmanager
def run_redis() -> Iterator[Redis]:
    """redis-server on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found; apt-get install redis-server")
    tmp = Path(tempfile.mkdtemp(prefix="localmesh-redis-"))
    for _attempt in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", port, timeout=5)
        except TimeoutError:
            proc.kill()
            proc.wait()
            continue
        try:
            yield Redis("127.0.0.1", port, proc=proc)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(tmp, ignore_errors=True)
        return
    raise RuntimeError("redis-server did not start after 5 attempts")


# --- HTTP backends -------------------------------------------------------------------------


@dataclass
class HttpBackend:
    """A real aiohttp server in its own thread. ``hits`` counts requests per path."""

    host: str
    port: int
    name: str
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _echo_app(backend: HttpBackend) -> web.Application:
    """Endpoints every proxy test needs; each response names the backend that served it.

    ``/echo`` (any method): JSON of method, path, query, headers, body length.
    ``/status/{code}``, ``/delay/{ms}``, ``/bytes/{n}`` (fixed body),
    ``/stream/{n}`` (chunked, n chunks), ``/ws`` (WebSocket echo), anything else: 200 "ok".
    """

    async def count(request: web.Request) -> None:
        backend.hits[request.path] = backend.hits.get(request.path, 0) + 1

    async def echo(request: web.Request) -> web.StreamResponse:
        await count(request)
        body = await request.read()
        return web.json_response(
            {
                "backend": backend.name,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "header_list": [[k.lower(), v] for k, v in request.headers.items()],
                "body_length": len(body),
            },
            headers={"x-backend": backend.name},
        )

    async def status(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(
            status=int(request.match_info["code"]),
            text=backend.name,
            headers={"x-backend": backend.name},
        )

    async def delay(request: web.Request) -> web.Response:
        await count(request)
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(text=backend.name, headers={"x-backend": backend.name})

    async def fixed(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(
            body=b"x" * int(request.match_info["n"]), headers={"x-backend": backend.name}
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        await count(request)
        resp = web.StreamResponse(headers={"x-backend": backend.name})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(int(request.match_info["n"])):
            await resp.write(f"chunk-{i}\n".encode())
        await resp.write_eof()
        return resp

    async def stall(request: web.Request) -> web.StreamResponse:
        """Headers and a first chunk, then nothing for ``ms``: a response that stalls."""
        await count(request)
        resp = web.StreamResponse(headers={"x-backend": backend.name})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"first\n")
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        await count(request)
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{backend.name}:{msg.data}")
        return sock

    async def anything(request: web.Request) -> web.Response:
        await count(request)
        await request.read()
        return web.Response(text="ok", headers={"x-backend": backend.name})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/delay/{ms}", delay)
    app.router.add_get("/bytes/{n}", fixed)
    app.router.add_get("/stream/{n}", stream)
    app.router.add_get("/stall/{ms}", stall)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


@contextlib.contextmanager
def run_http_backend(
    name: str = "backend", app_factory: Callable[[HttpBackend], web.Application] | None = None
) -> Iterator[HttpBackend]:
    """Serve ``app_factory(backend)`` (default: the echo app) on a free loopback port."""
    backend = HttpBackend("127.0.0.1", 0, name)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        runner = web.AppRunner((app_factory or _echo_app)(backend), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.Server)  # a stdlib loop (aiohttp types AbstractServer)
        backend.port = server.sockets[0].getsockname()[1]
        runner_box.append(runner)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner_box[0].cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name=f"http-backend-{name}", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("HTTP backend did not start")
    try:
        yield backend
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
