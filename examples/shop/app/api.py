"""The shop's api: items from Postgres, a visit counter in Redis. Addresses come from api.ini."""

from __future__ import annotations

import configparser
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from wire import WireError, pg_query, redis_command

CONFIG = configparser.ConfigParser()
CONFIG.read(Path(__file__).with_name("api.ini"))
DATABASE_URL = CONFIG["database"]["url"]
CACHE_URL = CONFIG["cache"]["url"]


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
        if self.path != "/items":
            return self.reply(404, {"error": "not found"})
        try:
            rows = pg_query(DATABASE_URL, "SELECT name, price FROM items ORDER BY id")
        except (OSError, WireError) as exc:
            return self.reply(503, {"error": f"database unavailable: {exc}"})
        try:
            hits = redis_command(CACHE_URL, "INCR", "hits")
        except (OSError, WireError) as exc:
            return self.reply(503, {"error": f"cache unavailable: {exc}"})
        items = [{"name": name, "price": price} for name, price in rows]
        self.reply(200, {"items": items, "hits": hits, "served_by": socket.gethostname()})

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8000), Api).serve_forever()
