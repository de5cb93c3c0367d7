"""Cost of the static-file and TCP-fallback attacks of SECURITY.md ("Static files and TCP fallback").

Run ``.venv/bin/python bench/static_attacks.py`` (about a minute). It measures whatever
``trickles`` package is importable, so an older tree can be measured the same way for comparison.
It prints one line per figure and writes ``bench/results/static_attacks.json``; nothing is
asserted (the tests are in ``tests/apps/test_listing.py`` and ``tests/apps/test_tcp_fallback.py``).

1. *Listing SYNs*: spoofed SYNs, each carrying ``GET /big/`` for a directory of 3,000 files, go
   through ``ServerEngine.step`` in-process; the server CPU per SYN is timed (median, first), next
   to SYNs for a 1 KB file.
2. *Head flood*: 200 TCP connections to a ``trickles serve`` process each send 878 KiB of request
   head without its end; the server's RSS growth and the connections it closed are reported.
3. *Slow-loris*: one TCP connection sends one byte of head per 100 ms: how long the server keeps
   it (30 s at most).
4. *Connection flood*: 2,100 silent TCP connections: how many the server holds (its open fds).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trickles import wire
from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey

RESULTS = Path(__file__).resolve().parent / "results" / "static_attacks.json"


def listing_syns(n: int = 500) -> dict[str, dict[str, float]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(f"{tmp}/big")
        for i in range(3000):
            Path(f"{tmp}/big/file-{i:05d}.txt").write_bytes(b"x" * i)
        Path(f"{tmp}/small.txt").write_bytes(b"x" * 1000)
        ring = KeyRing(ServerKey(1, b"k" * 32))
        engine = ServerEngine(ring, StaticHttpApp(StaticSite(tmp), ring), ServerConfig())
        addr = bytes([127, 0, 0, 1]) + (40000).to_bytes(2, "big")
        for target in ("/small.txt", "/big/"):
            head = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            times = []
            for i in range(n):
                syn = wire.encode_syn(0, i, [wire.InputSeg(0, 0, True, b"", head)], pad_to=1200)
                t0 = time.perf_counter()
                answer = engine.step(syn, addr, time.time())
                times.append(time.perf_counter() - t0)
                assert answer.datagrams, answer.drop
            out[target] = {"first_us": times[0] * 1e6, "median_us": statistics.median(times) * 1e6}
            print(f"SYN for GET {target}: first {times[0] * 1e6:.0f} us, median "
                  f"{statistics.median(times) * 1e6:.0f} us per SYN ({n} SYNs)")  # fmt: skip
    return out


@contextmanager
def server() -> Iterator[tuple[int, int]]:
    """A `trickles serve` process on a free loopback port: (pid, port)."""
    root = tempfile.mkdtemp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "trickles.server.cli", "serve", root, "--listen", f"127.0.0.1:{port}"]
    # cwd: with `-m`, the current directory is first on sys.path and must not shadow the package.
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, cwd=root)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(60)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def closed_by_server(conns: list[socket.socket]) -> int:
    closed = 0
    for c in conns:
        c.setblocking(False)
        try:
            data = c.recv(65536)
            closed += data == b"" or data.startswith(b"HTTP/1.1 4")
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        c.close()
    return closed


def head_flood(n: int = 200, per_conn: int = 900_000) -> dict[str, float]:
    with server() as (pid, port):
        base = rss_mib(pid)
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        for c in conns:
            c.setblocking(False)
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sent, pad = [0] * n, b"X-Pad: " + b"p" * 4000 + b"\r\n"
        deadline = time.time() + 20
        while time.time() < deadline and min(sent) < per_conn:
            for i, c in enumerate(conns):
                if sent[i] < per_conn:
                    try:
                        sent[i] += c.send(pad)
                    except BlockingIOError:
                        pass
                    except OSError:
                        sent[i] = per_conn  # reset by the server
        time.sleep(1)
        peak = rss_mib(pid)
        closed = closed_by_server(conns)
    print(f"head flood: {n} connections x {per_conn // 1024} KiB: server RSS {base:.0f} -> {peak:.0f} MiB, "
          f"{closed} answered 4xx or closed")  # fmt: skip
    return {"rss_before_mib": base, "rss_after_mib": peak, "closed": closed}


def slow_loris(limit: float = 30.0) -> float | None:
    with server() as (_, port):
        c = socket.create_connection(("127.0.0.1", port))
        c.settimeout(0.1)
        start = time.time()
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000:
                if time.time() - start > limit:
                    break
                try:
                    c.send(bytes([byte]))
                    c.recv(100)  # any answer (408) or EOF: the server gave up on us
                    return time.time() - start
                except TimeoutError:
                    continue
                except OSError:
                    return time.time() - start
        finally:
            c.close()
    return None


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connection_flood(n: int = 2100) -> int:
    """Connections the server holds (its fd count growth) once it has accepted them all."""
    with server() as (pid, port):
        base = open_fds(pid)
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        time.sleep(3)  # accepting 2,100 connections takes a while on a loaded machine
        held = open_fds(pid) - base
        for c in conns:
            c.close()
        return held


def main() -> None:
    results: dict[str, object] = {"loadavg": os.getloadavg(), "listing_syns": listing_syns()}
    results["head_flood"] = head_flood()
    held = slow_loris()
    print("slow-loris (1 byte / 100 ms):", f"closed after {held:.1f} s" if held else "open after 30 s")
    results["slow_loris_closed_after_s"] = held
    still_open = connection_flood()
    print(f"connection flood: 2100 silent connections, the server holds {still_open} after 3 s")
    results["connection_flood_open"] = still_open
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
