"""Fig. 11: server memory vs. concurrent clients held mid-transfer.

    python -m bench.fig11 [--quick] [--clients 10,100,1000,3000,10000] [--tcp-max N]

Like the paper (section 6.1) there is no bottleneck: the namespaces' veth is not shaped. For each
server a fresh process is started, warmed up with one whole fetch, then :mod:`bench.hold` (client
namespace) opens connections in steps, each mid-way through a 4 MB object and then left alone
(tests/integration/test_memory.py's method). At each step: the server's RSS (VmRSS) and the kernel
memory of the server namespace's sockets (``ss -m``: receive + send queue + forward allocation +
options, summed over sockets), plus ``/proc/net/sockstat`` (its ``mem`` is machine-wide). Servers:
Trickles ``--no-cache`` and with its soft-state cache, the project's TCP fallback, nginx. TCP stops at
``--tcp-max`` clients (default 2,000): its buffers are real kernel memory on a machine shared with
others, and the kernel's global ``tcp_mem`` pressure point is not far beyond.
"""

from __future__ import annotations

import argparse
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.netns import Net, bottleneck, in_ns

OBJECT = 4_000_000
PATH = "/4m.bin"
SKMEM = re.compile(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f(\d+),w(\d+),o(\d+)")


def kernel_socket_bytes(net: Net, proto: str) -> int:
    out = in_ns(net.server, "ss", "-Hmn" + ("t" if proto == "tcp" else "u"))
    return sum(sum(int(g) for g in m.groups()) for m in SKMEM.finditer(out))


def sockstat(pid: int) -> str:
    return " | ".join(
        line
        for line in Path(f"/proc/{pid}/net/sockstat").read_text().splitlines()
        if line[:4] in ("TCP:", "UDP:")
    )


def readline(p: subprocess.Popen[str], timeout: float) -> str:
    assert p.stdout is not None
    if not select.select([p.stdout], [], [], timeout)[0]:
        raise RuntimeError("bench.hold did not report in time")
    return p.stdout.readline().strip()


def series(
    net: Net, server: str, pid: int, port: int, counts: list[int], budget: float, prog: h.Progress
) -> list[dict[str, Any]]:
    mode, proto = ("trickles", "udp") if server.startswith("trickles") else ("tcp", "tcp")
    h.run_load(net, [h.load_argv(mode, net.server_ip, port, PATH, count=1, duration=30)], 60)  # warm-up
    argv = [sys.executable, "-m", "bench.hold", mode, net.server_ip, str(port), PATH]
    hold = net.spawn(
        net.client,
        [*argv, ",".join(map(str, counts)), "--seconds", str(budget)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=h.HERE.parent,
    )
    out = []
    try:
        for _ in counts:
            line = readline(hold, budget + 30)
            if not line.startswith("held"):
                raise RuntimeError(f"bench.hold: {line!r}")
            time.sleep(0.5)  # let the server drain what is in flight
            held = int(line.split()[1])
            prog.step(f"{server} {held} clients")
            out.append(
                {
                    "clients": held,
                    "rss_bytes": h.rss_bytes(pid),
                    "kernel_socket_bytes": kernel_socket_bytes(net, proto),
                    "sockstat": sockstat(pid),
                }
            )
            if "budget" in line:
                break
            assert hold.stdin is not None
            hold.stdin.write("\n")
            hold.stdin.flush()
    finally:
        net.stop(hold)
    return out


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for server, pts in doc["series"].items():
        xs = [p["clients"] for p in pts]
        ax.plot(xs, [p["rss_bytes"] / 2**20 for p in pts], marker="o", label=f"{server} RSS")
        if not server.startswith("trickles"):
            ax.plot(
                xs,
                [(p["rss_bytes"] + p["kernel_socket_bytes"]) / 2**20 for p in pts],
                marker="x",
                linestyle="--",
                label=f"{server} RSS + kernel socket memory",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients (held mid-transfer)")
    ax.set_ylabel("MiB")
    ax.set_title("Fig. 11: server memory vs. clients")
    ax.legend(fontsize=8)
    h.save(fig, "fig11", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 and 50 clients (smoke test)")
    ap.add_argument("--clients", default="10,100,1000,3000,10000")
    ap.add_argument("--tcp-max", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=90.0, help="seconds spent opening, per server")
    args = ap.parse_args(argv)
    counts = [10, 50] if args.quick else [int(c) for c in args.clients.split(",")]
    servers = ["trickles-nocache", "trickles-cache", "tcp-fallback"]
    servers += [] if args.quick or not h.have_nginx() else ["nginx"]
    tmp = Path(tempfile.mkdtemp(prefix="trickles-fig11-"))
    root, key = h.make_site(tmp, {PATH[1:]: OBJECT})
    doc: dict[str, Any] = {
        "experiment": "fig11",
        "machine": h.machine(),
        "object_bytes": OBJECT,
        "series": {},
    }
    prog = h.Progress("fig11", len(servers) * len(counts))
    with bottleneck(rate="") as net:
        doc["link"] = {"rate": "unshaped veth", "congestion": net.congestion}
        for server in servers:
            steps = counts if server.startswith("trickles") else [c for c in counts if c <= args.tcp_max]
            if server == "nginx":
                srv, port = h.start_nginx(net, root, tmp), h.NGINX_PORT
            else:
                srv, port = (
                    h.start_trickles(
                        net, root, key, *(["--no-cache"] if server == "trickles-nocache" else [])
                    ),
                    h.PORT,
                )
            try:
                doc["series"][server] = series(net, server, srv.pid, port, steps, args.budget, prog)
            finally:
                net.stop(srv)
    prog.done()
    for server, pts in doc["series"].items():
        first, last = pts[0], pts[-1]
        growth = last["rss_bytes"] - first["rss_bytes"]
        kgrowth = last["kernel_socket_bytes"] - first["kernel_socket_bytes"]
        doc.setdefault("growth", {})[server] = {
            "from": first["clients"],
            "to": last["clients"],
            "rss_bytes": growth,
            "kernel_socket_bytes": kgrowth,
        }
        print(
            f"  {server:17s} {first['clients']}->{last['clients']} clients: RSS {first['rss_bytes'] / 2**20:.1f}"
            f" -> {last['rss_bytes'] / 2**20:.1f} MiB (+{growth / 2**20:.2f}), kernel sockets +{kgrowth / 2**20:.2f} MiB"
        )
    print("wrote", h.write("fig11", doc, args.quick))
    plot(doc, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
