"""Just enough of the PostgreSQL and Redis wire protocols for the example, stdlib only.

Real projects use psycopg and redis-py; these speak the same bytes, so the mesh sees (and
proxies) ordinary Postgres and Redis connections. One connection per call keeps the example
simple and makes every call visible in the mesh's connection metrics.
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import urlsplit

TIMEOUT = 5.0


class WireError(Exception):
    """The server refused or the connection failed."""


def pg_query(url: str, sql: str) -> list[tuple[str | None, ...]]:
    """Run one simple query (trust auth) and return its rows as text."""
    u = urlsplit(url)
    user, database = u.username or "postgres", u.path.lstrip("/") or "postgres"
    params = (
        b"".join(
            k + b"\0" + v.encode() + b"\0" for k, v in ((b"user", user), (b"database", database))
        )
        + b"\0"
    )
    with socket.create_connection((u.hostname or "localhost", u.port or 5432), TIMEOUT) as s:
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        rows: list[tuple[str | None, ...]] = []
        queried = False
        buf = s.makefile("rb")
        while True:
            head = buf.read(5)
            if len(head) < 5:
                raise WireError("postgres closed the connection")
            kind, length = head[:1], struct.unpack("!i", head[1:])[0]
            body = buf.read(length - 4)
            if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise WireError("postgres asked for a password; the example uses trust auth")
            if kind == b"E":
                fields = dict((f[:1], f[1:].decode()) for f in body.split(b"\0") if f)
                raise WireError(fields.get(b"M", "postgres error"))
            if kind == b"D":
                rows.append(_data_row(body))
            if kind == b"Z":
                if queried:
                    s.sendall(b"X\0\0\0\4")
                    return rows
                q = sql.encode() + b"\0"
                s.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)
                queried = True


def _data_row(body: bytes) -> tuple[str | None, ...]:
    count, pos, out = struct.unpack("!h", body[:2])[0], 2, []
    for _ in range(count):
        size = struct.unpack("!i", body[pos : pos + 4])[0]
        pos += 4
        out.append(None if size < 0 else body[pos : pos + size].decode())
        pos += max(size, 0)
    return tuple(out)


def redis_command(url: str, *args: str) -> str | int:
    """Send one command; return a simple string or integer reply."""
    u = urlsplit(url)
    frame = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((u.hostname or "localhost", u.port or 6379), TIMEOUT) as s:
        s.sendall(frame.encode())
        line = s.makefile("rb").readline().decode().rstrip("\r\n")
    if not line:
        raise WireError("redis closed the connection")
    if line[0] == "-":
        raise WireError(line[1:])
    return int(line[1:]) if line[0] == ":" else line[1:]
