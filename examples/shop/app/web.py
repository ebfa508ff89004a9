"""The shop's front end: asks the api (at a hard-coded http://api:8000) and shows the answer."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "http://api:8000"


class Web(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
        if self.path != "/":
            return self.reply(404, {"error": "not found"})
        try:
            with urllib.request.urlopen(f"{API}/items", timeout=10) as resp:
                self.reply(200, {"web": socket.gethostname(), "api": json.load(resp)})
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            self.reply(
                exc.code,
                {
                    "web": socket.gethostname(),
                    "error": f"api said {exc.code}",
                    "detail": body[:300],
                },
            )
        except OSError as exc:
            self.reply(502, {"web": socket.gethostname(), "error": f"api unreachable: {exc}"})

    def reply(self, status: int, body: object) -> None:
        data = (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8000), Web).serve_forever()
