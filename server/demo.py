"""``make demo``: a simulated transfer, then a real server on loopback fetched with ``tcurl``.

1. The deterministic simulator runs the real protocol machines over a 10 Mb/s, 40 ms RTT path with
   1% loss and prints the window over time, bytes delivered and retransmissions.
2. A real ``trickles serve`` process serves a temporary directory of sample files; ``tcurl`` fetches
   one large file, then many small ones in parallel; the demo prints throughput and the server's
   memory, and stops everything cleanly.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trickles.sim.network import transfer


def _bar(n: int, scale: float) -> str:
    return "#" * max(1, round(n * scale))


def simulated() -> None:
    print("== 1. Simulated transfer: 4 MB over 10 Mb/s, 40 ms RTT, 1% random loss ==")
    r = transfer(4_000_000, 7, bandwidth=1.25e6, delay=0.02, loss=0.01, queue=60, record_cwnd=True)
    c = r.client.conn
    samples = _window_trace(r)
    peak = max((w for _, w in samples), default=1)
    print("  time    window (packets in flight, as the server computed it)")
    step = max(1, len(samples) // 24)
    for t, w in samples[::step]:
        print(f"  {t:6.2f}s {w:4d} {_bar(w, 50 / peak)}")
    ok = (
        hashlib.sha256(r.data).hexdigest()
        == hashlib.sha256(random.Random(7 ^ 0x5EED).randbytes(4_000_000)).hexdigest()
    )
    dur = (r.done_at or 0) - 0
    print(
        f"  delivered {len(r.data):,} bytes in {dur:.2f} s simulated ({len(r.data) / max(dur, 1e-9) / 1e6:.2f} MB/s), "
        f"byte-identical: {ok}"
    )
    print(
        f"  losses declared {c.stats.losses_declared}, fast retransmissions {r.server.stats.retransmits}, "
        f"timeouts {c.stats.timeouts}, requests {c.stats.requests_sent}, continuations {c.stats.continuations}"
    )
    # The reference: TCP Reno on an identical path (same bandwidth, delay, queue and loss rate).
    from trickles.sim.network import Link, Sim
    from trickles.sim.reno import RenoFlow

    sim = Sim(7)
    down = Link(sim, 1.25e6, 0.02, 60, loss=0.01)
    up = Link(sim, 1.25e6, 0.02, 60, loss=0.01)
    flow = RenoFlow(sim, down, up, 4_000_000)
    sim.run(600, stop=lambda: flow.finished)
    if flow.done_at:
        print(
            f"  TCP Reno reference on the same path: {4_000_000 / flow.done_at / 1e6:.2f} MB/s, "
            f"retransmissions {flow.retransmits}, timeouts {flow.timeouts}"
        )


def _window_trace(r: object) -> list[tuple[float, int]]:
    from trickles.reno import tcp_cwnd

    cli = r.client.conn  # type: ignore[attr-defined]
    return [(t, w) for t, w in cli.stats.cwnd_samples] or [(0.0, tcp_cwnd(1, 1, 3, 16383))]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t.bind(("127.0.0.1", port))
        return int(port)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def real() -> None:
    print("\n== 2. A real server on loopback, fetched with tcurl ==")
    bindir = Path(sys.executable).parent
    tmp = Path(tempfile.mkdtemp(prefix="trickles-demo-"))
    root = tmp / "www"
    root.mkdir()
    rng = random.Random(1)
    (root / "large.bin").write_bytes(rng.randbytes(20_000_000))
    (root / "index.html").write_text("<h1>Trickles demo</h1>\n")
    for i in range(40):
        (root / f"small{i:02d}.txt").write_text(f"small file {i}\n" * rng.randint(1, 300))
    port = _free_port()
    key = tmp / "key"
    subprocess.run([bindir / "trickles", "keygen", "-o", str(key)], check=True)
    srv = subprocess.Popen(
        [bindir / "trickles", "serve", str(root), "--listen", f"127.0.0.1:{port}", "--key-file", str(key)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(port)
        base = f"http://127.0.0.1:{port}"
        print(
            f"  server pid {srv.pid} on udp+tcp 127.0.0.1:{port}, RSS {_rss_kb(srv.pid) / 1024:.1f} MB at start"
        )
        out = tmp / "large.out"
        t0 = time.perf_counter()
        p = subprocess.run(
            [bindir / "tcurl", "-sS", "-v", "-o", str(out), f"{base}/large.bin"],
            capture_output=True,
            text=True,
        )
        dt = time.perf_counter() - t0
        same = out.exists() and out.read_bytes() == (root / "large.bin").read_bytes()
        transport = [ln for ln in p.stderr.splitlines() if "Transport" in ln]
        print(
            f"  tcurl large.bin: exit {p.returncode}, 20 MB in {dt:.2f} s = {20 / dt:.1f} MB/s, identical: {same}"
        )
        for ln in transport:
            print("   ", ln.strip())
        urls = [f"{base}/small{i:02d}.txt" for i in range(40)]
        outs = []
        for i in range(40):
            outs += ["-o", str(tmp / f"s{i}")]
        t0 = time.perf_counter()
        p2 = subprocess.run([bindir / "tcurl", "-sS", "-Z", *outs, *urls], capture_output=True, text=True)
        dt2 = time.perf_counter() - t0
        good = sum(
            (tmp / f"s{i}").read_bytes() == (root / f"small{i:02d}.txt").read_bytes() for i in range(40)
        )
        print(f"  tcurl -Z 40 small files: exit {p2.returncode}, {good}/40 identical, {dt2:.2f} s")
        print(f"  server RSS after the transfers: {_rss_kb(srv.pid) / 1024:.1f} MB (no per-connection state)")
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("  server stopped cleanly" if srv.returncode == 0 else f"  server exit code {srv.returncode}")


def _wait_ready(port: int) -> None:
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def main() -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    simulated()
    real()
    return 0


if __name__ == "__main__":
    sys.exit(main())
