"""Shared fixtures for core tests: a server engine, a client, and an in-memory exchange."""

from __future__ import annotations

import random

from trickles.connection import ClientConnection
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey
from trickles.memapp import MemoryApp

ADDR = b"\x7f\x00\x00\x01\x13\x88"
MASTER = b"k" * 32
T0 = 1_000_000.0


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


def pump(
    eng: ServerEngine, cli: ClientConnection, reqs: list[bytes], now: float, rounds: int = 10
) -> list[bytes]:
    """Run request/response rounds in memory; return every response datagram."""
    seen: list[bytes] = []
    for _ in range(rounds):
        nxt: list[bytes] = []
        for q in reqs:
            res = eng.step(q, ADDR, now)
            for d in res.datagrams:
                seen.append(d)
                cli.receive_datagram(d, now)
        now += 0.01
        nxt = cli.datagrams_to_send(now)
        if not nxt:
            break
        reqs = nxt
    return seen
