"""``--workers 2 --spread-packets``: two processes share the UDP port (SO_REUSEPORT) and the key, and
the kernel hands each datagram to either of them; parallel clients all get byte-identical files, and
both workers serve packets of one and the same connection (which only works if they share the key)."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from trickles.client.trickles_transport import TricklesTransport

from .conftest import HOST, TCURL, Site, file_sha256, free_port, running_server, tail, wait_tcp

IN_PROCESS = ["1m.bin"] * 8 + ["mss+1.bin", "mss-1.bin", "empty.bin", "index.html", "20m.bin"] * 2
TCURL_FILES = ["1m.bin", "sub/nested.txt"]


async def fetch(port: int, name: str, results: dict[int, tuple[str, str, int]], i: int) -> None:
    conn = await TricklesTransport(probe_timeout=5).connect(HOST, port, timeout=5)
    try:
        resp = await conn.request("GET", f"/{name}", [])
        h = hashlib.sha256()
        async for chunk in resp.body:
            h.update(chunk)
        results[i] = (name, h.hexdigest(), resp.status)
    finally:
        await conn.aclose()


async def tcurl(url: str, out: Path) -> int:
    r = await trio.run_process([TCURL, "-s", "-S", "-o", str(out), url], check=False)
    return r.returncode


def packets_received(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "trickles_packets_received_total":
                return s.value
    raise AssertionError(f"no trickles_packets_received_total in:\n{text}")


async def test_two_workers_parallel_downloads(site: Site, key_file: Path, tmp_path: Path) -> None:
    mport = free_port(span=2)  # worker w serves its metrics on mport + w
    extra = ("--workers", "2", "--spread-packets", "--metrics", f"{HOST}:{mport}")
    with running_server(site, key_file, tmp_path / "server.log", *extra) as srv:
        assert srv.proc is not None
        for w in range(2):  # both workers up (each opens its metrics port after binding UDP)
            wait_tcp(mport + w, srv.proc, srv.log)
        # One connection alone: both workers serve its packets.
        before = [packets_received(mport + w) for w in range(2)]
        one: dict[int, tuple[str, str, int]] = {}
        with trio.fail_after(60):
            await fetch(srv.port, "1m.bin", one, 0)
        assert one[0] == ("1m.bin", site.digests["1m.bin"], 200)
        delta = [packets_received(mport + w) - b for w, b in enumerate(before)]
        print(f"\npackets of one connection per worker: {delta}")
        assert all(n > sum(delta) // 5 for n in delta), f"one connection was not spread: {delta}"
        results: dict[int, tuple[str, str, int]] = {}
        codes: dict[str, int] = {}

        async def run_tcurl(name: str) -> None:
            codes[name] = await tcurl(srv.url(name), tmp_path / name.replace("/", "_"))

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for i, name in enumerate(IN_PROCESS):
                    nursery.start_soon(fetch, srv.port, name, results, i)
                for name in TCURL_FILES:
                    nursery.start_soon(run_tcurl, name)
        assert sorted(results) == list(range(len(IN_PROCESS)))
        for name, digest, status in results.values():
            assert (name, status, digest) == (name, 200, site.digests[name])
        assert codes == dict.fromkeys(TCURL_FILES, 0), tail(srv.log)
        for name in TCURL_FILES:
            assert file_sha256(tmp_path / name.replace("/", "_")) == site.digests[name]
        per_worker = [packets_received(mport + w) for w in range(2)]
        print(f"\npackets received per worker: {per_worker}")
        assert all(n > 0 for n in per_worker), f"a worker served nothing: {per_worker}"
        for w in range(2):  # one metrics port per worker, each with its own /healthz
            with urllib.request.urlopen(f"http://{HOST}:{mport + w}/healthz", timeout=5) as resp:
                assert resp.status == 200 and json.load(resp)["component"] == f"serve[{w}]"
