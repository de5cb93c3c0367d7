"""Prometheus metrics and ``/healthz``, read from plain counters at scrape time.

Nothing is updated per packet for metrics' sake: the engine (:class:`EngineStats`) and the UDP loop
(:class:`UdpStats`) keep plain integers, and the collectors here turn them into ``trickles_*``
families when Prometheus scrapes. Counters end in ``_total``, sizes are ``_bytes``, times
``_seconds``; labels come from bounded sets only (worker index, drop reason, request type, trickle
action, build facts): nothing per connection or per client.

One HTTP server per process (a daemon thread) serves ``/metrics`` and ``/healthz``. With
``--workers N`` each worker is its own process with its own counters and serves on PORT + index:
Prometheus scrapes every port (see ``deploy/prometheus/prometheus.yml``). prometheus-client's
multiprocess mode does not fit: it aggregates only its own mmap'd metric objects, not custom
collectors reading live counters, and it cannot report each worker's memory.

Another component (the gateway, a sprayer) exposes its own figures the same way: a collector class
whose ``collect`` reads its counters, passed to :func:`serve_metrics` with
:func:`standard_collectors`, and :func:`heartbeat` started in its trio nursery.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import trio
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

import trickles
from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.apps.watermark.cache import ByteLRU
from trickles.apps.watermark.site import WatermarkSite
from trickles.engine import ServerEngine
from trickles.errors import DropReason
from trickles.wire import ReqType

from .udp import HANDLE_BUCKETS, UdpStats

if TYPE_CHECKING:
    from .spray import SprayStats

REQUEST_TYPES = {0: "invalid", **{int(t): t.name.lower() for t in ReqType}}


# -- health -------------------------------------------------------------------------------------------


class Health:
    """Liveness of a trio loop as the metrics thread sees it: the loop beats, ``/healthz`` reads."""

    def __init__(self, component: str, max_age_s: float = 1.5) -> None:
        self.component, self.max_age_s = component, max_age_s
        self.last_beat: float | None = None

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def status(self) -> tuple[bool, dict[str, object]]:
        last = self.last_beat
        age = None if last is None else round(time.monotonic() - last, 3)
        ok = age is not None and age < self.max_age_s
        body: dict[str, object] = {"status": "ok" if ok else "stalled", "component": self.component}
        body.update(loop_age_seconds=age, version=trickles.__version__)
        return ok, body


async def heartbeat(health: Health, period_s: float = 0.25) -> None:
    """Beat every ``period_s`` from the trio loop that also runs the UDP loop: if a batch hangs or
    the loop is starved, the beats stop and ``/healthz`` turns 503."""
    while True:
        health.beat()
        await trio.sleep(period_s)


# -- collectors ---------------------------------------------------------------------------------------


def build_flavour() -> str:
    """``compiled`` when the core runs as mypyc extension modules, else ``pure``."""
    return trickles.build_info()["build"]


class BuildInfoCollector(Collector):
    """``trickles_build_info`` (always 1): version, compiled or pure, and the id of the key in use
    (never the key)."""

    def __init__(self, component: str, key_id: Callable[[], int | None] = lambda: None) -> None:
        self.component, self.key_id = component, key_id

    def collect(self) -> Iterator[Metric]:
        labels = ["component", "version", "build", "key_id"]
        g = GaugeMetricFamily("trickles_build_info", "Build and configuration facts", labels=labels)
        kid = self.key_id()
        g.add_metric(
            [self.component, trickles.__version__, build_flavour(), "" if kid is None else str(kid)], 1
        )
        yield g


def standard_collectors(component: str, key_id: Callable[[], int | None] = lambda: None) -> list[Collector]:
    """What every process exposes: process_* (current RSS, CPU seconds, fds), python_info, build."""
    return [
        ProcessCollector(registry=None),
        PlatformCollector(registry=None),
        BuildInfoCollector(component, key_id),
    ]


class ServerCollector(Collector):
    """The ``trickles serve`` worker's figures: UDP loop, engine, static app."""

    def __init__(
        self, engine: ServerEngine, app: StaticHttpApp, site: StaticSite, udp: UdpStats, worker: int
    ) -> None:
        self.engine, self.app, self.site, self.udp, self.worker = engine, app, site, udp, str(worker)

    def _family(self, cls: type[Any], name: str, doc: str, value: float) -> Metric:
        m = cls(name, doc, labels=["worker"])
        m.add_metric([self.worker], value)
        return m  # type: ignore[no-any-return]

    def _labelled(self, cls: type[Any], name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
        m = cls(name, doc, labels=["worker", label])
        for k, v in values.items():
            m.add_metric([self.worker, k], v)
        return m  # type: ignore[no-any-return]

    def collect(self) -> Iterator[Metric]:
        yield from self._udp()
        yield from self._engine()
        yield from self._app()
        yield from self._watermark()

    def _udp(self) -> Iterator[Metric]:
        u, c = self.udp, CounterMetricFamily
        yield self._family(c, "trickles_packets_received", "Datagrams received", u.datagrams_in)
        yield self._family(c, "trickles_packets_sent", "Datagrams handed to the kernel", u.datagrams_out)
        yield self._family(
            c, "trickles_send_calls", "System calls that sent datagrams (GSO: several per call)", u.send_calls
        )
        yield self._family(
            c,
            "trickles_receive_calls",
            "System calls that received datagrams (GRO: several per call)",
            u.receive_calls,
        )
        yield self._family(c, "trickles_received_bytes", "Bytes of datagrams received", u.bytes_in)
        yield self._family(c, "trickles_sent_bytes", "Bytes of datagrams sent", u.bytes_out)
        yield self._labelled(
            c,
            "trickles_send_failures",
            "Datagrams not sent (the client recovers them like losses)",
            "reason",
            {"would_block": u.send_would_block, "error": u.send_errors},
        )
        req = u.requests
        yield self._labelled(
            c,
            "trickles_requests",
            "Datagrams by request type (invalid: undecodable)",
            "type",
            {name: req[k] for k, name in REQUEST_TYPES.items()},
        )
        yield self._family(c, "trickles_busy_seconds", "Seconds spent on datagram batches", u.busy_seconds)
        yield self._histogram()
        yield self._family(
            GaugeMetricFamily,
            "trickles_active_clients",
            "Distinct client addresses seen in the last 30-60 s (HyperLogLog estimate, about 2 %)",
            u.clients.estimate(),
        )

    def _histogram(self) -> Metric:
        u = self.udp
        counts = list(u.handle_buckets)  # one snapshot: the loop thread keeps counting
        h = HistogramMetricFamily(
            "trickles_handle_seconds",
            "Processing time per datagram (receive, step, send), each batch's mean per datagram",
            labels=["worker"],
        )
        cum, buckets = 0, []
        for bound, n in zip((*map(str, HANDLE_BUCKETS), "+Inf"), counts, strict=True):
            cum += n
            buckets.append((bound, float(cum)))
        h.add_metric([self.worker], buckets, u.handle_seconds)
        return h

    def _engine(self) -> Iterator[Metric]:
        e, s, c = self.engine, self.engine.stats, CounterMetricFamily
        yield self._family(c, "trickles_continuations_sealed", "Continuations sealed", s.continuations_sealed)
        yield self._labelled(
            c,
            "trickles_trickle_actions",
            "Trickle decisions: continue (one new packet), split (more: the window grew), recover (a "
            "new piece after a loss), timeout_restart (slow start after an RTO), terminate, "
            "retransmit (packets resent by fast recovery)",
            "action",
            {
                "continue": s.continued,
                "split": s.split,
                "recover": s.recoveries,
                "timeout_restart": s.timeout_restarts,
                "terminate": s.terminated,
                "retransmit": s.retransmits,
            },
        )
        dropped = s.dropped
        yield self._labelled(
            c,
            "trickles_packets_dropped",
            "Datagrams dropped, by reason",
            "reason",
            {r.value: dropped.get(r, 0) for r in DropReason},
        )
        yield self._family(c, "trickles_cache_hits", "Soft-state continuation cache hits", e.cache_hits)
        yield self._family(c, "trickles_cache_misses", "Soft-state continuation cache misses", e.cache_misses)
        g = GaugeMetricFamily
        yield self._family(g, "trickles_cache_entries", "Continuations in the soft-state cache", e.cache_len)
        yield self._family(g, "trickles_replay_filter_entries", "Entries in the replay filter", len(e.replay))
        yield self._family(
            g,
            "trickles_replay_filter_capacity",
            "Most entries the replay filter holds (two generations)",
            2 * e.replay.capacity,
        )

    def _app(self) -> Iterator[Metric]:
        fds, c, g = self.site.fds, CounterMetricFamily, GaugeMetricFamily
        yield self._family(c, "trickles_http_requests", "HTTP requests planned", self.app.requests)
        yield self._family(g, "trickles_static_open_files", "Files held open by the static app", len(fds))
        yield self._family(g, "trickles_static_open_files_capacity", "Open-file cache size", fds.capacity)

    def _watermark(self) -> Iterator[Metric]:
        """The watermarking site's work and its two app-wide caches (decoded sources, coded intervals)."""
        wm = getattr(self.site, "wm", None)
        if not isinstance(wm, WatermarkSite):
            return
        c, g = CounterMetricFamily, GaugeMetricFamily
        caches: dict[str, ByteLRU[Any]] = {"source": wm.sources, "span": wm.spans}
        yield self._family(c, "trickles_watermark_plans", "Watermarked responses planned", wm.planned)
        yield self._family(
            c, "trickles_watermark_regenerated_bytes", "Scan bytes coded again from checkpoints",
            wm.regenerated_bytes,
        )  # fmt: skip
        sizes = {k: float(v.bytes) for k, v in caches.items()}
        yield self._labelled(g, "trickles_watermark_cache_bytes", "Bytes held by the cache", "cache", sizes)
        for what in ("hits", "misses", "evictions"):
            values = {k: float(getattr(v, what)) for k, v in caches.items()}
            yield self._labelled(c, f"trickles_watermark_cache_{what}", f"Cache {what}", "cache", values)


class SprayCollector(Collector):
    """A ``trickles spray`` worker's figures: per replica (label ``backend``, the ``--backend``
    list: a bounded set) what went each way, whether it is in the rotation, and how fast it answers
    health checks."""

    def __init__(self, stats: SprayStats, backends: list[str], worker: int) -> None:
        self.stats, self.backends, self.worker = stats, backends, str(worker)

    def _per_backend(self, cls: type[Any], name: str, doc: str, **series: list[Any]) -> Metric:
        """One family; ``series`` maps a ``direction`` label value to per-backend values (or
        ``value`` for a family without that label)."""
        extra = [] if list(series) == ["value"] else ["direction"]
        m = cls(name, doc, labels=["worker", "backend", *extra])
        for label, values in series.items():
            for b, v in zip(self.backends, list(values), strict=True):
                m.add_metric([self.worker, b, *([label] if extra else [])], v)
        return m  # type: ignore[no-any-return]

    def collect(self) -> Iterator[Metric]:
        st, c, g = self.stats, CounterMetricFamily, GaugeMetricFamily
        yield self._per_backend(
            c,
            "trickles_spray_datagrams",
            "Datagrams relayed, per replica: to_replica (client requests), to_client (its replies)",
            to_replica=st.forwarded,
            to_client=st.replies,
        )
        yield self._per_backend(
            c,
            "trickles_spray_bytes",
            "Bytes of datagrams relayed, per replica (without PROXY headers)",
            to_replica=st.forwarded_bytes,
            to_client=st.reply_bytes,
        )
        up = [1 if h else 0 for h in st.healthy]
        yield self._per_backend(g, "trickles_spray_backend_up", "1: in the rotation", value=up)
        yield self._per_backend(
            g,
            "trickles_spray_health_check_last_seconds",
            "The replica's latest health-check round trip (NaN until it first answers)",
            value=st.probe_rtt,
        )
        yield self._health_summary()
        yield from self._worker_counters()

    def _health_summary(self) -> Metric:
        st = self.stats
        s = SummaryMetricFamily(
            "trickles_spray_health_check_seconds",
            "Health-check round trips answered in the same probe round",
            labels=["worker", "backend"],
        )
        for b, n, total in zip(self.backends, list(st.probe_answers), list(st.probe_rtt_sum), strict=True):
            s.add_metric([self.worker, b], n, total)
        return s

    def _worker_counters(self) -> Iterator[Metric]:
        st = self.stats
        for name, doc, value in (
            ("trickles_spray_received", "Datagrams received from clients", st.from_clients),
            ("trickles_spray_probes_sent", "Health-check probes sent", st.probes_sent),
            ("trickles_spray_busy_seconds", "Seconds spent relaying batches", st.busy_seconds),
        ):
            c = CounterMetricFamily(name, doc, labels=["worker"])
            c.add_metric([self.worker], value)
            yield c
        d = CounterMetricFamily(
            "trickles_spray_dropped",
            "Datagrams not relayed: bad_reply (unknown sender or header on the replica side), looped (a "
            "replica's address on the public side), send_error (the kernel refused it)",
            labels=["worker", "reason"],
        )
        drops = {"bad_reply": st.bad_replies, "looped": st.looped, "send_error": st.send_errors}
        for reason, n in drops.items():
            d.add_metric([self.worker, reason], n)
        yield d


# -- the HTTP server ----------------------------------------------------------------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def metrics_app(registry: CollectorRegistry, health: Health) -> WsgiApp:
    """``/healthz``: 200 and a small JSON body while the loop beats, 503 otherwise; the rest is
    prometheus-client's exposition (``/metrics``, content negotiation, gzip)."""
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, body = health.status()
            data = json.dumps(body).encode()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        return exposition(environ, start_response)  # type: ignore[no-any-return]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the server log


def serve_metrics(addr: tuple[str, int], collectors: Iterable[Collector], health: Health) -> WSGIServer:
    """Serve ``/metrics`` and ``/healthz`` on ``addr`` from a daemon thread; raises OSError if the
    address cannot be bound."""
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    host, port = addr
    cls = _ThreadingServer6 if ":" in host else _ThreadingServer
    httpd = make_server(host, port, metrics_app(registry, health), cls, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd


def server_collectors(
    engine: ServerEngine, app: StaticHttpApp, site: StaticSite, udp: UdpStats, worker: int
) -> list[Collector]:
    return [
        ServerCollector(engine, app, site, udp, worker),
        *standard_collectors("serve", lambda: engine.ring.current.key_id),
    ]
