"""The ingress TLS stream with a real OpenSSL peer over a real socket, where a test must
control how records arrive (the gateway tests cover the rest through real clients)."""

from __future__ import annotations

import asyncio
import socket
import ssl

from localmesh.ca.authority import CertificateAuthority
from localmesh.ca.rotation import load_into
from localmesh.config.model import ClientCerts
from localmesh.runtime.ingress.tls import server_context
from localmesh.runtime.ingress.tlsstream import TLSStream


class _Collect(asyncio.Protocol):
    def __init__(self, wanted: int) -> None:
        self.received = bytearray()
        self.wanted = wanted
        self.done = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.wanted:
            self.done.set()


async def test_a_record_split_across_reads_is_delivered_whole(
    local_ca: CertificateAuthority,
) -> None:
    """A record whose second part is shorter than its plaintext: the first read then fills
    its buffer and the rest is decrypted but still inside OpenSSL, which must be read too
    (not left until the peer sends more)."""
    loop = asyncio.get_running_loop()
    server_ctx = server_context(ClientCerts.OFF, local_ca.root_pem)
    load_into(server_ctx, local_ca.issue_server(["localhost"]))
    payload = bytes(range(256)) * 40  # 10 KiB: one record
    app = _Collect(len(payload))
    handshake: asyncio.Future[None] = loop.create_future()
    ours, theirs = socket.socketpair()
    await loop.connect_accepted_socket(
        lambda: TLSStream(server_ctx, lambda: app, handshake, 5.0), ours
    )
    reader, writer = await asyncio.open_connection(sock=theirs)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_ctx = ssl.create_default_context(cadata=local_ca.root_pem.decode())
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                incoming.write(await asyncio.wait_for(reader.read(65536), 5))
        writer.write(outgoing.read())
        await asyncio.wait_for(handshake, 5)

        client.write(payload)
        record = outgoing.read()
        writer.write(record[:-1200])
        await writer.drain()
        await asyncio.sleep(0.05)  # two reads on the server side
        writer.write(record[-1200:])
        await asyncio.wait_for(app.done.wait(), 5)
        assert bytes(app.received) == payload
    finally:
        writer.close()
