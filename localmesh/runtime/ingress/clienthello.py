"""Read a TLS ClientHello from the first bytes of a connection, before any handshake (sans-IO).

Why: OpenSSL decides whether to *ask* for a client certificate from the context a
connection starts with; switching contexts in an SNI callback changes the certificate but not
the verify mode. So the ingress peeks at the ClientHello, picks the host's own context
(certificate and ``client_certs`` policy) from its SNI, and only then starts the handshake.
The same look tells plaintext on the TLS port and TLS 1.0/1.1-only clients apart, so each is
refused with a precise logged reason.

Wire format (RFC 8446 §4.1.2, §5.1): records ``type(1)=22 version(2) length(2)`` carry the
handshake ``msg_type(1)=1 length(3)`` then ``legacy_version(2) random(32) session_id<1>
cipher_suites<2> compression_methods<1> extensions<2>``. A ClientHello may span records.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
#: A ClientHello larger than this is not one we want to buffer (OpenSSL's own cap is similar).
MAX_HELLO = 64 * 1024

TLS1_0, TLS1_1, TLS1_2, TLS1_3 = 0x0301, 0x0302, 0x0303, 0x0304
VERSION_NAMES = {0x0300: "SSL 3.0", TLS1_0: "TLS 1.0", TLS1_1: "TLS 1.1", TLS1_2: "TLS 1.2"}
VERSION_NAMES[TLS1_3] = "TLS 1.3"


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]  # offered protocol versions, GREASE removed

    @property
    def max_version(self) -> int:
        return max(self.versions)


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The hello is not complete yet; read more and parse again from the start."""


@dataclass(frozen=True, slots=True)
class NotTLS:
    """The peer spoke something else; ``http`` when it looks like a plain HTTP request."""

    http: bool


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str


Parsed = ClientHello | NeedMore | NotTLS | Malformed

_HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version, f"0x{version:04x}")


def parse_client_hello(data: bytes) -> Parsed:
    """Classify the first bytes of a connection (call again with more bytes on ``NeedMore``)."""
    if not data:
        return NeedMore()
    if data[0] != RECORD_HANDSHAKE:
        prefix = data[:4]
        looks_http = any(m.startswith(prefix) or prefix.startswith(m) for m in _HTTP_METHODS)
        return NotTLS(http=looks_http and data[:1].isalpha())
    body = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return NeedMore()
        if data[pos] != RECORD_HANDSHAKE:
            return Malformed("ClientHello interrupted by a non-handshake record")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            return Malformed(f"bad TLS record length {length}")
        if len(data) < pos + 5 + length:
            return NeedMore()
        body += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            if body[0] != HANDSHAKE_CLIENT_HELLO:
                return Malformed(f"first handshake message is type {body[0]}, not ClientHello")
            need = 4 + int.from_bytes(body[1:4], "big")
            if need > MAX_HELLO:
                return Malformed(f"ClientHello of {need} bytes is too large")
            if len(body) >= need:
                return _parse_hello(bytes(body[4:need]))


def _is_grease(value: int) -> bool:
    """RFC 8701 reserved values (0x0a0a, 0x1a1a, ...) clients add to keep servers honest."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> bytes:
        return self.take(self.uint(len_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _parse_hello(hello: bytes) -> Parsed:
    try:
        r = _Reader(hello)
        legacy_version = r.uint(2)
        r.take(32)  # random
        r.vector(1)  # session id
        r.vector(2)  # cipher suites
        r.vector(1)  # compression methods
        sni: str | None = None
        alpn: tuple[str, ...] = ()
        versions: tuple[int, ...] = ()
        if r.left:
            exts = _Reader(r.vector(2))
            while exts.left:
                ext_type = exts.uint(2)
                ext = _Reader(exts.vector(2))
                if ext_type == EXT_SERVER_NAME:
                    sni = _server_name(ext)
                elif ext_type == EXT_ALPN:
                    alpn = _alpn(ext)
                elif ext_type == EXT_SUPPORTED_VERSIONS:
                    raw = ext.vector(1)
                    offered = (int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))
                    versions = tuple(v for v in offered if not _is_grease(v))
    except (ValueError, UnicodeDecodeError) as exc:
        return Malformed(f"unparseable ClientHello ({exc})")
    return ClientHello(sni=sni, alpn=alpn, versions=versions or (legacy_version,))


def _server_name(ext: _Reader) -> str | None:
    names = _Reader(ext.vector(2))
    while names.left:
        kind = names.uint(1)
        name = names.vector(2)
        if kind == 0:  # host_name
            return name.decode("ascii").lower().rstrip(".")
    return None


def _alpn(ext: _Reader) -> tuple[str, ...]:
    protos = _Reader(ext.vector(2))
    out = []
    while protos.left:
        out.append(protos.vector(1).decode("ascii", "replace"))
    return tuple(out)
