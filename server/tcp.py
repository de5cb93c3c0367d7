"""Plain HTTP/1.1 over TCP (h11 on trio): the fallback for clients that do not speak Trickles.

Requests are parsed by h11, which also tracks keep-alive and pipelining, but the bytes written
are exactly the response stream `StaticSite.read` produces for the Trickles transport: h11 is
told about each response only to keep its state machine in step, and its own serialisation is
discarded.  Both transports therefore send identical bytes for the same plan.
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
from trickles.apps.static import FIXED_STATUSES, REASONS, ContentChanged, ResponsePlan, StaticSite

__all__ = ["CHUNK", "IDLE_TIMEOUT", "MAX_HEAD", "TcpStats", "serve_tcp", "tcp_statistics"]

CHUNK = 64 * 1024  # stream piece read from the site and written per send
MAX_HEAD = 1024 * 1024
IDLE_TIMEOUT = 60.0
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
    requests: int = 0
    bytes_sent: int = 0
    errors: int = 0  # protocol errors answered with 4xx/5xx, changed content, internal errors
    disconnects: int = 0  # peers that went away mid-response: normal, not an error
    timeouts: int = 0

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
    clock: Callable[[], float] = time.time,
) -> None:
    """Serve `site` over HTTP/1.1 on host:port forever; reports the bound port via task_status."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    counters = _STATS if stats is None else stats

    async def handler(stream: trio.SocketStream) -> None:
        await _Connection(stream, site, counters, idle_timeout, clock).run()

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


class _Connection:
    def __init__(
        self,
        stream: trio.SocketStream,
        site: StaticSite,
        stats: TcpStats,
        idle_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.stream = stream
        self.site = site
        self.stats = stats
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.client = _peer_ip(stream)
        self.peer_eof = False

    async def run(self) -> None:
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
        except _Closed:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as exc:
            self.stats.disconnects += 1
            log.debug("tcp: peer went away: %r", exc)
        except Exception:
            self.stats.errors += 1
            log.exception("tcp: internal error")
        finally:
            await self._close()

    async def _next_event(self) -> h11.Event:
        """Next h11 event, reading as needed; idle peers are dropped after idle_timeout."""
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # unreachable: events are only read within a cycle
                raise _Closed
            with trio.move_on_after(self.idle_timeout) as scope:
                data = await self.stream.receive_some(CHUNK)
            if scope.cancelled_caught:
                self.stats.timeouts += 1
                raise _Closed
            self.peer_eof = not data
            self.h11.receive_data(data)

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
