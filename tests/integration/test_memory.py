"""The server keeps no per-connection state: its memory stays flat from 10 to 2,000 open connections.

Every client here is mid-transfer (it has the response head and part of a 1 MB body and holds its
continuations, but has paused), each on its own UDP socket, all in this one trio process.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import trio

from trickles.client.endpoint import Endpoint

from .conftest import HOST, Site, running_server

COUNTS = (10, 500, 2000)
PART = 12 * 1024  # body bytes each client takes before pausing (the body is 1 MiB)
PARALLEL_OPENS = 50  # SYNs in flight at once (the server's socket buffer is finite)
MAX_GROWTH = 20 << 20
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "memory.json"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def open_paused(port: int, clients: list[Endpoint], limiter: trio.CapacityLimiter) -> None:
    async with limiter:
        request = f"GET /1m.bin HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        ep = await Endpoint.open(HOST, port, first_request=request, probe_timeout=10)
        clients.append(ep)
        region = ep.conn.regions[0]
        await ep.run_until(lambda: len(region.ready) >= PART or region.complete or region.error is not None)
        assert region.error is None and not region.complete, "the client should be mid-transfer"


async def test_server_memory_flat_with_open_connections(site: Site, key_file: Path, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert max(hard, soft) > max(COUNTS) + 100, f"RLIMIT_NOFILE {hard} is too low for this test"
    with running_server(site, key_file, tmp_path / "server.log") as srv:
        clients: list[Endpoint] = []
        rss: dict[int, int] = {}
        limiter = trio.CapacityLimiter(PARALLEL_OPENS)
        try:
            with trio.fail_after(120):
                # Warm-up: one whole transfer, so lazily built server state exists before measuring.
                request = f"GET /1m.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
                warm = await Endpoint.open(HOST, srv.port, first_request=request)
                clients.append(warm)
                await warm.run_until(lambda: warm.conn.regions[0].complete)
                assert warm.conn.read(0).startswith(b"HTTP/1.1 200 ")
                t0 = trio.current_time()
                for n in COUNTS:
                    async with trio.open_nursery() as nursery:
                        for _ in range(n - (len(clients) - 1)):
                            nursery.start_soon(open_paused, srv.port, clients, limiter)
                    await trio.sleep(0.5)  # let the server drain what is in flight
                    rss[n] = rss_bytes(srv.pid)
                    print(f"\n{n:5d} open connections: server RSS {rss[n] / 2**20:.1f} MiB", end="")
                elapsed = trio.current_time() - t0
        finally:
            for ep in clients:
                ep.close()
    growth = rss[COUNTS[-1]] - rss[COUNTS[0]]
    print(f"\ngrowth 10 -> 2000: {growth / 2**20:.2f} MiB ({elapsed:.1f} s)")
    if not os.environ.get("TRICKLES_WRITE_RESULTS"):
        return  # `TRICKLES_WRITE_RESULTS=1 pytest tests/integration/test_memory.py -s` records them
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "description": "trickles serve RSS (VmRSS) with N concurrent open mid-transfer connections",
                "rss_bytes": {str(n): v for n, v in rss.items()},
                "growth_bytes": growth,
                "partial_body_bytes_per_client": PART,
            },
            indent=2,
        )
        + "\n"
    )
    # The server holds no per-connection state, only bounded soft state: the continuation cache
    # (entries for continuations clients hold but have not used yet, at most 65536), the replay
    # filter (one int per verified request within the horizon), the address cache (<= 4096) and
    # plan/file caches, plus allocator noise. Measured here: ~7 MiB from 10 to 2,000. Anything that
    # kept ~10 KB per connection (a TCB with buffers) would exceed the 20 MB bound.
    assert growth < MAX_GROWTH, f"server RSS grew {growth / 2**20:.1f} MiB from 10 to 2000 connections"
