"""Loopback throughput: Trickles (cache on/off, 1 and 2 workers) beside TCP, HTTP/3 and the raw UDP limit.

Everything runs in one invocation so the figures share the machine's current load; each case is
repeated and the median reported. Servers run as separate processes (the machine has 2 cores: one
for the server, one for the client).

    .venv/bin/python bench/throughput.py [--quick] [--repeats N] [--other-venv DIR]

The build measured is the one this interpreter imports (``build`` in the JSON); for the compiled
build: ``PYTHONSAFEPATH=1 .venv-compiled/bin/python bench/throughput.py --other-venv .venv``.

Cases:
* ``udp_loop``: a bare Python request/response loop (blocking sockets, 64 requests in flight,
  1400-byte responses): about the most a Python process can push through loopback here.
* ``trickles``: one connection downloading a file with the Trickles client; ``trickles_nocache``
  the same against ``--no-cache``; ``trickles_2workers`` with ``--workers 2`` and two client
  processes.
* ``tcp``: the same file over the TCP fallback (trio + h11 server) with the same Python HTTP client
  stack (``TcpTransport``), and ``tcp_curl`` with the real curl binary as the client.
* ``aioquic``: the same file over HTTP/3 (QUIC) with aioquic on both ends (``bench/aioquic_peer.py``),
  the main Python QUIC stack; skipped, with a note, when aioquic is not installed (extra ``bench``).
* ``*_100``: 100 concurrent connections (one client process), aggregate rate.
* ``trickles_nogso``: ``trickles`` with ``--no-gso`` (one ``sendto`` per datagram); with
  ``--other-venv DIR``, ``trickles_other_build`` runs ``trickles`` with that virtualenv's build (pure
  beside compiled, say) in the same run.
* server CPU per data packet: server process CPU seconds (from /proc) / data packets sent, counted
  as bytes / 1372 (Trickles' payload per packet) for every server, aioquic included; client CPU per
  data packet likewise, from the client processes' own CPU time over the transfer.

Writes ``bench/results/throughput.json`` (``throughput_quick.json`` with ``--quick``) and a PNG chart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trickles import build_info

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
MSS = 1372
AIOQUIC_PEER = HERE / "aioquic_peer.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", 0))
        port = int(u.getsockname()[1])
        t.bind(("127.0.0.1", port))
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            total += cpu_seconds(int(child))
        except OSError:
            pass
    return total


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Server:
    def __init__(self, root: Path, key: Path, *extra: str, bin_dir: Path = BIN) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                str(bin_dir / "trickles"),
                "serve",
                str(root),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--key-file",
                str(key),
                *extra,
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3 if "--workers" in extra else 0.05)

    def cpu(self) -> float:
        return children_cpu(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


class AioquicServer:
    """``bench/aioquic_peer.py serve``: an HTTP/3 server; the same interface as Server."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(AIOQUIC_PEER), "serve", str(root), str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = ""
        if select.select([self.proc.stdout], [], [], 15)[0]:
            ready = self.proc.stdout.readline().strip()  # "ready", or "" if it died
        if ready != "ready":
            self.stop()
            raise RuntimeError(f"aioquic server did not start (exit {self.proc.returncode})")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


CLIENT = r"""
import sys, time, trio
from trickles.client.trickles_transport import TricklesTransport
from trickles.client.tcp_transport import TcpTransport
transport, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
async def one(results):
    t = TricklesTransport() if transport == "trickles" else TcpTransport()
    c = await t.connect("127.0.0.1", port, timeout=10)
    r = await c.request("GET", path, [("Host", f"127.0.0.1:{port}")])
    got = 0
    async for b in r.body:
        got += len(b)
    results.append(got)
    await c.aclose()
async def main():
    results = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one, results)
    dt = time.perf_counter() - t0
    print(sum(results), dt, time.process_time() - cpu0)
trio.run(main)
"""


def other_build(venv: str) -> str:
    """``trickles --version`` of another virtualenv (names its build: pure or compiled)."""
    exe = Path(venv).resolve() / "bin" / "trickles"
    return subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()


def have_aioquic() -> bool:
    try:
        import aioquic  # noqa: F401
    except ImportError:
        return False
    return True


def run_clients(
    transport: str, port: int, path: str, n: int, procs: int = 1, bin_dir: Path = BIN
) -> tuple[int, float, float]:
    """(bytes, seconds, client CPU seconds) of ``procs`` client processes of ``n`` connections."""
    if transport == "aioquic":
        argv = [sys.executable, str(AIOQUIC_PEER), "get", "127.0.0.1", str(port), path, str(n)]
    else:
        argv = [str(bin_dir / "python"), "-c", CLIENT, transport, str(port), path, str(n)]
    env = os.environ | {"PYTHONSAFEPATH": "1"}  # a source tree in the cwd must not shadow the install
    ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) for _ in range(procs)]
    total, seconds, cpu = 0, 0.0, 0.0
    try:
        for p in ps:
            out, _ = p.communicate(timeout=180)
            if p.returncode != 0 or len(out.split()) < 3:
                raise RuntimeError(f"{transport} client failed (exit {p.returncode})")
            total += int(out.split()[0])
            # The clients' own clock (first connect to last byte): not the interpreter's start-up.
            seconds = max(seconds, float(out.split()[1]))
            cpu += float(out.split()[2])
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    return total, seconds, cpu


def curl_rate(port: int, path: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    p = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return int(p.stdout or 0), time.perf_counter() - t0


UDP_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
resp = bytes(1400)
while True:
    data, a = s.recvfrom(2048)
    if data == b"stop":
        break
    s.sendto(resp, a)
"""


def udp_loop(seconds: float) -> tuple[int, float]:
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-c", UDP_SERVER, str(port)])
    time.sleep(0.3)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(1.0)
    for _ in range(64):
        s.send(b"q")
    got = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    try:
        while time.perf_counter() < end:
            got += len(s.recv(2048))
            s.send(b"q")
    except TimeoutError:
        pass
    dt = time.perf_counter() - t0
    s.send(b"stop")
    srv.wait(5)
    s.close()
    return got, dt


def measure(name: str, fn: Any, repeats: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeats):
        samples.append(fn())
    rates = [b / dt / 1e6 for b, dt, *_ in samples]
    out: dict[str, Any] = {
        "name": name,
        "MBps_samples": [round(r, 2) for r in rates],
        "MBps_median": round(statistics.median(rates), 2),
    }
    for k, side in ((2, "server"), (3, "client")):
        if len(samples[0]) > k:
            cpu = [s[k] for s in samples]
            out[f"{side}_us_per_packet_samples"] = [round(c, 2) for c in cpu]
            out[f"{side}_us_per_packet_median"] = round(statistics.median(cpu), 2)
    print(
        f"  {name:24s} {out['MBps_median']:8.2f} MB/s  samples {out['MBps_samples']}"
        + "".join(
            f"  {side} {out[f'{side}_us_per_packet_median']:.1f} us/packet"
            for side in ("server", "client")
            if f"{side}_us_per_packet_median" in out
        ),
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--other-venv",
        metavar="DIR",
        help="also run the one-connection case with this virtualenv's build (e.g. .venv beside .venv-compiled)",
    )
    args = ap.parse_args()
    size = 8_000_000 if args.quick else 40_000_000
    small = 1_000_000 if args.quick else 2_000_000
    n_conc = 20 if args.quick else 100
    repeats = 1 if args.quick else args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="trickles-bench-"))
    root = tmp / "www"
    root.mkdir()
    rng = random.Random(0)
    (root / "big.bin").write_bytes(rng.randbytes(size))
    (root / "small.bin").write_bytes(rng.randbytes(small))
    key = tmp / "key"
    key.write_text(os.urandom(32).hex())
    results: list[dict[str, Any]] = []
    print(
        f"throughput on loopback: {size / 1e6:.0f} MB file, {n_conc} x {small / 1e6:.0f} MB concurrent, {repeats} repeats"
    )

    results.append(measure("udp_loop", lambda: udp_loop(2.0 if args.quick else 4.0), repeats))

    def with_server(
        extra: tuple[str, ...], transport: str, path: str, n: int, procs: int = 1, bin_dir: Path = BIN
    ) -> Any:
        def run() -> tuple[int, float, float, float]:
            if transport == "aioquic":
                srv: Server | AioquicServer = AioquicServer(root)
            else:
                srv = Server(root, key, *extra, bin_dir=bin_dir)
            try:
                c0 = srv.cpu()
                got, dt, client_cpu = run_clients(transport, srv.port, path, n, procs, bin_dir)
                cpu = srv.cpu() - c0
            finally:
                srv.stop()
            packets = max(got / MSS, 1)
            return got, dt, cpu / packets * 1e6, client_cpu / packets * 1e6

        return run

    results.append(measure("trickles", with_server((), "trickles", "/big.bin", 1), repeats))
    results.append(
        measure("trickles_nocache", with_server(("--no-cache",), "trickles", "/big.bin", 1), repeats)
    )
    results.append(measure("trickles_nogso", with_server(("--no-gso",), "trickles", "/big.bin", 1), repeats))
    if args.other_venv:
        other = Path(args.other_venv).resolve() / "bin"
        results.append(
            measure("trickles_other_build", with_server((), "trickles", "/big.bin", 1, 1, other), repeats)
        )
    results.append(
        measure(
            "trickles_2workers", with_server(("--workers", "2"), "trickles", "/big.bin", 1, procs=2), repeats
        )
    )
    results.append(measure("tcp", with_server((), "tcp", "/big.bin", 1), repeats))
    if shutil.which("curl"):

        def curl_case() -> tuple[int, float]:
            srv = Server(root, key)
            try:
                return curl_rate(srv.port, "/big.bin")
            finally:
                srv.stop()

        results.append(measure("tcp_curl", curl_case, repeats))
    aioquic = have_aioquic()

    def peer_case(name: str, fn: Any) -> None:
        # A failing aioquic run costs its own cases, not the Trickles figures measured so far.
        try:
            results.append(measure(name, fn, repeats))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"  {name:24s} failed: {e}", flush=True)

    if aioquic:
        peer_case("aioquic", with_server((), "aioquic", "/big.bin", 1))
    else:
        print("  aioquic not installed (pip install -e '.[bench]'): skipping the HTTP/3 cases", flush=True)
    results.append(measure(f"trickles_{n_conc}", with_server((), "trickles", "/small.bin", n_conc), repeats))
    results.append(
        measure(
            f"trickles_nocache_{n_conc}",
            with_server(("--no-cache",), "trickles", "/small.bin", n_conc),
            repeats,
        )
    )
    results.append(measure(f"tcp_{n_conc}", with_server((), "tcp", "/small.bin", n_conc), repeats))
    if aioquic:
        peer_case(f"aioquic_{n_conc}", with_server((), "aioquic", "/small.bin", n_conc))

    by = {r["name"]: r for r in results}
    udp = by["udp_loop"]["MBps_median"]
    ratios = {
        "trickles_vs_udp_loop": round(by["trickles"]["MBps_median"] / udp, 3),
        "trickles_vs_tcp_same_client": round(by["trickles"]["MBps_median"] / by["tcp"]["MBps_median"], 3),
        "two_workers_vs_one": round(
            by["trickles_2workers"]["MBps_median"] / by["trickles"]["MBps_median"], 3
        ),
        "cache_speedup": round(by["trickles"]["MBps_median"] / by["trickles_nocache"]["MBps_median"], 3),
        "gso_speedup": round(by["trickles"]["MBps_median"] / by["trickles_nogso"]["MBps_median"], 3),
    }
    if "trickles_other_build" in by:
        ratios["this_build_vs_other"] = round(
            by["trickles"]["MBps_median"] / by["trickles_other_build"]["MBps_median"], 3
        )
    for case, ratio in (("", "trickles_vs_aioquic"), (f"_{n_conc}", f"trickles_vs_aioquic_{n_conc}")):
        if f"aioquic{case}" in by:
            ratios[ratio] = round(
                by[f"trickles{case}"]["MBps_median"] / by[f"aioquic{case}"]["MBps_median"], 3
            )
    print("ratios:", ratios)
    RESULTS.mkdir(exist_ok=True)
    doc = {
        "benchmark": "throughput",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "build": build_info(),  # of this interpreter's install, which the servers run from
            "other_build": other_build(args.other_venv) if args.other_venv else None,
        },
        "file_bytes": size,
        "concurrent": {"connections": n_conc, "file_bytes": small},
        "results": results,
        "ratios": ratios,
    }
    stem = "_quick" if args.quick else ""  # a smoke run never overwrites the real results
    (RESULTS / f"throughput{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        ax.bar([r["name"] for r in results], [r["MBps_median"] for r in results])
        ax.set_ylabel("MB/s (median)")
        ax.set_title("Loopback throughput")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        fig.savefig(RESULTS / f"throughput{stem}.png", dpi=100)
    except ImportError:
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
