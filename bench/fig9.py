"""Fig. 9: aggregate throughput vs. concurrent clients through the 100 Mbit/s bottleneck.

    python -m bench.fig9 [--quick] [--clients 1,10,100,1000] [--seconds S]

Each client fetches a 500 kB object over and over, a fresh connection per fetch, for ``S`` seconds
per point (paper section 6.1). Servers: Trickles (request as SYN data), the project's TCP fallback
(trio + h11) and nginx, both kernel TCP with the bottleneck namespaces' congestion control (Reno).
Clients are :mod:`bench.load` processes (one per 250 clients, at least two from 20 clients on).
Recorded per point, to say what limited it: the CPU the server and the client processes got (in
cores; the kernel's TCP work in softirq is not charged to them) and the loss counters of
:func:`bench.harness.counters` (bottleneck drops, full UDP socket buffers, TCP retransmissions).
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.netns import bottleneck
from bench.throughput import children_cpu

OBJECT = 500_000
PATH = "/500k.bin"


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def point(net: Any, server: str, port: int, srv_pid: int, clients: int, seconds: float) -> dict[str, Any]:
    procs = max(math.ceil(clients / 250), 2 if clients >= 20 else 1)
    mode = "trickles" if server == "trickles" else "tcp"
    per = [clients // procs + (i < clients % procs) for i in range(procs)]
    argvs = [h.load_argv(mode, net.server_ip, port, PATH, concurrency=c, duration=seconds) for c in per]
    k0, c0, s0, t0 = h.counters(net), child_cpu(), children_cpu(srv_pid), time.monotonic()
    r = h.merge(h.run_load(net, argvs, timeout=seconds + 60))
    wall = time.monotonic() - t0
    losses = h.delta(h.counters(net), k0)
    return {
        "server": server,
        "clients": clients,
        "client_processes": procs,
        "Mbps": round(r["bytes"] * 8 / r["seconds"] / 1e6, 2),
        "fetches": r["fetches"],
        "errors": r["errors"],
        "error_kinds": r["error_kinds"],
        "fetch_s_median": round(statistics.median(r["times"]), 4) if r["times"] else None,
        "server_cpu": round((children_cpu(srv_pid) - s0) / wall, 3),
        "client_cpu": round((child_cpu() - c0) / wall, 3),
        "losses": losses,
    }


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for server in doc["servers"]:
        pts = [p for p in doc["points"] if p["server"] == server]
        ax.plot([p["clients"] for p in pts], [p["Mbps"] for p in pts], marker="o", label=server)
    ax.set_xscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("aggregate throughput (Mbit/s)")
    ax.set_ylim(0, 105)
    ax.set_title("Fig. 9: 500 kB fetches through a 100 Mbit/s bottleneck")
    ax.legend()
    h.save(fig, "fig9", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small points (smoke test)")
    ap.add_argument("--clients", default="1,2,5,10,20,50,100,200,500,1000")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args(argv)
    counts = [1, 4] if args.quick else [int(c) for c in args.clients.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    servers = ["trickles", "tcp-fallback"] + ([] if args.quick or not h.have_nginx() else ["nginx"])
    tmp = Path(tempfile.mkdtemp(prefix="trickles-fig9-"))
    root, key = h.make_site(tmp, {PATH[1:]: OBJECT})
    doc: dict[str, Any] = {"experiment": "fig9", "machine": h.machine(), "object_bytes": OBJECT}
    doc.update(seconds_per_point=seconds, servers=servers, points=[])
    prog = h.Progress("fig9", len(counts) * len(servers))
    with bottleneck() as net:
        doc["link"] = {"rate": net.rate, "congestion": net.congestion, "delay": "none added"}
        trickles = h.start_trickles(net, root, key)
        nginx = h.start_nginx(net, root, tmp) if "nginx" in servers else None
        for n in counts:
            for server in servers:
                prog.step(f"{server} {n} clients")
                pid, port = (
                    (nginx.pid, h.NGINX_PORT) if server == "nginx" and nginx else (trickles.pid, h.PORT)
                )
                doc["points"].append(point(net, server, port, pid, n, seconds))
    prog.done()
    by = {(p["server"], p["clients"]): p["Mbps"] for p in doc["points"]}
    doc["ratios"] = {
        f"trickles/{peer}": {str(n): round(by["trickles", n] / max(by[peer, n], 1e-9), 3) for n in counts}
        for peer in servers[1:]
    }
    for p in doc["points"]:
        print(
            f"  {p['server']:13s} {p['clients']:5d} clients {p['Mbps']:7.2f} Mbit/s  errors {p['errors']}"
            f"  server cpu {p['server_cpu']:.2f}  client cpu {p['client_cpu']:.2f}"
            f"  { ({k: v for k, v in p['losses'].items() if v}) }"
        )
    print("ratios:", doc["ratios"])
    print("wrote", h.write("fig9", doc, args.quick))
    plot(doc, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
