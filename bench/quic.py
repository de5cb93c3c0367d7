"""Trickles beside aioquic (HTTP/3) at 1, 100 and 1,000 concurrent connections, on loopback.

    python -m bench.quic [--quick] [--connections 1,100,1000] [--total-mb M]

For each connection count ``n`` a fresh server (``trickles serve`` or ``bench/aioquic_peer.py``) is
started and ``n`` connections fetch one object each at once, objects of ``M / n`` MB (at least
20 kB), with the client stacks of :mod:`bench.throughput` (one client process). Reported: aggregate
MB/s, and the server's peak RSS during the run (``VmHWM``) beside its RSS when idle. Loopback only:
the aioquic peer refuses other addresses, so there is no bottleneck or delay here.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.throughput import AioquicServer, Server, have_aioquic, run_clients


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def point(stack: str, root: Path, key: Path, n: int, size: int) -> dict[str, Any]:
    srv: Server | AioquicServer = AioquicServer(root) if stack == "aioquic" else Server(root, key)
    try:
        idle = vm(srv.proc.pid, "VmRSS")
        got, dt, _ = run_clients(stack, srv.port, f"/{size}.bin", n)
        peak = vm(srv.proc.pid, "VmHWM")
    finally:
        srv.stop()
    return {
        "stack": stack,
        "connections": n,
        "object_bytes": size,
        "complete": got == n * size,
        "MBps": round(got / dt / 1e6, 2),
        "idle_rss_bytes": idle,
        "peak_rss_bytes": peak,
    }


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for stack in doc["stacks"]:
        pts = [p for p in doc["points"] if p["stack"] == stack]
        xs = [p["connections"] for p in pts]
        a.plot(xs, [p["MBps"] for p in pts], marker="o", label=stack)
        b.plot(xs, [p["peak_rss_bytes"] / 2**20 for p in pts], marker="o", label=stack)
    a.set_ylabel("aggregate MB/s")
    b.set_ylabel("server peak RSS (MiB)")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent connections")
        ax.legend()
    fig.suptitle("Trickles vs aioquic (HTTP/3), loopback")
    h.save(fig, "quic", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--connections", default="1,100,1000")
    ap.add_argument("--total-mb", type=float, default=20.0)
    args = ap.parse_args(argv)
    counts = [1, 10] if args.quick else [int(c) for c in args.connections.split(",")]
    total = 2e6 if args.quick else args.total_mb * 1e6
    stacks = ["trickles"] + (["aioquic"] if have_aioquic() else [])
    sizes = {n: max(int(total / n), 20_000) for n in counts}
    tmp = Path(tempfile.mkdtemp(prefix="trickles-quic-"))
    root = tmp / "www"
    root.mkdir()
    rng = random.Random(0)
    for s in set(sizes.values()):
        (root / f"{s}.bin").write_bytes(rng.randbytes(s))
    key = tmp / "key"
    key.write_text(os.urandom(32).hex())
    doc: dict[str, Any] = {"experiment": "quic", "machine": h.machine(), "stacks": stacks, "points": []}
    prog = h.Progress("quic", len(counts) * len(stacks))
    for n in counts:
        for stack in stacks:
            prog.step(f"{stack} {n} connections")
            try:
                doc["points"].append(point(stack, root, key, n, sizes[n]))
            except RuntimeError as e:  # a failing peer costs its own point, not the run
                doc["points"].append({"stack": stack, "connections": n, "error": str(e)})
    prog.done()
    doc["points"] = [p for p in doc["points"] if "error" not in p] + [
        p for p in doc["points"] if "error" in p
    ]
    for p in doc["points"]:
        print(f"  {p}")
    print("wrote", h.write("quic", doc, args.quick))
    plot({**doc, "points": [p for p in doc["points"] if "error" not in p]}, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
