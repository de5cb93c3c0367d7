"""The UDP loop survives anything one datagram does: an exception anywhere in its handling (the
engine, the encapsulation, the address) is a counted ``internal`` drop, and the next datagram is
served."""

from __future__ import annotations

import functools
import socket

import trio

from tests.core.helpers import engine
from trickles import wire
from trickles.engine import StepResult
from trickles.errors import DropReason
from trickles.server.udp import UdpStats, open_udp_socket, serve_udp


async def test_an_exception_outside_the_engine_does_not_stop_the_loop() -> None:
    eng = engine()
    real_step = eng.step
    bomb = b"\x01boom"

    def step(data: bytes, addr: bytes, now: float) -> StepResult:
        if data == bomb:
            raise RuntimeError("a bug outside the engine's own catch-all")
        return real_step(data, addr, now)

    eng.step = step  # type: ignore[method-assign]
    sock = open_udp_socket("127.0.0.1", 0)
    stats = UdpStats()
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(functools.partial(serve_udp, eng, sock, stats=stats))
        client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await client.sendto(bomb, addr)
        syn = wire.encode_syn(0, 5, [wire.InputSeg(0, 0, True, b"", b"obj")], pad_to=1200)
        await client.sendto(syn, addr)
        with trio.fail_after(10):
            answer, _ = await client.recvfrom(2048)
        assert wire.decode_response_untrusted(answer).type == wire.R_SYNACK
        assert eng.stats.dropped[DropReason.INTERNAL] == 1
        nursery.cancel_scope.cancel()
    sock.close()
