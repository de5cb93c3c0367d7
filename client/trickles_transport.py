"""HTTP/1.1 over Trickles for ``tcurl`` and the gateway: one output region per request.

Each request is an INPUT in its own region of the connection's sparse output space; the response
bytes of that region are parsed with h11. Several requests may be in flight on one connection at
once (:meth:`TricklesHttpConnection.start`), each in its own region, all under one congestion window
(paper section 5.2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import h11
import trio

from trickles.connection import State

from .api import (
    ConnectError,
    PartialTransfer,
    ProtocolError,
    RecvError,
    Response,
    TransferStats,
    format_raw_headers,
)
from .endpoint import Endpoint


def encode_request(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> bytes:
    """The request bytes as they go in the INPUT segments."""
    names = {k.lower() for k, _ in headers}
    hdrs = list(headers)
    if "host" not in names:
        hdrs.insert(0, ("Host", host))
    c = h11.Connection(h11.CLIENT)
    data = c.send(h11.Request(method=method, target=target, headers=hdrs))
    data += c.send(h11.EndOfMessage()) or b""
    return data


class TricklesHttpConnection:
    """An HTTP client connection over one Trickles connection."""

    def __init__(self, ep: Endpoint, host: str) -> None:
        self.ep = ep
        self.host = host
        self._closed = False

    def start(self, method: str, target: str, headers: list[tuple[str, str]]) -> int:
        """Queue a request in its own region (parallel with any others); returns the region id."""
        if self.ep.conn.state is not State.OPEN:
            raise ConnectError("Trickles connection is not open")
        return self.ep.conn.open_region(encode_request(method, target, self.host, headers))

    async def response(self, rid: int, method: str) -> Response:
        """Wait for the head of the response in region ``rid``; the body streams from it.

        The region's bytes go through h11 as they arrive: ``feed`` drives the protocol until the
        region has data (or completes, or the server refuses it); the head is parsed here, and
        ``body`` yields the rest, a region that completes early being a partial transfer.
        """
        conn = self.ep.conn
        region = conn.regions[rid]
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method, target="/", headers=[("Host", self.host)]))
        parser.send(h11.EndOfMessage())

        def next_event() -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
            try:
                return parser.next_event()
            except h11.RemoteProtocolError as e:
                raise ProtocolError(f"Weird server reply: {e}") from e

        async def feed() -> None:
            await self.ep.run_until(lambda: bool(region.ready) or region.complete or region.error is not None)
            if region.error is not None:
                code, msg = region.error
                raise RecvError(f"server refused the transfer ({code}): {msg}")
            data = conn.read(rid)
            if data:
                parser.receive_data(data)
            elif region.complete:
                parser.receive_data(b"")

        while True:
            ev = next_event()
            if isinstance(ev, h11.Response):
                break
            if ev is h11.NEED_DATA:
                await feed()
                continue
            raise ProtocolError("Weird server reply")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers.raw_items()]
        version = ev.http_version.decode()
        reason = ev.reason.decode("latin-1")

        async def body() -> AsyncIterator[bytes]:
            while True:
                e = next_event()
                if isinstance(e, h11.Data):
                    yield bytes(e.data)
                elif isinstance(e, h11.EndOfMessage):
                    return
                elif e is h11.NEED_DATA:
                    if region.complete and not region.ready:
                        raise PartialTransfer("transfer closed with outstanding read data remaining")
                    await feed()
                else:
                    raise ProtocolError("Weird server reply")

        return Response(
            version,
            ev.status_code,
            reason,
            headers,
            body(),
            format_raw_headers(version, ev.status_code, reason, headers),
        )

    async def request(self, method: str, target: str, headers: list[tuple[str, str]]) -> Response:
        rid = self.start(method, target, headers)
        return await self.response(rid, method)

    def stats(self) -> TransferStats:
        s = self.ep.conn.stats
        return TransferStats(
            transport="trickles",
            rtt_s=s.rtt_s,
            cwnd=self.ep.conn.cwnd_estimate or None,
            retransmissions=s.retransmits_received + s.timeouts,
            continuations=s.continuations,
            bytes_received=s.bytes_received,
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.ep.close()
            await trio.lowlevel.checkpoint()


class TricklesTransport:
    """``tcurl``'s default transport: Trickles over UDP to the URL's port."""

    name = "trickles"

    def __init__(self, probe_timeout: float = 1.5) -> None:
        self.probe_timeout = probe_timeout

    async def connect(self, host: str, port: int, *, timeout: float) -> TricklesHttpConnection:
        ep = await Endpoint.open(host, port, probe_timeout=min(self.probe_timeout, timeout))
        return TricklesHttpConnection(ep, host if port == 80 else f"{host}:{port}")
