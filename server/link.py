"""``trickles link``: a user-space lossy link, a UDP relay with seeded impairments.

Tests and benchmarks put it between a client and a server to get loss, reordering, duplication,
delay (fixed plus jitter) and a rate limit on real sockets, reproducibly::

    async with lossy_link((host, port), loss=0.05, reorder=0.05, duplicate=0.01, seed=1) as link:
        ...  # point the client at link.address instead of (host, port)

Each client address gets its own upstream socket, so the server sees one stable address per client
and its replies find their way back. That mapping is bounded (least recently active clients are
evicted), and so is every queue: this is a test tool, but it still listens on a socket.

Every datagram goes through the same stages per direction (client to server "up", back "down"):
loss, duplication, the bottleneck (a token bucket of ``rate`` bytes/s in front of a FIFO of at most
``queue`` datagrams that drops the tail when full), then the propagation delay (``delay`` plus a
uniform ``[0, jitter)``; a datagram picked for reordering waits ``reorder_delay`` more, so those
behind it overtake it). :class:`Pipe` is that pipeline without sockets or clocks; :class:`Link`
drives two of them with trio.

Determinism: each datagram of a direction consumes the same number of draws from that direction's
``random.Random`` whatever happens to it, so for a given seed the n-th datagram of a direction
always meets the same fate, whatever the timing.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import random
import signal
import socket
import sys
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import trio

log = logging.getLogger("trickles.link")

MAX_DATAGRAM = 65535
MAX_DELAYED = 65536
"""Datagrams one direction holds in its delay line at most (beyond: counted as queue drops)."""
DRAWS = 6  # random draws per datagram: loss, duplicate, then (reorder, jitter) for each copy


@dataclass(frozen=True)
class Impairment:
    """What one direction of the link does to the datagrams crossing it."""

    loss: float = 0.0  # probability a datagram is dropped
    reorder: float = 0.0  # probability a datagram is held back ``reorder_delay`` longer
    duplicate: float = 0.0  # probability a datagram is delivered twice
    delay: float = 0.0  # fixed one-way delay, seconds
    jitter: float = 0.0  # extra uniform delay in [0, jitter), seconds (may reorder too)
    rate: float | None = None  # bottleneck bytes/s; None: unlimited
    queue: int = 100  # datagrams waiting for the bottleneck at most; the tail drops beyond
    burst: int = 3000  # token bucket depth, bytes
    reorder_delay: float = 0.002  # how much longer a reordered datagram waits, seconds

    def check(self) -> None:
        """ValueError naming the first out-of-range parameter."""
        for name in ("loss", "reorder", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        for name in ("delay", "jitter", "reorder_delay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 60.0):
                raise ValueError(f"{name} must be between 0 and 60 seconds")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a positive number of bytes/s")
        if not 1 <= self.queue <= MAX_DELAYED:
            raise ValueError(f"queue must be between 1 and {MAX_DELAYED} datagrams")
        if self.burst < 1:
            raise ValueError("burst must be at least 1 byte")


@dataclass
class PipeStats:
    """Counters of one direction. ``out_of_order`` counts datagrams that really left after one
    that arrived later (what the receiver sees), ``reordered`` those picked to be held back."""

    received: int = 0
    sent: int = 0
    bytes_sent: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    queue_drops: int = 0
    out_of_order: int = 0
    send_errors: int = 0


@dataclass(order=True)
class _Delayed:
    due: float
    seq: int  # arrival order, breaks ties FIFO; ``out_of_order`` compares it
    data: bytes = field(compare=False)
    dest: Any = field(compare=False)


class Pipe:
    """One direction of the link, sans I/O: :meth:`push` datagrams in, :meth:`pop_due` them out."""

    def __init__(self, imp: Impairment, rng: random.Random) -> None:
        imp.check()
        self.imp = imp
        self.rng = rng
        self.stats = PipeStats()
        self._seq = 0
        self._last_seq_out = -1
        self._bottleneck: deque[tuple[bytes, Any, int, float]] = deque()  # data, dest, seq, extra
        self._tokens = float(imp.burst)
        self._tokens_at = -math.inf
        self._delayed: list[_Delayed] = []

    def push(self, data: bytes, dest: Any, now: float) -> None:
        imp, st = self.imp, self.stats
        u = [self.rng.random() for _ in range(DRAWS)]  # always DRAWS draws: see the module doc
        st.received += 1
        if u[0] < imp.loss:
            st.lost += 1
            return
        copies = 2 if u[1] < imp.duplicate else 1
        st.duplicated += copies - 1
        for c in range(copies):
            extra = imp.delay + u[3 + 2 * c] * imp.jitter
            if u[2 + 2 * c] < imp.reorder:
                st.reordered += 1
                extra += imp.reorder_delay
            self._seq += 1
            if imp.rate is None:
                self._delay(data, dest, self._seq, now + extra)
            elif len(self._bottleneck) >= imp.queue:
                st.queue_drops += 1
            else:
                self._refill(now)
                self._bottleneck.append((data, dest, self._seq, extra))

    def _refill(self, now: float) -> None:
        """Tokens accrue while the bottleneck queue is empty too (up to the burst)."""
        assert self.imp.rate is not None
        if not self._bottleneck:
            elapsed = now - self._tokens_at
            self._tokens = min(float(self.imp.burst), self._tokens + elapsed * self.imp.rate)
            self._tokens_at = now

    def _delay(self, data: bytes, dest: Any, seq: int, due: float) -> None:
        if len(self._delayed) >= MAX_DELAYED:
            self.stats.queue_drops += 1
            return
        heapq.heappush(self._delayed, _Delayed(due, seq, data, dest))

    def _head_leaves_at(self) -> float:
        """When the head of the bottleneck queue has the tokens it needs."""
        rate = self.imp.rate
        assert rate is not None
        need = min(len(self._bottleneck[0][0]), self.imp.burst)
        return self._tokens_at + max(0.0, need - self._tokens) / rate

    def _serve_bottleneck(self, now: float) -> None:
        rate = self.imp.rate
        while self._bottleneck and (t := self._head_leaves_at()) <= now:
            assert rate is not None
            data, dest, seq, extra = self._bottleneck.popleft()
            tokens = min(float(self.imp.burst), self._tokens + (t - self._tokens_at) * rate)
            # A datagram larger than the bucket waits for a full bucket and leaves it in debt.
            self._tokens, self._tokens_at = tokens - len(data), t
            self._delay(data, dest, seq, t + extra)

    def pop_due(self, now: float) -> list[tuple[bytes, Any]]:
        """The datagrams whose time has come, in departure order."""
        if self._bottleneck:
            self._serve_bottleneck(now)
        out: list[tuple[bytes, Any]] = []
        delayed = self._delayed
        while delayed and delayed[0].due <= now:
            d = heapq.heappop(delayed)
            if d.seq < self._last_seq_out:
                self.stats.out_of_order += 1
            self._last_seq_out = max(self._last_seq_out, d.seq)
            out.append((d.data, d.dest))
        return out

    def next_due(self) -> float | None:
        """When :meth:`pop_due` next has something to release (None: nothing is held)."""
        times = []
        if self._delayed:
            times.append(self._delayed[0].due)
        if self._bottleneck:
            times.append(self._head_leaves_at())
        return min(times) if times else None


@dataclass
class LinkStats:
    up: PipeStats
    down: PipeStats
    clients: int = 0  # client addresses seen
    evicted: int = 0  # mappings dropped to stay within max_clients
    upstream_errors: int = 0  # e.g. ICMP port unreachable from the target

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Client:
    def __init__(self, addr: Any, sock: socket.socket) -> None:
        self.addr = addr
        self.sock = sock
        self.scope = trio.CancelScope()


class Link:
    """A UDP relay from ``listen`` to ``target`` with an :class:`Impairment` per direction."""

    def __init__(
        self,
        target: tuple[str, int],
        up: Impairment,
        down: Impairment,
        *,
        seed: int = 0,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        max_clients: int = 1024,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.target, self.listen, self.max_clients = target, listen, max_clients
        self.up = Pipe(up, random.Random(f"{seed}/up"))
        self.down = Pipe(down, random.Random(f"{seed}/down"))
        self.stats = LinkStats(self.up.stats, self.down.stats)
        self._clients: OrderedDict[Any, _Client] = OrderedDict()
        self._sock: socket.socket | None = None
        self._kick = trio.Event()
        self.address: tuple[str, int] = listen

    async def run(self, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until cancelled; reports the bound (host, port) to ``nursery.start``."""
        fam = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
        sock = self._sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            _big_buffers(sock)
            sock.bind(self.listen)
            sock.setblocking(False)
            self.address = sock.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._scheduler)
                task_status.started(self.address)
                await self._read_clients(sock, nursery)
        finally:
            for c in self._clients.values():
                c.sock.close()
            self._clients.clear()
            sock.close()

    async def _read_clients(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            for _ in range(256):
                try:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # an ICMP error for a client that went away
                client = self._client(addr, nursery)
                if client is not None:
                    self.up.push(data, client, now)
            self._flush(now)

    def _client(self, addr: Any, nursery: trio.Nursery) -> _Client | None:
        client = self._clients.get(addr)
        if client is not None:
            self._clients.move_to_end(addr)
            return client
        if len(self._clients) >= self.max_clients:
            _, old = self._clients.popitem(last=False)
            old.scope.cancel()
            self.stats.evicted += 1
        fam = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        up = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            _big_buffers(up)
            up.setblocking(False)
            up.connect(self.target)
        except OSError as e:
            up.close()
            self.stats.upstream_errors += 1
            log.warning("cannot open a socket towards %s:%d: %s", *self.target, e)
            return None
        client = self._clients[addr] = _Client(addr, up)
        self.stats.clients += 1
        nursery.start_soon(self._read_upstream, client)
        return client

    async def _read_upstream(self, client: _Client) -> None:
        sock = client.sock
        try:
            with client.scope:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    now = trio.current_time()
                    for _ in range(256):
                        try:
                            data = sock.recv(MAX_DATAGRAM)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            self.stats.upstream_errors += 1  # the target refused (ICMP)
                            continue
                        self.down.push(data, client.addr, now)
                    self._flush(now)
        finally:
            sock.close()

    def _flush(self, now: float) -> None:
        """Send what is due now, and wake the scheduler for what is due later."""
        assert self._sock is not None
        for data, client in self.up.pop_due(now):
            if client.sock.fileno() < 0:  # evicted while in flight
                self.up.stats.send_errors += 1
                continue
            self._send(self.up.stats, client.sock.send, data)
        sendto = self._sock.sendto
        for data, addr in self.down.pop_due(now):
            self._send(self.down.stats, sendto, data, addr)
        self._kick.set()

    @staticmethod
    def _send(st: PipeStats, send: Callable[..., object], data: bytes, *dest: Any) -> None:
        try:
            send(data, *dest)
        except OSError:  # a full send buffer or an ICMP error: lost like on any link
            st.send_errors += 1
            return
        st.sent += 1
        st.bytes_sent += len(data)

    async def _scheduler(self) -> None:
        while True:
            self._kick = trio.Event()
            times = [t for t in (self.up.next_due(), self.down.next_due()) if t is not None]
            with trio.move_on_at(min(times) if times else math.inf):
                await self._kick.wait()
            self._flush(trio.current_time())


def _big_buffers(sock: socket.socket) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass


@asynccontextmanager
async def lossy_link(
    target: tuple[str, int],
    *,
    seed: int = 0,
    up: Impairment | None = None,
    down: Impairment | None = None,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    max_clients: int = 1024,
    **both: Any,
) -> AsyncIterator[Link]:
    """Run a :class:`Link` to ``target`` for the duration of the block.

    Keyword arguments of :class:`Impairment` (``loss=0.05``, ``rate=1e6``...) apply to both
    directions; ``up`` / ``down`` give a direction its own. ``link.address`` is where to send.
    """
    base = Impairment(**both)
    link = Link(target, up or base, down or base, seed=seed, listen=listen, max_clients=max_clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        try:
            yield link
        finally:
            nursery.cancel_scope.cancel()


# -- the command line (``trickles link``) ----------------------------------------------------------

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def _pair(convert: Callable[[str], float]) -> Callable[[str], tuple[float, float]]:
    """``X`` (both directions) or ``UP,DOWN``."""

    def parse(text: str) -> tuple[float, float]:
        parts = text.split(",")
        if len(parts) > 2:
            raise argparse.ArgumentTypeError(f"{text!r}: expected X or UP,DOWN")
        try:
            values = [convert(p.strip()) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
        return values[0], values[-1]

    return parse


def _rate(text: str) -> float:
    """``1.5M`` -> 1.5e6 bytes/s (decimal units)."""
    unit = text[-1:].lower() if text[-1:].isalpha() else ""
    if unit not in _UNITS:
        raise ValueError(text)
    return float(text[: len(text) - len(unit)]) * _UNITS[unit]


_OPTIONS: list[tuple[str, Callable[[str], float], str]] = [
    ("loss", float, "probability a datagram is dropped"),
    ("reorder", float, "probability a datagram is held back --reorder-delay longer"),
    ("duplicate", float, "probability a datagram is delivered twice"),
    ("delay", float, "fixed one-way delay, seconds"),
    ("jitter", float, "extra uniform one-way delay in [0, J) seconds"),
    ("rate", _rate, "bottleneck rate, bytes/s (k, M, G: powers of 1000); 0: unlimited"),
    ("queue", float, "datagrams queued at the bottleneck at most (default 100)"),
    ("reorder-delay", float, "extra wait of a reordered datagram, seconds (default 0.002)"),
]


def add_link_command(sub: Any) -> None:
    """Add ``link`` to the ``trickles`` subcommands."""
    p = sub.add_parser("link", help="a lossy UDP relay for tests and benchmarks (seeded impairments)")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="default: 127.0.0.1:0")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the server to relay to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-clients", type=int, default=1024, metavar="N")
    for name, convert, text in _OPTIONS:
        p.add_argument(f"--{name}", type=_pair(convert), metavar="X[,DOWN]", help=text)


def impairments(args: argparse.Namespace) -> tuple[Impairment, Impairment]:
    """The (up, down) impairments the command line asks for."""
    up: dict[str, Any] = {}
    down: dict[str, Any] = {}
    for name, _, _ in _OPTIONS:
        pair = getattr(args, name.replace("-", "_"))
        if pair is None:
            continue
        key = name.replace("-", "_")
        for side, value in zip((up, down), pair, strict=True):
            if key == "queue":
                side[key] = int(value)
            elif key == "rate":
                side[key] = value or None
            else:
                side[key] = value
    a, b = replace(Impairment(), **up), replace(Impairment(), **down)
    a.check()
    b.check()
    return a, b


async def _serve(link: Link) -> None:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(link.run)
        # The first line on stdout says where to send: scripts (and tests) read it.
        print(f"listening on {host}:{port}", flush=True)
        log.info("relaying %s:%d -> %s:%d", host, port, *link.target)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run_cli(args: argparse.Namespace) -> int:
    """``trickles link``: relay until SIGINT/SIGTERM, then print the counters (JSON) on stdout."""
    from .cli import UsageError, parse_hostport

    try:
        listen = parse_hostport(args.listen, "127.0.0.1")
        target = parse_hostport(args.to, "127.0.0.1")
        up, down = impairments(args)
        link = Link(target, up, down, seed=args.seed, listen=listen, max_clients=args.max_clients)
    except (UsageError, ValueError) as e:
        print(f"trickles link: {e}", file=sys.stderr)
        return 2
    try:
        trio.run(_serve, link)
    except OSError as e:
        print(f"trickles link: cannot listen on {listen[0]}:{listen[1]}: {e.strerror}", file=sys.stderr)
        return 1
    print(json.dumps(link.stats.as_dict()), flush=True)
    return 0
