"""Fig. 10: small objects, one client, 20 ms RTT: completion time and packets per fetch.

    python -m bench.fig10 [--quick] [--fetches N]

One client fetches each object size ``N`` times in a row, a fresh connection per fetch, through the
bottleneck namespaces (100 Mbit/s) joined by the delay line (:mod:`bench.delayline`, 10 ms each way,
for every packet of every protocol): Trickles (request as SYN data), the project's TCP fallback and
nginx (kernel TCP, Reno). Packets are the server
namespace's own counters (``/proc/PID/net/snmp``: UDP datagrams, TCP segments, in plus out) per
fetch, so they include the handshake and teardown.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.netns import Net, bottleneck

SIZES = [1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000]
DELAY = 0.01  # one way


def packets(net: Net, pid: int, proto: str) -> int:
    c = net.snmp(pid)
    if proto == "udp":
        return c["Udp"]["InDatagrams"] + c["Udp"]["OutDatagrams"]
    return c["Tcp"]["InSegs"] + c["Tcp"]["OutSegs"]


def point(net: Net, server: str, port: int, srv_pid: int, size: int, fetches: int) -> dict[str, Any]:
    mode, proto = ("trickles", "udp") if server == "trickles" else ("tcp", "tcp")
    argv = h.load_argv(mode, net.server_ip, port, f"/{size}.bin", count=fetches, duration=60)
    before = packets(net, srv_pid, proto)
    r = h.run_load(net, [argv], timeout=90)[0]
    pk = packets(net, srv_pid, proto) - before
    return {
        "server": server,
        "bytes": size,
        "fetches": r["fetches"],
        "errors": r["errors"],
        "time_ms_median": round(statistics.median(r["times"]) * 1e3, 2) if r["times"] else None,
        "time_ms_samples": [round(t * 1e3, 2) for t in r["times"]],
        "packets_per_fetch": round(pk / max(r["fetches"] + r["errors"], 1), 1),
    }


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for server in doc["servers"]:
        pts = [p for p in doc["points"] if p["server"] == server]
        xs = [p["bytes"] / 1e3 for p in pts]
        a.plot(xs, [p["time_ms_median"] for p in pts], marker="o", label=server)
        b.plot(xs, [p["packets_per_fetch"] for p in pts], marker="o", label=server)
    for ax, label in ((a, "completion time (ms, median)"), (b, "packets per fetch (server, in+out)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("object size (kB)")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("Fig. 10: one client, fresh connection per object, 20 ms RTT")
    h.save(fig, "fig10", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two sizes, three fetches (smoke test)")
    ap.add_argument("--fetches", type=int, default=15)
    args = ap.parse_args(argv)
    sizes = [1_000, 16_000] if args.quick else SIZES
    fetches = 3 if args.quick else args.fetches
    servers = ["trickles", "tcp-fallback"] + ([] if args.quick or not h.have_nginx() else ["nginx"])
    tmp = Path(tempfile.mkdtemp(prefix="trickles-fig10-"))
    root, key = h.make_site(tmp, {f"{s}.bin": s for s in sizes})
    doc: dict[str, Any] = {"experiment": "fig10", "machine": h.machine(), "fetches_per_point": fetches}
    doc.update(servers=servers, points=[])
    prog = h.Progress("fig10", len(sizes) * len(servers))
    with bottleneck(delay=DELAY) as net:
        doc["link"] = {"rate": net.rate, "congestion": net.congestion, "one_way_delay_s": DELAY}
        doc["delay_by"] = "bench.delayline (TUN, every IP packet)"
        trickles = h.start_trickles(net, root, key)
        nginx = h.start_nginx(net, root, tmp) if "nginx" in servers else None
        for size in sizes:
            for server in servers:
                prog.step(f"{server} {size} B")
                pid, port = (
                    (nginx.pid, h.NGINX_PORT) if server == "nginx" and nginx else (trickles.pid, h.PORT)
                )
                doc["points"].append(point(net, server, port, pid, size, fetches))
    prog.done()
    by = {(p["server"], p["bytes"]): p for p in doc["points"]}
    doc["time_ratios"] = {
        f"trickles/{peer}": {
            str(s): round(by["trickles", s]["time_ms_median"] / by[peer, s]["time_ms_median"], 3)
            for s in sizes
        }
        for peer in servers[1:]
    }
    for p in doc["points"]:
        print(
            f"  {p['server']:13s} {p['bytes']:8d} B  {p['time_ms_median']} ms  {p['packets_per_fetch']} packets  errors {p['errors']}"
        )
    print("time ratios:", doc["time_ratios"])
    print("wrote", h.write("fig10", doc, args.quick))
    plot(doc, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
