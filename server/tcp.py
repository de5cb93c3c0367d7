"""Plain HTTP/1.1 over TCP (h11 on trio): the fallback for clients that do not speak Trickles.

Requests are parsed by h11, which also tracks keep-alive and pipelining, but the bytes written
are exactly the response stream `StaticSite.read` produces for the Trickles transport: h11 is
told about each response only to keep its state machine in step, and its own serialisation is
discarded.  Both transports therefore send identical bytes for the same plan.

A TCP connection is state the server must hold, so its cost is bounded (slow-loris defences):

- at most ``max_conns`` connections are served at once; the excess is closed at accept;
- a request (head and any body) must arrive within ``head_timeout`` seconds, counted from the
  accept for a connection's first request and from the first byte for later ones: an idle timer
  alone is reset by every byte a peer dribbles;
- the head is capped at 16 KiB (431 beyond), as on the Trickles transport, and reads are 16 KiB,
  so a connection buffers at most twice that;
- an unexpected exception while serving one connection closes that connection only: it is
  counted (``internal``) and logged rate-limited, and the listener goes on.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import h11
import trio

from trickles.apps.http_head import RELEVANT_HEADERS, HeadError, HttpRequest, feed_head
from trickles.apps.http_semantics import FIXED_STATUSES, REASONS
from trickles.apps.static import ContentChanged, ResponsePlan, StaticSite

from .ratelimit import RateLimitedLog

__all__ = [
    "CHUNK",
    "HEAD_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_CONNS",
    "MAX_HEAD",
    "TcpStats",
    "serve_tcp",
    "tcp_statistics",
]

CHUNK = 64 * 1024  # stream piece read from the site and written per send
MAX_HEAD = 16 * 1024  # the Trickles transport's limit too (feed_head's default)
_RECEIVE = MAX_HEAD  # bytes per read: h11 buffers at most MAX_HEAD + one read
IDLE_TIMEOUT = 60.0  # no byte moved for this long: close
HEAD_TIMEOUT = 10.0  # whole request (head and body) must arrive within this
MAX_CONNS = 2048
MAX_REQUEST_BODY = 1024 * 1024  # GET bodies are meaningless here; drain this much at most
_REPLANS = 3  # a file rewritten between plan and first read gets planned again this often
_LINGER = 1.0  # seconds to drain input before closing, so our last response is not lost to RST
_LINGER_BYTES = 256 * 1024

_RELEVANT = frozenset(name.encode() for name in RELEVANT_HEADERS)
log = logging.getLogger(__name__)


@dataclass
class TcpStats:
    """Counters a metrics layer can read (monotonic, never reset)."""

    connections: int = 0
    closed: int = 0  # connections served and finished: connections - closed are open
    requests: int = 0
    bytes_sent: int = 0
    errors: int = 0  # protocol errors answered with 4xx/5xx, changed content, internal errors
    disconnects: int = 0  # peers that went away mid-response: normal, not an error
    timeouts: int = 0  # idle timeouts (nothing received or nothing sent for idle_timeout)
    head_timeouts: int = 0  # requests not complete within head_timeout (slow-loris)
    refused: int = 0  # connections closed at accept: max_conns were open
    internal: int = 0  # unexpected exceptions (also in errors), each closing one connection

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


_STATS = TcpStats()


def tcp_statistics() -> TcpStats:
    """Process-wide counters of every `serve_tcp` not given its own `stats`."""
    return _STATS


class _Closed(Exception):
    """Internal: stop serving this connection (the reason has been counted already)."""


async def serve_tcp(
    site: StaticSite,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    stats: TcpStats | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
    head_timeout: float = HEAD_TIMEOUT,
    max_conns: int = MAX_CONNS,
    clock: Callable[[], float] = time.time,
) -> None:
    """Serve `site` over HTTP/1.1 on host:port forever; reports the bound port via task_status."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    counters = _STATS if stats is None else stats
    limits = _Limits(idle_timeout, head_timeout)
    internal_log = RateLimitedLog(log, what="tcp: internal error serving a connection; closed it")
    open_conns = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal open_conns
        if open_conns >= max_conns:
            counters.refused += 1
            await stream.aclose()  # cheapest answer: no read, no write, no linger
            return
        open_conns += 1
        try:
            await _Connection(stream, site, counters, limits, clock).run()
        except Exception as exc:  # one connection's bug must never stop the listener
            counters.internal += 1
            counters.errors += 1
            internal_log.report(exc, trio.current_time())
        finally:
            open_conns -= 1
            counters.closed += 1

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


@dataclass(frozen=True)
class _Limits:
    idle_timeout: float
    head_timeout: float


class _Connection:
    def __init__(
        self,
        stream: trio.SocketStream,
        site: StaticSite,
        stats: TcpStats,
        limits: _Limits,
        clock: Callable[[], float],
    ) -> None:
        self.stream = stream
        self.site = site
        self.stats = stats
        self.idle_timeout = limits.idle_timeout
        self.head_timeout = limits.head_timeout
        self.clock = clock
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.client = _peer_ip(stream)
        self.peer_eof = False
        # The first request's deadline runs from the accept: connecting and saying nothing is
        # the cheapest slow-loris of all.
        self.request_deadline: float | None = trio.current_time() + self.head_timeout
        self.request_started = False  # some bytes of the current request have arrived

    async def run(self) -> None:
        """Serve requests until the peer or a limit ends the connection; unexpected exceptions
        propagate (after closing) to the handler, which contains them."""
        self.stats.connections += 1
        try:
            while True:
                try:
                    event = await self._next_event()
                    if not isinstance(event, h11.Request):
                        return  # clean close between requests
                    await self._serve(event)
                except h11.RemoteProtocolError as exc:
                    await self._reject(exc.error_status_hint)
                    return
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return  # HTTP/1.0, "Connection: close" or an abandoned request body
                self.h11.start_next_cycle()
                self._next_request()
        except _Closed:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as exc:
            self.stats.disconnects += 1
            log.debug("tcp: peer went away: %r", exc)
        finally:
            await self._close()

    def _next_request(self) -> None:
        """Between requests only the idle timer runs, unless the next one is already arriving."""
        pipelined = bool(self.h11.trailing_data[0])
        self.request_started = pipelined
        self.request_deadline = trio.current_time() + self.head_timeout if pipelined else None

    async def _next_event(self) -> h11.Event:
        """Next h11 event, reading as needed, within the idle timeout and the request deadline."""
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # unreachable: events are only read within a cycle
                raise _Closed
            idle_deadline = trio.current_time() + self.idle_timeout
            deadline = idle_deadline
            if self.request_deadline is not None:
                deadline = min(deadline, self.request_deadline)
            with trio.move_on_at(deadline) as scope:
                data = await self.stream.receive_some(_RECEIVE)
            if scope.cancelled_caught:
                await self._timed_out(deadline < idle_deadline)
            if data and not self.request_started:
                self.request_started = True
                if self.request_deadline is None:
                    self.request_deadline = trio.current_time() + self.head_timeout
            self.peer_eof = not data
            self.h11.receive_data(data)

    async def _timed_out(self, request_deadline: bool) -> None:
        """Close a connection that ran out of time; a started request first gets a 408."""
        if not request_deadline:
            self.stats.timeouts += 1
            raise _Closed
        self.stats.head_timeouts += 1
        if self.request_started:
            await self._send_error_page(408)
        raise _Closed

    async def _serve(self, request: h11.Request) -> None:
        self.stats.requests += 1
        try:
            req = _as_request(request)
        except HeadError as exc:
            await self._reject(exc.status)
            raise _Closed from exc
        # Drain the (rare) request body first so the connection can be reused afterwards.
        received = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > MAX_REQUEST_BODY:
                    await self._reject(413)
                    raise _Closed
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _Closed  # peer closed mid-body
        plan, first = await self._plan(req)
        await self._send_plan(plan, first)

    async def _plan(self, req: HttpRequest) -> tuple[ResponsePlan, bytes]:
        """Plan the response and read its first piece, replanning if the file just changed."""
        status = 503
        try:
            for _ in range(_REPLANS):
                plan = await trio.to_thread.run_sync(self.site.plan, req, self.clock(), self.client)
                try:
                    first = await trio.to_thread.run_sync(self.site.read, plan, 0, CHUNK)
                except ContentChanged:
                    continue
                return plan, first
            log.warning("tcp: %s kept changing while being planned", req.target)
        except Exception:
            # Nothing has been sent yet, so the client can still get an honest 500.
            log.exception("tcp: planning %s failed", req.target)
            status = 500
        self.stats.errors += 1
        plan = self.site.error_plan(status, self.clock(), req.method)
        return plan, self.site.read(plan, 0, CHUNK)

    async def _send_plan(self, plan: ResponsePlan, first: bytes) -> None:
        # Keep h11's state machine in step; the bytes on the wire are the site's stream.
        self.h11.send(
            h11.Response(
                status_code=plan.status,
                headers=_header_fields(plan.header_bytes),
                reason=REASONS.get(plan.status, "").encode("ascii"),
            )
        )
        head_len = len(plan.header_bytes)
        offset, piece = 0, first
        while True:
            body = piece[max(0, head_len - offset) :]
            if body:
                self.h11.send(h11.Data(data=body))
            await self._write(piece)
            offset += len(piece)
            if offset >= plan.total_length:
                break
            try:
                piece = await trio.to_thread.run_sync(self.site.read, plan, offset, CHUNK)
            except ContentChanged as exc:
                # Headers are out: the only honest signal left is a short body, i.e. closing.
                self.stats.errors += 1
                log.warning("tcp: aborting response: %s", exc)
                raise _Closed from exc
        self.h11.send(h11.EndOfMessage())

    async def _reject(self, status: int) -> None:
        """Answer an unparseable request with a fixed error page; the connection then closes."""
        self.stats.errors += 1
        await self._send_error_page(status)

    async def _send_error_page(self, status: int) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response is already under way: closing is all we can do
        plan = self.site.error_plan(status if status in FIXED_STATUSES else 400, self.clock())
        await self._write(self.site.read(plan, 0, plan.total_length))

    async def _write(self, data: bytes) -> None:
        with trio.move_on_after(self.idle_timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:  # the peer stopped reading
            self.stats.timeouts += 1
            raise _Closed
        self.stats.bytes_sent += len(data)

    async def _close(self) -> None:
        """Half-close, drain briefly, close: closing with unread input would send an RST that
        can destroy the response the peer has not read yet."""
        try:
            with trio.move_on_after(_LINGER):
                await self.stream.send_eof()
                drained = 0
                while not self.peer_eof and drained < _LINGER_BYTES:
                    data = await self.stream.receive_some(CHUNK)
                    self.peer_eof = not data
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.stream.aclose()


def _peer_ip(stream: trio.SocketStream) -> bytes:
    """The peer's packed IP: the client identity of per-client content (TCP's handshake verified it)."""
    try:
        name = stream.socket.getpeername()
        family = socket.AF_INET6 if ":" in name[0] else socket.AF_INET
        return socket.inet_pton(family, name[0].partition("%")[0])
    except (OSError, IndexError, TypeError, ValueError):
        return b""


def _header_fields(header_bytes: bytes) -> list[tuple[bytes, bytes]]:
    lines = header_bytes.split(b"\r\n")[1:]  # skip the status line
    return [(name, value.strip()) for name, _, value in (ln.partition(b":") for ln in lines if ln)]


def _as_request(event: h11.Request) -> HttpRequest:
    """The request as the Trickles transport would see it.

    The request line and the relevant fields go through the same `feed_head` as on the
    stateless transport, so limits and validation (414, 431, duplicate Host, ...) and thus the
    response bytes are identical whichever transport carried the request.
    """
    lines = [b"%s %s HTTP/%s" % (event.method, event.target, event.http_version)]
    lines += [b"%s: %s" % (name, value) for name, value in event.headers if name in _RELEVANT]
    _, request, _ = feed_head(b"", b"\r\n".join(lines) + b"\r\n\r\n", max_head=MAX_HEAD)
    if request is None:  # cannot happen: the head above is complete
        raise HeadError(400, "incomplete request head")
    return request
