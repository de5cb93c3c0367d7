"""The UDP loop survives anything one datagram does: an exception anywhere in its handling (the
engine, the encapsulation, the address) is a counted ``internal`` drop, and the next datagram is
served."""

from __future__ import annotations

import functools
import socket
from typing import cast

import trio

from tests.core.helpers import engine
from trickles import wire
from trickles.engine import ServerEngine, StepResult
from trickles.errors import DropReason
from trickles.server.udp import UdpStats, open_udp_socket, serve_udp


class BuggyStep:
    """The engine with a step that raises on one datagram (a native, compiled engine's methods
    cannot be replaced, so wrap it)."""

    def __init__(self, eng: ServerEngine, bomb: bytes) -> None:
        self.eng, self.bomb, self.stats = eng, bomb, eng.stats

    def step(self, data: bytes, addr: bytes, now: float) -> StepResult:
        if data == self.bomb:
            raise RuntimeError("a bug outside the engine's own catch-all")
        return self.eng.step(data, addr, now)

    def internal_drop(self, exc: BaseException) -> StepResult:
        return self.eng.internal_drop(exc)

    @property
    def last_internal_error(self) -> BaseException | None:
        return self.eng.last_internal_error


async def test_an_exception_outside_the_engine_does_not_stop_the_loop() -> None:
    bomb = b"\x01boom"
    eng = cast(ServerEngine, BuggyStep(engine(), bomb))
    sock = open_udp_socket("127.0.0.1", 0)
    stats = UdpStats()
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(functools.partial(serve_udp, eng, sock, stats=stats))
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            await client.sendto(bomb, addr)
            syn = wire.encode_syn(0, 5, [wire.InputSeg(0, 0, True, b"", b"obj")], pad_to=1200)
            await client.sendto(syn, addr)
            with trio.fail_after(10):
                answer, _ = await client.recvfrom(2048)
        assert wire.decode_response_untrusted(answer).type == wire.R_SYNACK
        assert eng.stats.dropped[DropReason.INTERNAL] == 1
        nursery.cancel_scope.cancel()
    sock.close()
