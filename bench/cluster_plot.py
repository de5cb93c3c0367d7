"""Packet-level load balancing (paper section 6.2): ``bench/cluster.py``'s results, plotted.

    python -m bench.cluster_plot [--quick]

Runs nothing: reads ``bench/results/cluster.json`` (one 10 MB download on loopback through
``trickles spray`` to 1..3 replicas, and from one server directly; run ``bench/cluster.py`` first,
``make bench`` does) and plots throughput and CPU per packet against the number of replicas. The
paper's figures 16 (failover trace) and 17 (Jain's index of two clients across two servers) measure
other things and are not reproduced.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench import harness as h


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    cases = doc["cases"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["direct" if c["replicas"] == 0 else f"{c['replicas']} replica(s)" for c in cases]
    a.bar(labels, [c["MBps"] for c in cases])
    a.set_ylabel("one download, MB/s")
    sprayed = [c for c in cases if c["replicas"]]
    xs = [c["replicas"] for c in sprayed]
    b.plot(xs, [c["processes"]["sprayer"]["cpu_us_per_packet"] for c in sprayed], marker="o", label="sprayer")
    b.plot(xs, [max(v["cpu_us_per_packet"] for k, v in c["processes"].items() if k != "sprayer") for c in sprayed],
           marker="o", label="busiest replica")  # fmt: skip
    b.set_xlabel("replicas")
    b.set_ylabel("CPU per packet (µs)")
    b.legend()
    fig.suptitle("One download sprayed across replicas (loopback, bench/cluster.py)")
    h.save(fig, "cluster", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="read cluster_quick.json")
    args = ap.parse_args(argv)
    doc = json.loads((h.RESULTS / f"cluster{'_quick' if args.quick else ''}.json").read_text())
    for c in doc["cases"]:
        print(f"  replicas {c['replicas']}: {c['MBps']} MB/s")
    plot(doc, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
