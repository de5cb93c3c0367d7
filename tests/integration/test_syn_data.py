"""SYN data over real sockets: the request rides in the first packet and the answer (its output
continuation and first bytes) comes back in the SYN-ACK, which is never larger than the SYN."""

from __future__ import annotations

import hashlib
import secrets
import socket

import trio

from trickles.client.endpoint import Endpoint
from trickles.connection import ClientConnection, State

from .conftest import HOST, ServerProcess, Site


async def test_request_in_the_syn(server: ServerProcess, site: Site) -> None:
    head = f"GET /1m.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect((HOST, server.port))
    conn = ClientConnection(client_nonce=secrets.randbits(64))
    now = trio.current_time()
    conn.connect(head, now)
    (syn,) = conn.datagrams_to_send(now)
    with trio.fail_after(30):
        # The SYN goes out by hand, so the test sees exactly what comes back for it.
        sock.send(syn)
        await trio.lowlevel.wait_readable(sock)
        synack = sock.recv(65536)
        with trio.move_on_after(0.2):  # nothing else answers the SYN (no amplification)
            await trio.lowlevel.wait_readable(sock)
            raise AssertionError(f"a second datagram answered the SYN: {len(sock.recv(65536))} bytes")
        assert len(synack) <= len(syn), (len(synack), len(syn))
        conn.receive_datagram(synack, trio.current_time())
        assert conn.state is State.OPEN
        r0 = conn.regions[0]
        # The SYN-ACK already answered the request: the output continuation is there, and with
        # it the start of the response (the 1200-byte SYN allows that much).
        assert r0.ucont and r0.end is not None and r0.next_off > r0.start
        assert len(synack) > len(syn) // 2  # and it used the room: most of the SYN's size
        ep = Endpoint(sock, conn, (HOST, server.port))
        try:
            await ep.run_until(lambda: r0.complete or r0.error is not None)
            data = conn.read(0)
        finally:
            ep.close()
    assert r0.error is None
    body = data[data.index(b"\r\n\r\n") + 4 :]
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert hashlib.sha256(body).hexdigest() == site.digests["1m.bin"]
