"""What the metrics cost the UDP loop, per datagram: the loop body with and without them.

Run ``.venv/bin/python bench/metrics_cost.py``. The loop body of ``server/udp.py`` is replayed with
the socket calls and the engine step replaced by trivial stand-ins (so only the bookkeeping around
them is timed), once as it was before the metrics (datagram counts as attributes) and once as it is
now (counts and bytes in/out kept in locals and added per batch, requests by type, the per-batch
histogram bucket and HyperLogLog window check). 256-datagram batches from 64 client addresses; the first sight of an address costs one keyed
hash (timed separately: it happens once per address per 30 s window). Median of 15 runs, written to
``bench/results/metrics_cost.json``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from trickles.server.hll import ActiveClients
from trickles.server.udp import UdpStats

BATCH, BATCHES, RUNS = 256, 400, 15


class Res(NamedTuple):
    datagrams: list[bytes]
    drop: None
    kind: int
    rtt_ms: int


RES = Res([b"x" * 1400] * 2, None, 2, 0)
ADDRS = [(f"10.0.0.{i}", 40000 + i) for i in range(64)]
DATA = b"r" * 120


def before(st: UdpStats) -> None:
    cache: dict[object, bytes] = {a: b"ab" for a in ADDRS}
    perf = time.perf_counter
    for b in range(BATCHES):
        t0 = perf()
        st.batches += 1
        for i in range(BATCH):
            addr = ADDRS[(b + i) & 63]
            st.datagrams_in += 1
            cache.get(addr)
            res = RES
            for d in res.datagrams:
                len(d)  # stands in for sendto's return
                st.datagrams_out += 1
        st.busy_seconds += perf() - t0


def after(st: UdpStats) -> None:
    cache: dict[object, bytes] = {a: b"ab" for a in ADDRS}
    perf = time.perf_counter
    requests, clients = st.requests, st.clients
    for b in range(BATCHES):
        t0 = perf()
        st.batches += 1
        n_in = b_in = n_out = b_out = 0
        if clients.rotate_due(t0):
            cache.clear()
        for i in range(BATCH):
            data, addr = DATA, ADDRS[(b + i) & 63]
            n_in += 1
            b_in += len(data)
            cache.get(addr)
            res = RES
            requests[res.kind] += 1
            for d in res.datagrams:
                b_out += len(d)
                n_out += 1
        dt = perf() - t0
        st.datagrams_in += n_in
        st.bytes_in += b_in
        st.datagrams_out += n_out
        st.bytes_out += b_out
        st.busy_seconds += dt
        st.observe_batch(n_in, dt)


def per_datagram_ns(fn: Callable[[UdpStats], None]) -> list[float]:
    out = []
    for _ in range(RUNS):
        t = time.perf_counter_ns()
        fn(UdpStats())
        out.append((time.perf_counter_ns() - t) / (BATCH * BATCHES))
    return out


def main() -> None:
    samples: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(RUNS):  # round-robin: the machine is shared and noisy
        samples["before"] += per_datagram_ns(before)[:1]
        samples["after"] += per_datagram_ns(after)[:1]
    ac = ActiveClients()
    t = time.perf_counter_ns()
    for i in range(20000):
        ac.add(i.to_bytes(6, "big"))
    first_sight = (time.perf_counter_ns() - t) / 20000
    t = time.perf_counter_ns()
    for _ in range(50):
        ac.estimate()
    scrape_us = (time.perf_counter_ns() - t) / 50 / 1000
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "per_datagram_ns_median": med,
        "added_ns_per_datagram": med["after"] - med["before"],
        "hll_first_sight_ns": first_sight,
        "hll_estimate_at_scrape_us": scrape_us,
        "samples": samples,
    }
    out = Path(__file__).parent / "results" / "metrics_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"loop bookkeeping per datagram: before {med['before']:.0f} ns, after {med['after']:.0f} ns, "
        f"added {med['after'] - med['before']:.0f} ns"
    )
    print(f"first sight of an address (keyed hash into the sketch): {first_sight:.0f} ns")
    print(f"distinct-clients estimate at scrape: {scrape_us:.0f} us")


if __name__ == "__main__":
    main()
