"""Shared fixtures for core tests: a server engine, a client, and an in-memory exchange."""

from __future__ import annotations

import random

from trickles.connection import ClientConnection
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey
from trickles.minisocket import Minisocket
from trickles.sim.memapp import MemoryApp
from trickles.sim.network import Link, Sim, TricklesClientHost, TricklesServerHost, make_server
from trickles.wire import REGION_SHIFT, UcontKind

ADDR = b"\x7f\x00\x00\x01\x13\x88"
MASTER = b"k" * 32
T0 = 1_000_000.0


class UnknownLengthApp(MemoryApp):
    """Declares the whole region valid and ends the object with SKIP (paper section 5.2): the
    input names the object; any fetch that reaches its end gets a SKIP there."""

    def handle(self, msk: Minisocket) -> None:
        for slot, inp in enumerate(msk.inputs):
            start = inp.region << REGION_SHIFT
            end = start + (1 << REGION_SHIFT)
            msk.set_ucont(
                slot, UcontKind.OUTPUT, inp.region, inp.offset + len(inp.data), start, end, inp.data
            )
        for slot, seg, start, length in msk.fetch_slots():
            obj = self.objects[seg.ucont]
            off = start - ((start >> REGION_SHIFT) << REGION_SHIFT)
            data = obj[off : off + length]
            if data:
                msk.send_data(slot, start, data)
            if off + length >= len(obj):
                eof = ((start >> REGION_SHIFT) << REGION_SHIFT) + len(obj)
                msk.send_skip(slot, eof, (1 << REGION_SHIFT) - len(obj))


def engine(
    objects: dict[bytes, bytes] | None = None, ring: KeyRing | None = None, **cfg: object
) -> ServerEngine:
    objs = objects if objects is not None else {b"obj": random.Random(7).randbytes(200_000)}
    return ServerEngine(ring or KeyRing(ServerKey(1, MASTER)), MemoryApp(objs), ServerConfig(**cfg))  # type: ignore[arg-type]


def handshake(
    eng: ServerEngine, now: float = T0, name: bytes = b"obj"
) -> tuple[ClientConnection, list[bytes]]:
    """Connect a client and return it with its first REQUEST datagrams (the SYN-ACK processed)."""
    cli = ClientConnection(client_nonce=1234)
    cli.connect(name, now)
    (syn,) = cli.datagrams_to_send(now)
    res = eng.step(syn, ADDR, now)
    assert res.drop is None and len(res.datagrams) == 1
    cli.receive_datagram(res.datagrams[0], now + 0.01)
    return cli, cli.datagrams_to_send(now + 0.01)


def drive(
    eng: ServerEngine, cli: ClientConnection, reqs: list[bytes], now: float, rid: int = 0, rounds: int = 200
) -> float:
    """Lossless in-memory exchange until region ``rid`` is complete (or nothing is left to send)."""
    for _ in range(rounds):
        for q in reqs:
            for d in eng.step(q, ADDR, now).datagrams:
                cli.receive_datagram(d, now)
        now += 0.01
        reqs = cli.datagrams_to_send(now)
        r = cli.regions[rid]
        if r.complete or r.error is not None or not reqs:
            break
    return now


def sim_flow(
    seed: int, obj: bytes, *, bandwidth: float, delay: float = 0.01, queue: int = 200, loss: float = 0.0
) -> tuple[Sim, ServerEngine, TricklesClientHost]:
    """One client fetching ``obj`` from one engine over a simulated path (run it with ``sim.run``)."""
    sim = Sim(seed)
    eng = make_server({b"obj": obj})
    host = TricklesServerHost(sim, eng)
    up = Link(sim, bandwidth, delay, queue, loss=loss)
    down = Link(sim, bandwidth, delay, queue, loss=loss)
    addr = b"\x0a\x00\x00\x02\x13\x88"
    cli = TricklesClientHost(sim, addr, up, host.receive, b"obj")
    host.attach(addr, down, cli.receive)
    return sim, eng, cli
