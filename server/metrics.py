"""Prometheus metrics for a Trickles worker, read from the engine's counters at scrape time.

Nothing is updated per packet for metrics' sake: the engine and the UDP loop keep plain integer
counters, and this collector turns them into ``trickles_*`` metric families when scraped.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trickles import build_info
from trickles.apps.httpapp import StaticHttpApp
from trickles.engine import ServerEngine
from trickles.errors import DropReason

from .udp import UdpStats


class TricklesCollector(Collector):
    def __init__(self, engine: ServerEngine, app: StaticHttpApp, udp: UdpStats, worker: int) -> None:
        self.engine, self.app, self.udp, self.worker = engine, app, udp, str(worker)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        e, u, w = self.engine.stats, self.udp, self.worker

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["worker"])
            c.add_metric([w], value)
            return c

        yield counter("trickles_packets_received", "Datagrams received", e.received)
        yield counter("trickles_packets_sent", "Datagrams sent", e.sent)
        yield counter("trickles_sent_bytes", "Bytes of datagrams sent", e.bytes_sent)
        yield counter(
            "trickles_continuations_sealed", "Transport continuations sealed", e.continuations_sealed
        )
        yield counter(
            "trickles_retransmitted_packets", "Packets retransmitted by fast recovery", e.retransmits
        )
        yield counter("trickles_terminated_trickles", "Requests whose trickle was terminated", e.terminated)
        yield counter("trickles_cache_hits", "Soft-state continuation cache hits", self.engine.cache_hits)
        yield counter(
            "trickles_cache_misses", "Soft-state continuation cache misses", self.engine.cache_misses
        )
        yield counter("trickles_http_requests", "HTTP requests planned", self.app.requests)
        yield counter("trickles_send_blocked", "Datagrams lost to a full send buffer", u.send_would_block)
        yield counter("trickles_busy_seconds", "Seconds spent processing datagram batches", u.busy_seconds)
        drops = CounterMetricFamily(
            "trickles_packets_dropped", "Datagrams dropped", labels=["worker", "reason"]
        )
        for reason in DropReason:
            drops.add_metric([w, reason.value], e.dropped.get(reason, 0))
        yield drops
        g = GaugeMetricFamily(
            "trickles_replay_filter_entries", "Entries in the replay filter", labels=["worker"]
        )
        g.add_metric([w], len(self.engine.replay))
        yield g
        rss = GaugeMetricFamily("trickles_max_resident_bytes", "Peak resident memory", labels=["worker"])
        rss.add_metric([w], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        yield rss
        info = build_info()
        b = GaugeMetricFamily(
            "trickles_build_info", "Always 1; the labels name the version and build", labels=["worker", *info]
        )
        b.add_metric([w, *info.values()], 1)
        yield b


def start_metrics(
    addr: tuple[str, int], engine: ServerEngine, app: StaticHttpApp, udp: UdpStats, worker: int
) -> None:
    """Serve /metrics from a daemon thread (prometheus_client's WSGI server)."""
    registry = CollectorRegistry()
    registry.register(TricklesCollector(engine, app, udp, worker))
    host, port = addr
    start_http_server(port + worker, addr=host, registry=registry)
