"""Fig. 14 and section 6.1: pipelined requests on one connection, 10 ms RTT, 100 Mbit/s.

    python -m bench.fig14 [--quick] [--seconds S]

One connection fetches the same object (250 kB, and 20 kB: less than the path's bandwidth-delay
product) over and over with ``W`` requests outstanding, for ``S`` seconds, through the bottleneck
namespaces joined by the delay line (:mod:`bench.delayline`, 5 ms each way). Trickles: ``W=10``
requests each in its own region (parallel continuation requests, section 5.2) and ``W=1`` (one
request at a time; this client has no SKIP hints, so this is the paper's "without parallel requests"
case without SKIP's head start). TCP: HTTP/1.1 keep-alive with 10 pipelined requests and with one at
a time, against the project's TCP fallback and nginx (kernel TCP, Reno).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.netns import bottleneck

SIZES = {"250k": 250_000, "20k": 20_000}
DELAY = 0.005  # one way
PAPER_250K_MBPS = {"trickles": 86, "tcp": 91}  # section 6.1, SKIP hints on; figure 14 is a plot


def cases(nginx: bool) -> list[tuple[str, str, int, int]]:
    """(name, load mode, port, window)"""
    out = [
        ("trickles W=10 (parallel regions)", "trickles-pipe", h.PORT, 10),
        ("trickles W=1", "trickles-pipe", h.PORT, 1),
        ("tcp-fallback W=10 (pipelined)", "tcp-pipe", h.PORT, 10),
        ("tcp-fallback W=1 (keep-alive)", "tcp-pipe", h.PORT, 1),
    ]
    if nginx:
        out += [
            ("nginx W=10 (pipelined)", "tcp-pipe", h.NGINX_PORT, 10),
            ("nginx W=1 (keep-alive)", "tcp-pipe", h.NGINX_PORT, 1),
        ]
    return out


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    names = list(dict.fromkeys(p["case"] for p in doc["points"]))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(doc["sizes"])
    for i, size in enumerate(doc["sizes"]):
        rates = {p["case"]: p["Mbps"] for p in doc["points"] if p["object"] == size}
        ax.bar(
            [j + i * width for j in range(len(names))], [rates.get(n, 0) for n in names], width, label=size
        )
    ax.set_xticks([j + width / 2 for j in range(len(names))], names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("throughput (Mbit/s)")
    ax.set_title("Fig. 14: pipelined requests, one connection, 10 ms RTT, 100 Mbit/s")
    ax.legend(title="object")
    h.save(fig, "fig14", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 kB only, 1.5 s per case (smoke test)")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args(argv)
    sizes = {"20k": SIZES["20k"]} if args.quick else SIZES
    seconds = 1.5 if args.quick else args.seconds
    todo = cases(not args.quick and h.have_nginx())
    tmp = Path(tempfile.mkdtemp(prefix="trickles-fig14-"))
    root, key = h.make_site(tmp, {f"{n}.bin": s for n, s in sizes.items()})
    doc: dict[str, Any] = {"experiment": "fig14", "machine": h.machine(), "seconds_per_case": seconds}
    doc.update(sizes=list(sizes), paper_250k_Mbps=PAPER_250K_MBPS, points=[])
    prog = h.Progress("fig14", len(sizes) * len(todo))
    with bottleneck(delay=DELAY) as net:
        doc["link"] = {
            "rate": net.rate,
            "congestion": net.congestion,
            "one_way_delay_s": DELAY,
            "delay_by": "bench.delayline (TUN, every IP packet)",
        }
        h.start_trickles(net, root, key)
        if any(port == h.NGINX_PORT for _, _, port, _ in todo):
            h.start_nginx(net, root, tmp)
        for name in sizes:
            for case, mode, port, window in todo:
                prog.step(f"{name} {case}")
                argv = h.load_argv(mode, net.server_ip, port, f"/{name}.bin", window=window, duration=seconds)
                r = h.run_load(net, [argv], timeout=seconds + 60)[0]
                doc["points"].append(
                    {
                        "object": name,
                        "case": case,
                        "window": window,
                        "Mbps": round(r["bytes"] * 8 / r["seconds"] / 1e6, 2),
                        "fetches": r["fetches"],
                        "errors": r["errors"],
                    }
                )
    prog.done()
    for p in doc["points"]:
        print(
            f"  {p['object']:5s} {p['case']:34s} {p['Mbps']:7.2f} Mbit/s  fetches {p['fetches']}  errors {p['errors']}"
        )
    print("wrote", h.write("fig14", doc, args.quick))
    plot(doc, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
