"""A seeded discrete-event network simulator that runs the real core client and server.

Links have a bandwidth, a propagation delay, a drop-tail queue, random or bursty (Gilbert-Elliott)
loss, reordering and duplication. Everything is driven by one seeded ``random.Random``, so a run is
a pure function of its seed. The Trickles endpoints are the real :class:`ServerEngine` and
:class:`ClientConnection`; beside them, :mod:`trickles.sim.reno` provides a plain TCP Reno
sender/receiver on the same links as the reference.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trickles.congestion import ProtocolConfig
from trickles.connection import ClientConnection, State
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing
from trickles.sim.memapp import MemoryApp


class Sim:
    """The event loop: a heap of (time, tie-breaker, callback)."""

    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._q: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._n = 0
        self.events = 0

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._n += 1
        heapq.heappush(self._q, (t, self._n, fn, args))

    def run(self, until: float, stop: Callable[[], bool] | None = None, max_events: int = 50_000_000) -> None:
        q = self._q
        while q and self.events < max_events:
            t, _, fn, args = q[0]
            if t > until:
                break
            heapq.heappop(q)
            self.now = t
            self.events += 1
            fn(*args)
            if stop is not None and stop():
                break
        else:
            if not q:
                self.now = max(self.now, min(until, self.now))


@dataclass
class LinkStats:
    sent: int = 0
    delivered: int = 0
    lost_random: int = 0
    lost_queue: int = 0
    duplicated: int = 0
    reordered: int = 0
    bytes_delivered: int = 0


@dataclass
class Link:
    """One direction of a link.

    ``loss`` is the random loss probability; ``burst`` is (p_good_to_bad per packet, mean duration of
    the bad state in seconds, loss probability in the bad state): a Gilbert-Elliott channel whose bad
    periods last a (exponentially distributed) time, as congestion episodes do, rather than a number
    of packets (which would keep an idle, backed-off connection in the bad state indefinitely).
    ``reorder`` delays a packet by an extra ``reorder_delay`` with that
    probability; ``dup`` delivers a second copy.
    """

    sim: Sim
    bandwidth: float  # bytes per second
    delay: float  # seconds
    queue: int = 1000  # packets (drop-tail)
    loss: float = 0.0
    burst: tuple[float, float, float] | None = None
    reorder: float = 0.0
    reorder_delay: float = 0.0
    dup: float = 0.0
    overhead: int = 28  # IP + UDP header bytes counted on the wire
    stats: LinkStats = field(default_factory=LinkStats)
    _busy_until: float = 0.0
    _tx_done: deque[float] = field(default_factory=deque)
    _bad: bool = False
    _bad_until: float = 0.0

    def queued(self) -> int:
        now = self.sim.now
        q = self._tx_done
        while q and q[0] <= now:
            q.popleft()
        return len(q)

    def send(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        sim, rng = self.sim, self.sim.rng
        self.stats.sent += 1
        if self.burst is not None:
            gb, mean_bad, pbad = self.burst
            if self._bad and sim.now >= self._bad_until:
                self._bad = False
            if not self._bad and rng.random() < gb:
                self._bad = True
                self._bad_until = sim.now + rng.expovariate(1.0 / mean_bad)
            if self._bad and rng.random() < pbad:
                self.stats.lost_random += 1
                return
        if self.loss and rng.random() < self.loss:
            self.stats.lost_random += 1
            return
        if self.queued() >= self.queue:
            self.stats.lost_queue += 1
            return
        start = max(sim.now, self._busy_until)
        done = start + (len(data) + self.overhead) / self.bandwidth
        self._busy_until = done
        self._tx_done.append(done)
        arrive = done + self.delay
        if self.reorder and rng.random() < self.reorder:
            arrive += self.reorder_delay * rng.random()
            self.stats.reordered += 1
        sim.at(arrive, self._arrive, data, deliver)
        if self.dup and rng.random() < self.dup:
            self.stats.duplicated += 1
            sim.at(arrive + 0.0001 + self.delay * rng.random() * 0.1, self._arrive, data, deliver)

    def _arrive(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        self.stats.delivered += 1
        self.stats.bytes_delivered += len(data)
        deliver(data)


class TricklesServerHost:
    """A server engine on the simulated network (processing time is zero)."""

    def __init__(self, sim: Sim, engine: ServerEngine) -> None:
        self.sim = sim
        self.engine = engine
        self.routes: dict[bytes, Link] = {}
        self.routes_deliver: dict[bytes, Callable[[bytes], None]] = {}
        self.observer: Callable[[bytes, list[bytes]], None] | None = None

    def attach(self, addr: bytes, down: Link, deliver: Callable[[bytes], None]) -> None:
        self.routes[addr] = down
        self.routes_deliver[addr] = deliver

    def receive(self, addr: bytes, data: bytes) -> None:
        res = self.engine.step(data, addr, 1_000_000.0 + self.sim.now)
        if self.observer is not None:
            self.observer(data, res.datagrams)
        link, deliver = self.routes[addr], self.routes_deliver[addr]
        for d in res.datagrams:
            link.send(d, deliver)


class TricklesClientHost:
    """A client connection on the simulated network, fetching one object by name."""

    def __init__(
        self,
        sim: Sim,
        addr: bytes,
        up: Link,
        server: Callable[[bytes, bytes], None],
        name: bytes,
        config: ProtocolConfig | None = None,
        start: float = 0.0,
        record_cwnd: bool = False,
    ) -> None:
        self.sim = sim
        self.addr = addr
        self.up = up
        self.server = server
        self.conn = ClientConnection(config, client_nonce=sim.rng.getrandbits(64), record_cwnd=record_cwnd)
        self.name = name
        self.data = bytearray()
        self.rid = -1
        self.done_at: float | None = None
        self.started_at = start
        self.delivered: list[tuple[float, int]] = []
        self._timer_token = 0
        sim.at(start, self._start)

    def _start(self) -> None:
        self.rid = self.conn.connect(self.name, self.sim.now)
        self._flush()

    def receive(self, data: bytes) -> None:
        self.conn.receive_datagram(data, self.sim.now)
        got = self.conn.read(self.rid)
        if got:
            self.data += got
            self.delivered.append((self.sim.now, len(got)))
        r = self.conn.regions[self.rid]
        if self.done_at is None and (r.complete or r.error is not None):
            self.done_at = self.sim.now
        self._flush()

    def _flush(self) -> None:
        now = self.sim.now
        for d in self.conn.datagrams_to_send(now):
            self.up.send(d, self._to_server)
        t = self.conn.get_timer()
        if t is not None:
            self._timer_token += 1
            self.sim.at(t, self._fire, self._timer_token)

    def _to_server(self, data: bytes) -> None:
        self.server(self.addr, data)

    def _fire(self, token: int) -> None:
        if token != self._timer_token:
            return
        self.conn.handle_timer(self.sim.now)
        self._flush()

    @property
    def finished(self) -> bool:
        return self.done_at is not None or self.conn.state is State.FAILED


def make_server(
    objects: dict[bytes, bytes],
    config: ProtocolConfig | None = None,
    delta: bool = True,
    master: bytes = b"simulation master secret 0123456",
    cache_size: int = 65536,
) -> ServerEngine:
    cfg = ServerConfig(protocol=config or ProtocolConfig(), delta=delta, cache_size=cache_size)
    return ServerEngine(KeyRing.from_master(master), MemoryApp(objects), cfg)


@dataclass
class TransferResult:
    data: bytes
    done_at: float | None
    client: TricklesClientHost
    server: ServerEngine
    up: Link
    down: Link


def transfer(
    size: int,
    seed: int,
    *,
    bandwidth: float = 10e6,
    delay: float = 0.010,
    queue: int = 200,
    loss: float = 0.0,
    up_loss: float | None = None,
    burst: tuple[float, float, float] | None = None,
    reorder: float = 0.0,
    dup: float = 0.0,
    config: ProtocolConfig | None = None,
    delta: bool = True,
    until: float = 600.0,
    payload: bytes | None = None,
    record_cwnd: bool = False,
    cache_size: int = 65536,
) -> TransferResult:
    """One client fetching a ``size``-byte object from one server over a lossy path."""
    sim = Sim(seed)
    obj = payload if payload is not None else random.Random(seed ^ 0x5EED).randbytes(size)
    engine = make_server({b"obj": obj}, config, delta, cache_size=cache_size)
    server = TricklesServerHost(sim, engine)
    kw: dict[str, Any] = dict(reorder=reorder, reorder_delay=delay, dup=dup)
    down = Link(sim, bandwidth, delay, queue, loss=loss, burst=burst, **kw)
    up = Link(sim, bandwidth, delay, queue, loss=loss if up_loss is None else up_loss, burst=burst, **kw)
    addr = b"\x0a\x00\x00\x02\x13\x88"
    client = TricklesClientHost(sim, addr, up, server.receive, b"obj", config, record_cwnd=record_cwnd)
    server.attach(addr, down, client.receive)
    sim.run(until, stop=lambda: client.finished)
    return TransferResult(bytes(client.data), client.done_at, client, engine, up, down)
