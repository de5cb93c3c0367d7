"""SYN data over real sockets: the request rides in the first packet and the answer (its output
continuation and first bytes) comes back in the SYN-ACK, which is never larger than the SYN."""

from __future__ import annotations

import hashlib

import trio

from trickles.client.endpoint import Endpoint

from .conftest import HOST, ServerProcess, Site


async def test_request_in_the_syn(server: ServerProcess, site: Site) -> None:
    head = f"GET /1m.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    with trio.fail_after(30):
        ep = await Endpoint.open(HOST, server.port, first_request=head)
        try:
            conn = ep.conn
            r0 = conn.regions[0]
            # The SYN-ACK already answered the request: the output continuation is there, and with
            # it the start of the response (the 1200-byte SYN allows that much).
            assert r0.ucont and r0.end is not None and r0.next_off > r0.start
            await ep.run_until(lambda: r0.complete or r0.error is not None)
            data = conn.read(0)
        finally:
            ep.close()
    assert r0.error is None
    body = data[data.index(b"\r\n\r\n") + 4 :]
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert hashlib.sha256(body).hexdigest() == site.digests["1m.bin"]
