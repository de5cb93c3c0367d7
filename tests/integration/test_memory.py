"""The server keeps no per-connection state: its memory stays flat as open connections pile up.

Every client here is mid-transfer (it has the response head and part of a 1 MB body and holds its
continuations, but has paused), each on its own UDP socket, all in this one trio process.

The server runs with ``--no-cache``: the soft-state continuation cache (paper section 5.1) holds the
continuations clients have not used yet, so it grows with the clients in flight until its bound
(65,536 entries, ~10 MiB) and would hide a small per-connection leak below that. Without it, what is
left is bounded by construction (replay filter, address and plan caches), and a server that kept
even a few kB per connection fails the bound below.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import trio

from trickles.client.endpoint import Endpoint

from .conftest import HOST, Site, running_server

COUNTS = (10, 300, 600)
PART = 4 * 1024  # body bytes each client takes before pausing (the body is 1 MiB)
PARALLEL_OPENS = 50  # SYNs in flight at once (the server's socket buffer is finite)
PER_CONNECTION = 2560
"""Allowed RSS growth per added connection, bytes. Measured here: 1.4 kB pure, 1.75 kB compiled
(replay-filter entries for the requests made, the bounded address and plan caches filling, allocator
noise; 0.9 kB on an earlier machine). With 2 kB of state kept per connection (a TCB with its buffers
is several times that) the server measured 3.75-3.85 kB and fails."""
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
    with running_server(site, key_file, tmp_path / "server.log", "--no-cache") as srv:  # see above
        clients: list[Endpoint] = []
        rss: dict[int, int] = {}
        limiter = trio.CapacityLimiter(PARALLEL_OPENS)
        try:
            with trio.fail_after(60):
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
                    await trio.sleep(0.3)  # let the server drain what is in flight
                    rss[n] = rss_bytes(srv.pid)
                    print(f"\n{n:5d} open connections: server RSS {rss[n] / 2**20:.1f} MiB", end="")
                elapsed = trio.current_time() - t0
        finally:
            for ep in clients:
                ep.close()
    first, last = COUNTS[0], COUNTS[-1]
    growth = rss[last] - rss[first]
    each = growth / (last - first)
    print(
        f"\ngrowth {first} -> {last}: {growth / 2**20:.2f} MiB, {each:.0f} B per connection ({elapsed:.1f} s)"
    )
    assert growth < PER_CONNECTION * (last - first), (
        f"server RSS grew {growth / 2**20:.1f} MiB from {first} to {last} connections ({each:.0f} B each)"
    )
    if os.environ.get("TRICKLES_WRITE_RESULTS"):  # `TRICKLES_WRITE_RESULTS=1 pytest ... -s` records them
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(
                {
                    "description": "trickles serve --no-cache RSS (VmRSS) with N concurrent open "
                    "mid-transfer connections",
                    "rss_bytes": {str(n): v for n, v in rss.items()},
                    "growth_bytes": growth,
                    "partial_body_bytes_per_client": PART,
                },
                indent=2,
            )
            + "\n"
        )
