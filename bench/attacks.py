"""Attacker gain: what a misbehaving client gets from the stateless server, against an honest one.

Paper section 2.2: the client holds the server's state, so it can send back any continuation it
received, as often and in any request type, with any proof it can compute. Each strategy below is
an honest :class:`ClientConnection` downloading a large object over a lossless in-memory path of
``rtt`` seconds, plus the extra datagrams the attacker derives from everything it has seen: every
continuation from every response (held and reused later), and the nonces of its own SACK record.
The *gain* is the data-carrying datagrams the server sent to the attacker divided by those it sent
to an honest client in the same simulated time. A TCP-friendly server keeps it near 1 (the goal is
<= 1.5x, never geometric growth).

Usage: ``python -m bench.attacks [--rounds N] [--out FILE]``; prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trickles import wire
from trickles.connection import ClientConnection
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey
from trickles.sim.memapp import MemoryApp

ADDR = b"\x7f\x00\x00\x01\x13\x88"
T0 = 1_000_000.0
_CONT_AT = wire.RESP_HEAD.size
_SEALED = 47


@dataclass
class Run:
    """One download; ``extra`` builds the attacker's datagrams for a round."""

    rtt: float = 0.05
    data_packets: int = 0
    held: list[tuple[bytes, float]] = field(default_factory=list)
    sent_extra: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


Strategy = Callable[[Run, ClientConnection, list[bytes], float], list[bytes]]


def _requests(reqs: list[bytes]) -> list[wire.Request]:
    return [wire.decode_request_untrusted(q) for q in reqs]


def honest(run: Run, cli: ClientConnection, reqs: list[bytes], now: float) -> list[bytes]:
    return []


def replay(run: Run, cli: ClientConnection, reqs: list[bytes], now: float) -> list[bytes]:
    """Send every request twice more."""
    return reqs + reqs


def timeouts(run: Run, cli: ClientConnection, reqs: list[bytes], now: float) -> list[bytes]:
    """RTO requests need no proof: send every attempt the age allows on every continuation ever
    seen (including those from earlier timeout answers), every round."""
    out: list[bytes] = []
    for cont, seen in run.held:
        for a in range(wire.MAX_ATTEMPT + 1):
            if now - seen < 0.2 * (1 << a) - run.rtt:
                break
            out.append(wire.encode_request(wire.ReqType.RTO, 0, cont, [], [_fetch()], a))
    return out


def timeouts_every_attempt(run: Run, cli: ClientConnection, reqs: list[bytes], now: float) -> list[bytes]:
    """All 16 attempts on every held continuation every round, whatever its age."""
    return [
        wire.encode_request(wire.ReqType.RTO, 0, cont, [], [_fetch()], a)
        for cont, _ in run.held
        for a in range(wire.MAX_ATTEMPT + 1)
    ]


def fake_holes(run: Run, cli: ClientConnection, reqs: list[bytes], now: float) -> list[bytes]:
    """Besides each honest request, the same continuation with a fake hole (as REQUEST and as
    REGEN): recovery retransmits the "lost" packet and starts a new piece."""
    out: list[bytes] = []
    for q in _requests(reqs):
        if q.type != wire.ReqType.REQUEST or len(q.proof) != 1:
            continue
        base, k, _ = q.proof[0]
        if k - base < 3:
            continue
        m = k - 2
        try:
            proof = [(base, m - 1, cli.sack.run_xor(base, m - 1)), (m + 1, k, cli.sack.run_xor(m + 1, k))]
        except (IndexError, KeyError):
            continue
        for t in (wire.ReqType.REQUEST, wire.ReqType.REGEN):
            out.append(wire.encode_request(t, 0, q.cont, proof, [_fetch()]))
    return out


def everything(run: Run, cli: ClientConnection, reqs: list[bytes], now: float) -> list[bytes]:
    return replay(run, cli, reqs, now) + timeouts(run, cli, reqs, now) + fake_holes(run, cli, reqs, now)


STRATEGIES: dict[str, Strategy] = {
    "honest": honest,
    "replay x3": replay,
    "timeouts (age-allowed attempts, all held continuations)": timeouts,
    "timeouts (all 16 attempts at once)": timeouts_every_attempt,
    "fake holes (REQUEST + REGEN per continuation)": fake_holes,
    "all of the above": everything,
}


def _fetch() -> wire.FetchSeg:
    # The attacker asks for data in every slot (it picks the bytes; any range of the object).
    return wire.FetchSeg(b"", tuple((random.randrange(0, 1 << 20), 1372) for _ in range(1)))


def measure(strategy: Strategy, rounds: int, rtt: float = 0.05, seed: int = 1) -> Run:
    random.seed(seed)
    eng = ServerEngine(
        KeyRing(ServerKey(1, b"k" * 32)),
        MemoryApp({b"obj": bytes(64 << 20)}),
        ServerConfig(delta=False),
    )
    run = Run(rtt)
    cli = ClientConnection(client_nonce=seed)
    now = T0
    cli.connect(b"obj", now)
    reqs = cli.datagrams_to_send(now)
    for _ in range(rounds):
        extra = strategy(run, cli, reqs, now) if reqs else []
        run.sent_extra += len(extra)
        for q in reqs + extra:
            res = eng.step(q, ADDR, now)
            if res.drop is not None:
                run.dropped[res.drop.value] = run.dropped.get(res.drop.value, 0) + 1
            for d in res.datagrams:
                if d[1] in (wire.R_DATA, wire.R_RETRANSMIT):
                    run.data_packets += 1
                if d[2] & wire.F_FULL:
                    run.held.append((d[_CONT_AT : _CONT_AT + _SEALED], now))
                cli.receive_datagram(d, now + rtt / 2)
        now += rtt
        cli.handle_timer(now)
        reqs = cli.datagrams_to_send(now)
    return run


def table(rounds: int) -> dict[str, dict[str, object]]:
    base = measure(honest, rounds)
    out: dict[str, dict[str, object]] = {}
    for name, strat in STRATEGIES.items():
        t0 = time.perf_counter()
        r = base if strat is honest else measure(strat, rounds)
        out[name] = {
            "data_packets": r.data_packets,
            "gain": round(r.data_packets / base.data_packets, 3),
            "extra_datagrams_sent": r.sent_extra,
            "drops": r.dropped,
            "seconds": round(time.perf_counter() - t0, 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60, help="round trips of 50 ms simulated (default 60)")
    ap.add_argument("--out", default="bench/results/attacks.json")
    a = ap.parse_args(argv)
    res = table(a.rounds)
    for name, row in res.items():
        print(f"{name:58} gain {row['gain']:>6}  packets {row['data_packets']:>6}  drops {row['drops']}")
    Path(a.out).write_text(json.dumps({"rounds": a.rounds, "rtt_s": 0.05, "strategies": res}, indent=2))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
