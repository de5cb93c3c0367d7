"""The metrics endpoint in process: a real UDP loop fed hostile datagrams from several sockets, scraped
over HTTP; ``/healthz`` follows the loop's heartbeat; names and labels follow Prometheus rules."""

from __future__ import annotations

import functools
import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.engine import ServerEngine
from trickles.errors import DropReason
from trickles.keys import KeyRing, ServerKey
from trickles.server.metrics import Health, build_flavour, heartbeat, serve_metrics, server_collectors
from trickles.server.udp import UdpStats, open_udp_socket, serve_udp

HOST = "127.0.0.1"
# Labels allowed at all, and how many values each may take: nothing per client or connection.
BOUNDED_LABELS = {
    "worker": 1,
    "reason": len(DropReason) + 2,
    "type": 6,
    "action": 6,
    "le": 12,
    "component": 1,
    "version": 2,  # ours and python_info's
    "build": 1,
    "key_id": 1,
    "implementation": 1,
    "major": 1,
    "minor": 1,
    "patchlevel": 1,
}


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= set(ls))


async def test_scrape_counts_hostile_datagrams_and_healthz_follows_the_loop(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    ring = KeyRing(ServerKey(7, bytes(32)))
    site = StaticSite(str(tmp_path))
    app = StaticHttpApp(site, ring)
    engine = ServerEngine(ring, app)
    stats = UdpStats()
    sock = open_udp_socket(HOST, 0)
    health = Health("serve[0]", max_age_s=0.5)
    httpd = serve_metrics((HOST, 0), server_collectors(engine, app, site, stats, 0), health)
    mport = httpd.server_address[1]
    try:
        status, body = await trio.to_thread.run_sync(get, mport, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "stalled"  # no beat yet
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(functools.partial(serve_udp, engine, sock, stats=stats))
            nursery.start_soon(heartbeat, health, 0.05)
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
            sizes = [1, 17, 300]
            for s in senders:
                for n in sizes:
                    s.sendto(b"\x09" * n, addr)
            with trio.fail_after(5):
                while stats.datagrams_in < len(senders) * len(sizes):
                    await trio.sleep(0.01)
            status, body = await trio.to_thread.run_sync(get, mport, "/healthz")
            assert status == 200, body
            assert json.loads(body) | {"loop_age_seconds": 0} == {
                "status": "ok",
                "component": "serve[0]",
                "loop_age_seconds": 0,
                "version": "0.1.0",
            }
            status, raw = await trio.to_thread.run_sync(get, mport, "/metrics")
            text = raw.decode()
            nursery.cancel_scope.cancel()
            for s in senders:
                s.close()
        n = len(senders) * len(sizes)
        assert value(text, "trickles_packets_received_total") == n
        assert value(text, "trickles_received_bytes_total") == len(senders) * sum(sizes)
        assert value(text, "trickles_packets_sent_total") == 0
        assert value(text, "trickles_requests_total", type="invalid") == n
        dropped = value(text, "trickles_packets_dropped_total")
        assert dropped == n and value(text, "trickles_packets_dropped_total", reason="malformed") > 0
        assert value(text, "trickles_handle_seconds_count") == n
        assert value(text, "trickles_handle_seconds_bucket", le="+Inf") == n
        assert round(value(text, "trickles_active_clients")) == len(senders)
        assert value(text, "trickles_build_info", key_id="7", build=build_flavour(), component="serve") == 1
        assert value(text, "process_resident_memory_bytes") > 1 << 20
        assert value(text, "process_cpu_seconds_total") > 0
        assert value(text, "trickles_replay_filter_capacity") == 2 * engine.replay.capacity
        check_names_and_labels(text)
        await trio.sleep(0.7)  # the loop is gone: no more beats
        status, body = await trio.to_thread.run_sync(get, mport, "/healthz")
        assert status == 503 and json.loads(body)["loop_age_seconds"] > 0.5
    finally:
        httpd.shutdown()
        httpd.server_close()
        sock.close()


def check_names_and_labels(text: str) -> None:
    values: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        assert re.fullmatch(r"(trickles|process|python)_[a-z_]+", fam.name), fam.name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        for s in fam.samples:
            for k, v in s.labels.items():
                values.setdefault(k, set()).add(v)
    for label, vals in values.items():
        assert label in BOUNDED_LABELS, f"unexpected label {label}"
        assert len(vals) <= BOUNDED_LABELS[label], (label, vals)


def test_health_goes_stale_without_beats() -> None:
    h = Health("x", max_age_s=10)
    assert h.status()[0] is False
    h.beat()
    ok, body = h.status()
    assert ok and body["status"] == "ok"
    h.last_beat = (h.last_beat or 0) - 11
    assert h.status() == (False, {**h.status()[1], "status": "stalled"})
