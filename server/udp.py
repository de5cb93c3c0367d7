"""The Trickles UDP endpoint: a thin trio loop around the stateless :class:`ServerEngine`.

Per-datagram work stays out of trio's scheduler: one ``await sock.recvfrom()`` per datagram costs
several times the whole protocol step, so the loop waits for readiness with trio and then drains the
socket with plain non-blocking ``recvfrom``/``sendto`` calls, up to ``batch`` datagrams at a time
(the paper's batch processing interface), before yielding again.

The client's address is handed to the engine as bytes: the packed IP address followed by the
2-byte big-endian port. Continuations are MAC-bound to it.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from dataclasses import dataclass

import trio

from trickles.engine import ServerEngine
from trickles.errors import DropReason

from .proxy import ReplicaProxy

log = logging.getLogger("trickles.server")

SOCKBUF = 4 << 20


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


class RateLimitedLog:
    """Log unexpected per-datagram exceptions with their traceback, at most once per ``period``
    seconds (a hostile flood that hits a bug must not turn into a disk-filling log)."""

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self.logger, self.period = logger, period
        self._next = 0.0
        self._suppressed = 0

    def report(self, exc: BaseException | None, now: float) -> None:
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.period
        more = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        self._suppressed = 0
        self.logger.error(
            "internal error handling a datagram; dropped it%s", more, exc_info=exc if exc else None
        )


@dataclass
class UdpStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    send_would_block: int = 0
    send_errors: int = 0
    batches: int = 0
    busy_seconds: float = 0.0


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
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve Trickles on an already bound non-blocking UDP socket until cancelled.

    With ``proxy``, datagrams from its trusted senders (a sprayer) carry the client's address in a
    PROXY header (:mod:`trickles.server.proxy`); replies go back to the sender behind that header.
    """
    st = stats if stats is not None else UdpStats()
    task_status.started(sock.getsockname()[:2])
    recvfrom, sendto, step = sock.recvfrom, sock.sendto, engine.step
    addr_cache: dict[object, bytes] = {}
    clock = time.time  # wall clock: continuation timestamps must be comparable across replicas
    perf = time.perf_counter
    internal_log = RateLimitedLog(log)
    while True:
        await trio.lowlevel.wait_readable(sock)
        t0 = perf()
        st.batches += 1
        for _ in range(batch):
            try:
                data, addr = recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. ICMP errors reported on the socket: not ours to act on
                if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("recvfrom failed: %s", e)
                continue
            st.datagrams_in += 1
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
                try:
                    ab = addr_cache[addr] = addr_bytes(addr)
                except (OSError, ValueError) as e:
                    engine.internal_drop(e)
                    internal_log.report(e, clock())
                    continue
            res = step(data, ab, clock())
            if res.drop is DropReason.INTERNAL:
                internal_log.report(engine.last_internal_error, clock())
            for d in res.datagrams:
                try:
                    sendto(head + d if head else d, addr)
                    st.datagrams_out += 1
                except BlockingIOError:
                    # Send buffer full: the packet is lost like any other; the client recovers.
                    st.send_would_block += 1
                except OSError:
                    st.send_errors += 1
        st.busy_seconds += perf() - t0
        await trio.lowlevel.checkpoint()
