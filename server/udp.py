"""The Trickles UDP endpoint: a thin trio loop around the stateless :class:`ServerEngine`.

Per-datagram work stays out of trio's scheduler: one ``await sock.recvfrom()`` per datagram costs
several times the whole protocol step, so the loop waits for readiness with trio and then drains the
socket with plain non-blocking receive calls, up to ``batch`` datagrams at a time (the paper's
batch processing interface), before yielding again; with GRO a client's GSO batch of requests comes
in one call. The batch's answers are grouped by client and sent at its end, each client's in as few
GSO calls as their sizes allow (:mod:`.gso`).

The client's address is handed to the engine as bytes: the packed IP address followed by the
2-byte big-endian port. Continuations are MAC-bound to it.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from trickles.engine import ServerEngine
from trickles.errors import DropReason

from .gso import GsoSender, enable_gro, receive_batch
from .hll import ActiveClients
from .proxy import ReplicaProxy
from .ratelimit import RateLimitedLog

log = logging.getLogger("trickles.server")

SOCKBUF = 4 << 20
MAX_REQUEST = 2048
"""Bytes of a datagram the loop reads: more than any request (longer ones are cut, and fail)."""


def addr_bytes(addr: tuple[str, int] | tuple[str, int, int, int]) -> bytes:
    """The address form continuations are bound to: packed IP then 2-byte port.

    An IPv4 client seen through a dual-stack IPv6 socket (``::ffff:a.b.c.d``) is bound by its IPv4
    address, so replicas with either kind of socket accept each other's continuations.
    """
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(fam, host) + port.to_bytes(2, "big")


HANDLE_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 2e-2, 0.1)
"""Upper bounds (s) of the per-datagram processing-time histogram (``trickles_handle_seconds``)."""


@dataclass
class UdpStats:
    """Plain counters kept by the loop; metrics read them at scrape time (from another thread)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    send_would_block: int = 0
    send_errors: int = 0
    send_calls: int = 0
    """System calls that sent datagrams (fewer than ``datagrams_out`` when GSO batches them)."""
    receive_calls: int = 0
    """System calls that received datagrams (fewer than ``datagrams_in`` when GRO coalesces)."""
    batches: int = 0
    busy_seconds: float = 0.0
    requests: list[int] = field(default_factory=lambda: [0] * 256)
    """Datagrams by request type byte as the engine decoded it (index 0: undecodable)."""
    handle_buckets: list[int] = field(default_factory=lambda: [0] * (len(HANDLE_BUCKETS) + 1))
    """Datagrams per processing-time bucket (not cumulative; the last is +Inf). Each batch's
    datagrams are counted at the batch's mean time per datagram: one bisect per batch, none per
    datagram."""
    handle_seconds: float = 0.0
    clients: ActiveClients = field(default_factory=ActiveClients)

    def observe_batch(self, n: int, seconds: float) -> None:
        if n:
            self.handle_buckets[bisect_left(HANDLE_BUCKETS, seconds / n)] += n
            self.handle_seconds += seconds


def open_udp_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
        except OSError:
            pass
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def serve_udp(
    engine: ServerEngine,
    sock: socket.socket,
    *,
    batch: int = 256,
    stats: UdpStats | None = None,
    proxy: ReplicaProxy | None = None,
    gso: bool = True,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve Trickles on an already bound non-blocking UDP socket until cancelled.

    With ``proxy``, datagrams from its trusted senders (a sprayer) carry the client's address in a
    PROXY header (:mod:`trickles.server.proxy`); replies go back to the sender behind that header.
    ``gso=False`` sends and receives every datagram with its own system call (segmentation offload
    is also off where the kernel lacks it).
    """
    st = stats if stats is not None else UdpStats()
    task_status.started(sock.getsockname()[:2])
    recvfrom, sendto, step = sock.recvfrom, sock.sendto, engine.step
    receive: Callable[[], tuple[Sequence[bytes], Any]]
    if gso and enable_gro(sock):
        # Requests a client sent in one GSO call arrive in one recvmsg: one system call for many.
        def receive() -> tuple[Sequence[bytes], Any]:
            return receive_batch(sock)
    else:

        def receive() -> tuple[Sequence[bytes], Any]:
            data, addr = recvfrom(MAX_REQUEST)
            return (data,), addr

    sender = GsoSender(sock, gso)
    send = sender.send
    outbox: dict[tuple[Any, ...], list[bytes]] = {}  # this batch's answers, by client address
    addr_cache: dict[object, bytes] = {}
    clock = time.time  # wall clock: continuation timestamps must be comparable across replicas
    perf = time.perf_counter
    internal_log = RateLimitedLog(log)
    requests, clients = st.requests, st.clients
    internal = DropReason.INTERNAL
    while True:
        await trio.lowlevel.wait_readable(sock)
        t0 = perf()
        st.batches += 1
        n_in = b_in = b_out = calls = 0  # local counts (cheaper than attributes), added per batch
        sent0 = (sender.datagrams, sender.calls, sender.would_block, sender.errors)
        if clients.rotate_due(t0):
            addr_cache.clear()  # so each client still active is counted again in the new window
        for _ in range(batch):
            if n_in >= batch:
                break
            try:
                received, addr = receive()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. ICMP errors reported on the socket: not ours to act on
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("recvfrom failed: %s", e)
                continue
            calls += 1
            for data in received:
                n_in += 1
                b_in += len(data)
                if len(data) > MAX_REQUEST:
                    data = data[:MAX_REQUEST]  # what recvfrom(MAX_REQUEST) would have read
                try:
                    head, ab = b"", None
                    if proxy is not None and addr[0] in proxy.trusted:
                        data, ab, head = proxy.inbound(data, addr, sendto)
                        if not ab:
                            continue
                    else:
                        ab = addr_cache.get(addr)
                    if ab is None:
                        if len(addr_cache) > 4096:
                            addr_cache.clear()
                        ab = addr_cache[addr] = addr_bytes(addr)
                        clients.add(ab)  # first sight in this window: the only per-client cost
                    res = step(data, ab, clock())
                    requests[res.kind] += 1
                    if res.drop is internal:
                        internal_log.report(engine.last_internal_error, clock())
                    if head:
                        b_out += send([head + d for d in res.datagrams], addr)
                    elif res.datagrams:
                        queued = outbox.get(addr)
                        if queued is None:
                            outbox[addr] = list(res.datagrams)
                        else:
                            queued += res.datagrams
                except Exception as e:  # a bug reached by one datagram costs that datagram only
                    engine.internal_drop(e)
                    internal_log.report(e, clock())
        for addr, queued in outbox.items():
            try:
                b_out += send(queued, addr)
            except OSError:  # e.g. an ICMP refusal surfacing on send: a loss like any other
                sender.errors += len(queued)
        outbox.clear()
        dt = perf() - t0
        st.datagrams_in += n_in
        st.receive_calls += calls
        st.bytes_in += b_in
        st.datagrams_out += sender.datagrams - sent0[0]
        st.send_calls += sender.calls - sent0[1]
        st.send_would_block += sender.would_block - sent0[2]
        st.send_errors += sender.errors - sent0[3]
        st.bytes_out += b_out
        st.busy_seconds += dt
        st.observe_batch(n_in, dt)
        await trio.lowlevel.checkpoint()
