"""Server CPU per hostile datagram, beside a normal loss-free step, in one run.

The goal (docs/SECURITY.md): no datagram costs more than 3x a normal step. Each case is one
datagram stepped repeatedly into the same engine: a forged or replayed one is refused each time at
the same point, so every repetition pays the same cost. Medians of ``--repeat`` timing passes.

Usage: ``python -m bench.hostile_cpu [--repeat N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from trickles import wire
from trickles.connection import ClientConnection
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey
from trickles.sim.memapp import MemoryApp

ADDR = b"\x7f\x00\x00\x01\x13\x88"
T0 = 1_000_000.0


def _connection() -> tuple[ServerEngine, ClientConnection, float, list[bytes]]:
    """A loss-free transfer driven until the window is large; returns the next requests."""
    eng = ServerEngine(KeyRing(ServerKey(1, b"k" * 32)), MemoryApp({b"obj": bytes(32 << 20)}), ServerConfig())
    cli = ClientConnection(client_nonce=9)
    now = T0
    cli.connect(b"obj", now)
    reqs = cli.datagrams_to_send(now)
    while cli.cwnd_estimate < 200:
        for q in reqs:
            for d in eng.step(q, ADDR, now).datagrams:
                cli.receive_datagram(d, now)
        now += 0.01
        reqs = cli.datagrams_to_send(now)
    return eng, cli, now, reqs


def cases() -> dict[str, tuple[ServerEngine, bytes, float]]:
    eng, cli, now, reqs = _connection()
    normal = reqs[0]
    q = wire.decode_request_untrusted(normal)
    base, k, x = q.proof[0]
    fetch: list[wire.Segment] = [s for s in q.segments if isinstance(s, wire.FetchSeg)]
    # MAX_PROOF_BLOCKS received runs with one-packet holes between them, ending at k: the most
    # SACK blocks a request may carry, every one of them genuine.
    nb = wire.MAX_PROOF_BLOCKS
    step = (k - base + 1) // nb
    blocks = []
    for i in range(nb):
        lo = base + i * step
        hi = lo + step - 2 if i < nb - 1 else k
        blocks.append((lo, hi, cli.sack.run_xor(lo, hi)))
    forged = [(lo, hi, xx ^ 1) for lo, hi, xx in blocks]
    mac_bad = bytearray(normal)
    mac_bad[wire.REQ_HEAD.size + 20] ^= 1
    out = {
        "normal loss-free REQUEST (mean over a round)": (eng, normal, now),
        "replayed REQUEST": (eng, normal, now),
        "bad MAC": (eng, bytes(mac_bad), now),
        "forged proof, MAX_PROOF_BLOCKS blocks": (eng, wire.encode_request(2, 0, q.cont, forged, fetch), now),
        "genuine MAX_PROOF_BLOCKS-block recovery (replayed)": (
            eng,
            wire.encode_request(2, 0, q.cont, blocks, fetch),
            now,
        ),
        "REGEN, MAX_PROOF_BLOCKS blocks (replayed)": (
            eng,
            wire.encode_request(5, 0, q.cont, blocks, fetch),
            now,
        ),
        "RTO attempt 15 on a young continuation": (
            eng,
            wire.encode_request(3, 0, q.cont, [(base, k, x)], fetch, 15),
            now,
        ),
        "junk (64 random bytes)": (eng, bytes(range(64)), now),
        "SYN, 1200 bytes": (
            eng,
            wire.encode_syn(0, 7, [wire.InputSeg(0, 0, True, b"", b"obj")], pad_to=1200),
            now,
        ),
    }
    return out


def measure(repeat: int, n: int) -> dict[str, dict[str, float | str]]:
    gc.disable()  # a collection inside a timed pass would land on whichever case runs then
    try:
        return _measure(repeat, n)
    finally:
        gc.enable()


def _measure(repeat: int, n: int) -> dict[str, dict[str, float | str]]:
    res: dict[str, dict[str, float | str]] = {}
    normal_us = 0.0
    for name, (eng, dgram, now) in cases().items():
        if name.startswith("normal"):
            # A whole round of genuine requests of an established connection, each a first use,
            # on a fresh copy of the connection per pass: the per-request mean is the normal step.
            samples = []
            for _ in range(repeat):
                e, _cli, t, reqs = _connection()
                gc.collect()
                t0 = time.perf_counter()
                for q in reqs:
                    e.step(q, ADDR, t)
                samples.append((time.perf_counter() - t0) / len(reqs) * 1e6)
            us = statistics.median(samples)
            normal_us = us
            drop = "answered"
        else:
            eng.step(dgram, ADDR, now)  # first use of a genuine one is recorded
            samples = []
            for _ in range(repeat):
                gc.collect()
                t0 = time.perf_counter()
                for _ in range(n):
                    r = eng.step(dgram, ADDR, now)
                samples.append((time.perf_counter() - t0) / n * 1e6)
            us = statistics.median(samples)
            drop = r.drop.value if r.drop else "answered"
        res[name] = {"us": round(us, 2), "outcome": drop}
    for row in res.values():
        row["x_normal"] = round(float(row["us"]) / normal_us, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("-n", type=int, default=2000, help="steps per timing pass (default 2000)")
    ap.add_argument("--out", default="bench/results/hostile_cpu.json")
    a = ap.parse_args(argv)
    res = measure(a.repeat, a.n)
    for name, row in res.items():
        print(f"{name:48} {row['us']:>8} us  x{row['x_normal']:<5} {row['outcome']}")
    Path(a.out).write_text(json.dumps({"repeat": a.repeat, "n": a.n, "cases": res}, indent=2))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
