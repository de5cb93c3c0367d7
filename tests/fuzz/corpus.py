"""Genuine traffic to mutate: an in-memory exchange between a client and the real static HTTP app.

The exchange drops a share of the server's packets (seeded), so the corpus holds loss-free
requests, recovery requests, REGENs, timeouts and a CLOSE as well as the SYN, and the responses
hold SYN-ACKs, delta and full continuations, retransmissions and every chunk type.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from trickles import wire
from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.connection import ClientConnection
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey

from ..core.helpers import ADDR, MASTER, T0

FILES = {"small.txt": b"hello\n" * 50, "big.bin": random.Random(3).randbytes(300_000)}
HEADS = [
    b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /small.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=3-40\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b'GET /missing HTTP/1.1\r\nHost: x\r\nIf-None-Match: "a"\r\n\r\n',
    b"GET /big.bin HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 1500 + b"\r\n\r\n",  # head over 2 packets
]


def make_site(root: Path) -> StaticSite:
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    (root / "dir").mkdir(exist_ok=True)
    (root / "dir" / "a.txt").write_bytes(b"a")
    return StaticSite(root)


def make_engine(site: StaticSite, **cfg: object) -> ServerEngine:
    """The engine ``trickles serve`` runs (static HTTP app), with the test key."""
    ring = KeyRing(ServerKey(1, MASTER))
    return ServerEngine(ring, StaticHttpApp(site, ring), ServerConfig(**cfg))  # type: ignore[arg-type]


@dataclass
class Corpus:
    requests: list[tuple[bytes, float]] = field(default_factory=list)  # (datagram, time sent)
    responses: list[bytes] = field(default_factory=list)


def exchange(eng: ServerEngine, head: bytes, seed: int, corpus: Corpus, loss: float = 0.08) -> None:
    """One download over a lossy in-memory path of 20 ms RTT, recording every datagram."""
    rng = random.Random(seed)
    cli = ClientConnection(client_nonce=seed)
    now = T0 + seed
    cli.connect(head, now)
    for _ in range(400):
        reqs = cli.datagrams_to_send(now)
        for q in reqs:
            corpus.requests.append((q, now))
            for d in eng.step(q, ADDR, now).datagrams:
                corpus.responses.append(d)
                if rng.random() >= loss:
                    cli.receive_datagram(d, now + 0.01)
        now += 0.02
        timer = cli.get_timer()
        if not reqs and timer is not None:
            now = max(now, timer)
        cli.handle_timer(now)
        if all(r.complete or r.error is not None for r in cli.regions.values()):
            break
    cli.close(now)
    corpus.requests += [(q, now) for q in cli.datagrams_to_send(now)]


def handmade_responses() -> list[bytes]:
    """Responses with the chunk types the exchange may not produce (SKIP, ERROR, several chunks)."""
    head = wire.RESP_HEAD.pack(wire.VERSION, wire.R_DATA, 0, 0, 5, 7, 4, 0, 1)
    return [
        head + wire.skip_chunk(1 << 40, 1000) + wire.error_chunk(3, 404, b"no such object"),
        head
        + wire.ucont_chunk(wire.UcontKind.OUTPUT, 1, 10, 1 << 40, (1 << 40) + 99, b"tok")
        + wire.data_chunk(0, b"xy"),
    ]


def build(root: Path) -> tuple[StaticSite, Corpus]:
    site = make_site(root)
    corpus = Corpus()
    eng = make_engine(site)
    for seed, head in enumerate(HEADS, start=1):
        exchange(eng, head, seed, corpus)
    corpus.responses += handmade_responses()
    return site, corpus
