"""``trickles.client.connect``: a Trickles connection as a ``trio.abc.HalfCloseableStream``.

The paper's sockets-compatible client (section 4): existing trio code that talks to a server over
a byte stream runs over Trickles unchanged. Bytes the caller sends are the *input* of the current
request region; when the server app answers with an output continuation it says how many input bytes
that request consumed, and the rest (a pipelined next request) moves to a new region. The bytes the
caller receives are the regions' outputs, in order.
"""

from __future__ import annotations

import functools

import trio

from trickles.congestion import ProtocolConfig
from trickles.regions import Region

from .api import RecvError
from .endpoint import Endpoint


class TricklesStream(trio.abc.HalfCloseableStream):
    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self._write_rid: int | None = None
        self._read_order: list[int] = []
        self._read_idx = 0
        self._eof_sent = False
        self._closed = False

    # -- sending --------------------------------------------------------------------------------------

    def _writable_region(self) -> Region:
        conn = self.ep.conn
        rid = self._write_rid
        if rid is not None:
            r = conn.regions[rid]
            if not r.input_done:
                return r
        rid = conn.open_region(b"", fin=False)
        self._write_rid = rid
        self._read_order.append(rid)
        return conn.regions[rid]

    def _split_leftover(self) -> None:
        """Input the server did not consume for a finished request belongs to the next one."""
        conn = self.ep.conn
        rid = self._write_rid
        if rid is None:
            return
        r = conn.regions[rid]
        if r.input_done and r.error is None and r.consumed < len(r.input):
            leftover = bytes(r.input[r.consumed :])
            del r.input[r.consumed :]
            self._write_rid = None
            self._writable_region().input += leftover

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof was called")
        self._split_leftover()
        self._writable_region().input += bytes(data)
        self.ep._flush()
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        self._eof_sent = True
        await trio.lowlevel.checkpoint()

    # -- receiving ------------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        conn = self.ep.conn
        while True:
            self._split_leftover()
            if self._read_idx < len(self._read_order):
                rid = self._read_order[self._read_idx]
                r = conn.regions[rid]
                if r.error is not None:
                    raise RecvError(f"server refused the transfer ({r.error[0]}): {r.error[1]}")
                if r.ready:
                    return conn.read(rid, max_bytes if max_bytes is not None else 65536)
                if r.complete:
                    self._read_idx += 1
                    continue
                await self.ep.run_until(functools.partial(self._readable, r))
                continue
            if self._eof_sent or self._write_rid is None:
                return b""
            await self.ep.run_until(lambda: self._read_idx < len(self._read_order))

    def _readable(self, r: Region) -> bool:
        return bool(r.ready) or r.complete or r.error is not None or self._new_leftover()

    def _new_leftover(self) -> bool:
        rid = self._write_rid
        if rid is None:
            return False
        r = self.ep.conn.regions[rid]
        return r.input_done and r.consumed < len(r.input)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.ep.close()
        await trio.lowlevel.checkpoint()


async def connect(
    host: str, port: int, *, probe_timeout: float = 1.5, config: ProtocolConfig | None = None
) -> TricklesStream:
    """Open a Trickles connection to ``host:port`` and return it as a trio stream.

    Raises :class:`~trickles.client.api.NotTrickles` if the server does not answer Trickles.
    """
    ep = await Endpoint.open(host, port, probe_timeout=probe_timeout, config=config)
    return TricklesStream(ep)
