"""Helpers to compare Trickles with the TCP Reno reference on the simulator.

* :func:`dumbbell`: several bulk flows (Trickles or Reno) share one drop-tail bottleneck; returns
  each flow's goodput, which is what TCP-friendliness is judged on.
* :class:`JitterLink`: a link that adds a random, order-preserving delay to every packet. A
  simulator without any randomness locks competing flows into fixed phases at a drop-tail queue, and
  which flow loses then depends on sub-millisecond timing coincidences rather than on congestion
  control (Floyd and Jacobson, "On traffic phase effects in packet-switched gateways", 1992). Their
  remedy, used here, is a random delay of up to one bottleneck service time on the reverse path.
* :class:`ScriptedLossLink`: a link that drops chosen packets by their send index, so a Trickles
  flow and a Reno flow can be given exactly the same loss pattern.
* :class:`InflightProbe`: watches a Trickles server and records, for every request it processes,
  the packets in flight (highest packet number sent so far minus the acknowledged packet number).
  That is the Trickles counterpart of Reno's congestion window: the server keeps no window, but
  after the ACK of ``k`` the packets ``k+1 .. k+W(k)`` are out.
* :func:`per_rtt`: samples a ``[(time, window)]`` trace once per round-trip time.
* :func:`run_trickles` / :func:`run_reno`: one transfer of either kind over the same scripted path.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from trickles import wire
from trickles.congestion import ProtocolConfig
from trickles.continuation import Continuation, parse_unverified
from trickles.errors import TricklesError
from trickles.sim.network import Link, Sim, TricklesClientHost, TricklesServerHost, make_server
from trickles.sim.reno import RenoFlow


@dataclass
class ScriptedLossLink(Link):
    """A :class:`Link` that also drops every packet whose 0-based send index is in ``drop``, and
    every packet offered during the ``outage`` interval ``[start, end)`` (seconds).

    Indices count every packet offered to the link, dropped or not. On a server-to-client link both
    a Trickles flow and a :class:`RenoFlow` offer exactly one control packet (the SYN-ACK) first, so
    index ``i >= 1`` is the ``i``-th data packet of either, as long as nothing is retransmitted
    before it.
    """

    drop: frozenset[int] = frozenset()
    outage: tuple[float, float] | None = None
    offered: int = 0
    dropped: list[int] = field(default_factory=list)

    def send(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        i = self.offered
        self.offered += 1
        out = self.outage
        if i in self.drop or (out is not None and out[0] <= self.sim.now < out[1]):
            self.stats.sent += 1
            self.stats.lost_random += 1
            self.dropped.append(i)
            return
        super().send(data, deliver)


@dataclass
class JitterLink(Link):
    """A :class:`Link` that delays each delivery by a further uniform ``[0, jitter)`` s, in FIFO order.

    Unlike the base link's ``reorder`` option this never lets a packet overtake an earlier one (a
    real path's queues do not reorder either), so it adds timing noise without adding reordering.
    """

    jitter: float = 0.0
    _release: float = 0.0

    def send(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        if self.jitter > 0:
            super().send(data, partial(self._jittered, deliver))
        else:
            super().send(data, deliver)

    def _jittered(self, deliver: Callable[[bytes], None], data: bytes) -> None:
        t = max(self.sim.now + self.sim.rng.random() * self.jitter, self._release)
        self._release = t
        self.sim.at(t, deliver, data)


class InflightSample(NamedTuple):
    t: float
    acked: int  # the packet number the request acknowledges
    inflight: int  # highest packet number sent so far minus ``acked``
    cont: Continuation  # the transport continuation the request carried
    rto: bool  # a retransmit-timeout (slow start) request


class InflightProbe:
    """Record Trickles' window as the server sees it, request by request (installs an observer).

    For a normal request ``acked`` is the continuation's packet number; for a timeout request it
    is the right edge of the run it proves (slow start restarts after it). Requests that produce
    nothing (dropped or terminated) are not samples: the server did not act on them. The highest
    packet number is tracked per connection and nonce epoch, so one probe can watch several clients.
    """

    def __init__(self, sim: Sim, host: TricklesServerHost) -> None:
        self.sim = sim
        self.samples: list[InflightSample] = []
        self._max_seq: dict[tuple[int, int], int] = {}
        host.observer = self._observe

    def _observe(self, data: bytes, out: list[bytes]) -> None:
        try:
            req = wire.decode_request_untrusted(data)
        except TricklesError:
            return
        if req.type not in (wire.ReqType.REQUEST, wire.ReqType.RTO) or not out:
            return
        c = parse_unverified(bytes(req.cont))
        # A timeout starts a new nonce epoch that re-uses packet numbers from right + 1 on, so the
        # highest packet number is tracked per epoch (the epoch the new packets carry).
        epoch, new = c.epoch, 0
        for d in out:
            r = wire.decode_response_untrusted(d)
            if r.type == wire.RespType.DATA:
                epoch = r.epoch
                new = max(new, r.seq)
        key = (c.conn_id, epoch)
        top = max(self._max_seq.get(key, 0), new)
        self._max_seq[key] = top
        rto = req.type == wire.ReqType.RTO
        acked = c.seq
        if rto:
            acked = req.proof[-1][1] if req.proof else c.base - 1
        self.samples.append(InflightSample(self.sim.now, acked, top - acked, c, rto))

    def trace(self) -> list[tuple[float, int]]:
        """``[(time, packets in flight)]``, one entry per processed request."""
        return [(s.t, s.inflight) for s in self.samples]

    def pieces(self) -> list[Continuation]:
        """The first continuation seen of each loss-free piece, in order: one per window reset."""
        seen: set[tuple[int, int, int]] = set()
        out = []
        for s in self.samples:
            key = (s.cont.conn_id, s.cont.epoch, s.cont.base)
            if key not in seen:
                seen.add(key)
                out.append(s.cont)
        return out


def per_rtt(trace: Sequence[tuple[float, int]], t0: float, t1: float, rtt: float) -> list[int]:
    """The value of a step trace ``[(time, value)]`` (sorted) at ``t0, t0 + rtt, ...`` up to ``t1``."""
    times = [t for t, _ in trace]
    out = []
    i = 0
    while (t := t0 + i * rtt) <= t1:
        j = bisect_right(times, t) - 1
        out.append(trace[j][1] if j >= 0 else 0)
        i += 1
    return out


FULL_PACKET = wire.MAX_DATAGRAM + Link.overhead
"""Bytes a full data packet occupies on a link (datagram plus IP/UDP header)."""


def default_queue(bandwidth: float, delay: float) -> int:
    """One bandwidth-delay product in full packets (at least 10): the classic drop-tail buffer."""
    return max(10, round(bandwidth * 2 * delay / FULL_PACKET))


def client_addr(i: int) -> bytes:
    """A distinct 6-byte (IPv4 + port) client address for flow ``i``."""
    return bytes((10, 0, (i >> 8) & 0xFF, i & 0xFF)) + (5000 + i).to_bytes(2, "big")


def dumbbell(
    seed: int,
    flows: Sequence[str],
    *,
    bandwidth: float = 1.25e6,
    delay: float = 0.02,
    queue: int | None = None,
    duration: float = 60.0,
    warmup: float = 10.0,
    jitter: float | None = None,
) -> list[float]:
    """Goodput (bytes/s to the application over ``[warmup, duration)``) of each bulk flow.

    ``flows`` names each flow ``"trickles"`` or ``"reno"``. All share one drop-tail bottleneck from
    the servers to the clients (``bandwidth`` bytes/s, one-way ``delay``, ``queue`` packets) and one
    uncongested reverse link with the same delay. Starts are staggered by up to 5 ms (seeded), so
    that which flow fills the queue first is not fixed by list order. The reverse link adds FIFO
    ``jitter`` (default: one bottleneck service time of a full packet; 0 turns it off) against
    phase effects, see :class:`JitterLink`.
    """
    sim = Sim(seed)
    if queue is None:
        queue = default_queue(bandwidth, delay)
    if jitter is None:
        jitter = FULL_PACKET / bandwidth
    down = Link(sim, bandwidth, delay, queue)
    up = JitterLink(sim, bandwidth, delay, 1_000_000, jitter=jitter)
    host: TricklesServerHost | None = None
    if "trickles" in flows:
        # Zero bytes are enough (nobody checks content) and bytes(n) costs no memory until read.
        size = int(bandwidth * duration * 2)
        host = TricklesServerHost(sim, make_server({b"obj": bytes(size)}))
    logs: list[list[tuple[float, int]]] = []
    for i, kind in enumerate(flows):
        start = sim.rng.uniform(0.0, 0.005)
        if kind == "trickles":
            assert host is not None
            addr = client_addr(i)
            client = TricklesClientHost(sim, addr, up, host.receive, b"obj", start=start)
            host.attach(addr, down, client.receive)
            logs.append(client.delivered)
        elif kind == "reno":
            logs.append(RenoFlow(sim, down, up, None, start=start).delivered_log)
        else:
            raise ValueError(f"unknown flow kind {kind!r}")
    sim.run(duration)
    span = duration - warmup
    return [sum(n for t, n in log if warmup <= t < duration) / span for log in logs]


@dataclass
class TricklesRun:
    """One Trickles transfer with its server-side window trace."""

    sim: Sim
    client: TricklesClientHost
    probe: InflightProbe
    down: ScriptedLossLink


@dataclass
class RenoRun:
    """One Reno transfer (with its cwnd log)."""

    sim: Sim
    flow: RenoFlow
    down: ScriptedLossLink


def _links(
    sim: Sim,
    bandwidth: float,
    delay: float,
    queue: int,
    drop: frozenset[int],
    outage: tuple[float, float] | None,
) -> tuple[ScriptedLossLink, Link]:
    down = ScriptedLossLink(sim, bandwidth, delay, queue, drop=drop, outage=outage)
    return down, Link(sim, bandwidth, delay, queue)


def run_trickles(
    size: int,
    *,
    drop: frozenset[int] = frozenset(),
    outage: tuple[float, float] | None = None,
    bandwidth: float = 12.5e6,
    delay: float = 0.02,
    queue: int = 1000,
    config: ProtocolConfig | None = None,
    seed: int = 1,
    until: float = 600.0,
) -> TricklesRun:
    """One client fetching ``size`` bytes over a path that loses what :class:`ScriptedLossLink` says."""
    sim = Sim(seed)
    down, up = _links(sim, bandwidth, delay, queue, drop, outage)
    host = TricklesServerHost(sim, make_server({b"obj": bytes(size)}, config))
    probe = InflightProbe(sim, host)
    addr = client_addr(0)
    client = TricklesClientHost(sim, addr, up, host.receive, b"obj", config)
    host.attach(addr, down, client.receive)
    sim.run(until, stop=lambda: client.finished)
    return TricklesRun(sim, client, probe, down)


def run_reno(
    size: int,
    *,
    drop: frozenset[int] = frozenset(),
    outage: tuple[float, float] | None = None,
    bandwidth: float = 12.5e6,
    delay: float = 0.02,
    queue: int = 1000,
    ack_div: int = 2,
    seed: int = 1,
    until: float = 600.0,
) -> RenoRun:
    """The same transfer over TCP Reno, on an identical path with the identical drop pattern."""
    sim = Sim(seed)
    down, up = _links(sim, bandwidth, delay, queue, drop, outage)
    flow = RenoFlow(sim, down, up, size, ack_div=ack_div, record_cwnd=True)
    sim.run(until, stop=lambda: flow.finished)
    return RenoRun(sim, flow, down)


__all__ = [
    "FULL_PACKET",
    "InflightProbe",
    "InflightSample",
    "JitterLink",
    "RenoRun",
    "ScriptedLossLink",
    "TricklesRun",
    "client_addr",
    "default_queue",
    "dumbbell",
    "per_rtt",
    "run_reno",
    "run_trickles",
]
