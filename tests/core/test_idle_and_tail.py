"""The client sends requests only when it has something to ask for, and restarts slow start after
an idle period instead of releasing its whole held window at once (RFC 5681 section 4.1)."""

from __future__ import annotations

import random

from trickles import wire
from trickles.connection import ClientConnection
from trickles.engine import ServerEngine

from .helpers import ADDR, T0, engine

OBJ = random.Random(3).randbytes(1_500_000)


class Counter:
    def __init__(self) -> None:
        self.total = 0
        self.empty = 0


def pump(
    eng: ServerEngine, cli: ClientConnection, reqs: list[bytes], now: float, rid: int, seen: Counter
) -> float:
    for _ in range(600):
        for q in reqs:
            for d in eng.step(q, ADDR, now).datagrams:
                seen.total += 1
                chunks = wire.decode_response_untrusted(d).chunks
                if not any(ch.type == wire.C_DATA for ch in chunks):
                    seen.empty += 1
                cli.receive_datagram(d, now + 0.005)
        now += 0.01
        cli.handle_timer(now)
        reqs = cli.datagrams_to_send(now)
        if cli.regions[rid].complete and not reqs:
            break
    return now


def test_no_packets_without_data_at_the_tail_of_a_transfer() -> None:
    """Before: 324 of 1,418 server packets of this loss-free 1.5 MB transfer carried no data."""
    eng = engine({b"obj": OBJ})
    cli = ClientConnection(client_nonce=5)
    cli.connect(b"obj", T0)
    seen = Counter()
    pump(eng, cli, cli.datagrams_to_send(T0), T0, 0, seen)
    assert cli.read(0).endswith(OBJ)
    assert seen.empty <= 0.02 * seen.total, (seen.empty, seen.total)


def test_idle_connection_restarts_in_slow_start() -> None:
    """Before: 237 held continuations released 711 packets at once after 10 s of idleness."""
    eng = engine({b"obj": OBJ, b"two": OBJ[::-1]})
    cli = ClientConnection(client_nonce=6)
    cli.connect(b"obj", T0)
    seen = Counter()
    now = pump(eng, cli, cli.datagrams_to_send(T0), T0, 0, seen)
    assert cli.regions[0].complete
    now += 10.0
    rid = cli.open_region(b"two")
    burst = cli.datagrams_to_send(now)
    assert len(burst) == 1 and wire.decode_request_untrusted(burst[0]).type == wire.ReqType.RTO
    answered = [d for q in burst for d in eng.step(q, ADDR, now).datagrams]
    assert 1 <= len(answered) <= 4
    for d in answered:
        cli.receive_datagram(d, now + 0.005)
    pump(eng, cli, cli.datagrams_to_send(now + 0.01), now + 0.01, rid, seen)
    assert cli.read(rid).endswith(OBJ[::-1])
