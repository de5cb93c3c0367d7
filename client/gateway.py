"""``trickles gateway``: a local HTTP/1.1 forward proxy that carries requests over Trickles.

Unmodified programs (``curl -x http://127.0.0.1:8118 http://server:9000/file``) talk plain HTTP over
TCP to the gateway; each absolute-form request goes to its origin over Trickles (one Trickles
connection per origin, reused for the life of the downstream connection), or over TCP when the origin
does not answer Trickles (:mod:`.fallback`, the same policy as ``tcurl``). The response streams back
with the origin's status and end-to-end headers.

The gateway is a trust boundary (:mod:`.allowlist`): it listens on loopback unless told otherwise,
forwards only GET and HEAD (405 otherwise), and only to allowlisted destinations (403 otherwise).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

import h11
import trio

from .allowlist import Allowlist, Refused, check_listen
from .api import Connection, Response, TransportError
from .fallback import Dialer, close_quietly
from .tcp_transport import TcpTransport
from .trickles_transport import TricklesTransport

__all__ = ["serve_gateway"]

log = logging.getLogger("trickles.gateway")

RECV_SIZE = 64 * 1024
CONNECT_TIMEOUT = 10.0  # probe and TCP fallback together
ALLOWED_METHODS = ("GET", "HEAD")  # the transports carry no request bodies; nothing else is safe to proxy
IDLE_TIMEOUT = 120.0  # downstream keep-alive: close after this long without a request
MAX_UPSTREAMS = 8  # origin connections kept per client connection
UPSTREAM_MAX_IDLE = 60.0  # Trickles continuations go stale (server horizon 120 s): reconnect before
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


_ALLOW = [("Allow", ", ".join(ALLOWED_METHODS))]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upstream:
    """A connection to one origin, and the transport it runs on (``trickles`` or ``tcp``)."""

    conn: Connection
    transport: str
    last_used: float = field(default_factory=time.monotonic)


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without hop-by-hop ones (the fixed set and those named in ``Connection``)."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


def parse_target(target: str) -> tuple[str, int, str]:
    """(host, port, origin-form target) of an absolute ``http://`` URL; _BadRequest otherwise."""
    if not target.lower().startswith("http://"):
        raise _BadRequest(400, "expected an absolute http:// URL (this is a proxy)")
    try:
        url = urlsplit(target)
        host, port = url.hostname, url.port or 80
    except ValueError as e:
        raise _BadRequest(400, f"bad URL: {e}") from None
    if not host or url.username is not None:
        raise _BadRequest(400, "bad URL: no host")
    path = url.path or "/"
    return host, port, path + ("?" + url.query if url.query else "")


class Gateway:
    """Proxy state shared by all downstream connections: the allowlist and the dialer."""

    def __init__(self, allow: Allowlist, probe_timeout: float) -> None:
        self.allow = allow
        self.dialer = Dialer(TricklesTransport(probe_timeout), TcpTransport())

    async def connect(self, address: str, port: int) -> Upstream:
        """A new upstream connection (Trickles first, TCP fallback: the policy of ``fallback``)."""
        conn, transport = await self.dialer.connect(address, port, timeout=CONNECT_TIMEOUT, note=log.debug)
        return Upstream(conn, transport)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await _Downstream(self, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            log.debug("client went away")
        except Exception:  # a bug must cost one connection, not the gateway
            log.exception("internal error; closing the client connection")
        finally:
            await trio.aclose_forcefully(stream)


class _Downstream:
    """One client's TCP connection: requests in order, each relayed to its origin."""

    def __init__(self, gw: Gateway, stream: trio.SocketStream) -> None:
        self.gw = gw
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.upstreams: dict[tuple[str, int], Upstream] = {}  # (address, port) -> connection
        self._eof = False

    async def run(self) -> None:
        try:
            while True:
                req = await self._next_request()
                if req is None:
                    return
                if not await self._serve(req):
                    return
                if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
                    return
                try:
                    self.h11.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        finally:
            for up in self.upstreams.values():
                await close_quietly(up.conn)

    async def _next_request(self) -> h11.Request | None:
        with trio.move_on_after(IDLE_TIMEOUT):
            while True:
                try:
                    ev = self.h11.next_event()
                except h11.RemoteProtocolError as e:
                    if self.h11.their_state is h11.ERROR and self._eof:
                        log.debug("client closed mid-request")  # nobody left to answer
                    else:
                        await self._error(e.error_status_hint, f"bad request: {e}")
                    return None
                if ev is h11.NEED_DATA:
                    data = await self.stream.receive_some(RECV_SIZE)
                    self._eof = not data
                    self.h11.receive_data(data)
                elif isinstance(ev, h11.Request):
                    return ev
                else:  # ConnectionClosed (or PAUSED after an error)
                    return None
        return None

    async def _skip_body(self) -> bool:
        """Read the (empty) request body to its end; False if it has one (not supported)."""
        while True:
            ev = self.h11.next_event()
            if ev is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(RECV_SIZE))
            elif isinstance(ev, h11.Data):
                if ev.data:
                    return False
            else:
                return isinstance(ev, h11.EndOfMessage)

    async def _serve(self, req: h11.Request) -> bool:
        """Answer one request: admit it, forward it, relay the answer; False to close now."""
        method, target = req.method.decode("ascii"), req.target.decode("latin-1")
        start = trio.current_time()
        destination = await self._admit(req, method, target)
        if destination is None:
            return False
        address, port, path, host_header = destination
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers.raw_items()]
        headers = [("Host", host_header), *((k, v) for k, v in end_to_end(headers) if k.lower() != "host")]
        key = (address, port)
        try:
            up, resp = await self._upstream_request(key, method, path, headers)
        except TransportError as e:
            await self._error(502, e.message, method, target)
            return True
        sent = await self._relay(key, resp, method, target)
        if sent is None:
            return False
        up.last_used = time.monotonic()
        log.info(
            "%s %s -> %d via %s, %d bytes in %.3f s",
            method,
            target,
            resp.status,
            up.transport,
            sent,
            trio.current_time() - start,
        )
        return True

    async def _admit(self, req: h11.Request, method: str, target: str) -> tuple[str, int, str, str] | None:
        """Step 1, the gateway's checks: method, URL, destination allowlist, no body.

        Returns (address, port, origin-form target, Host header), or None after an error reply.
        """
        if method not in ALLOWED_METHODS:
            why = (
                "CONNECT (tunnelling) is not supported" if method == "CONNECT" else f"{method} is not allowed"
            )
            await self._error(405, f"{why}: the gateway forwards GET and HEAD only", method, target, _ALLOW)
            return None
        try:
            host, port, path = parse_target(target)
            address = await self.gw.allow.admit(host, port)
        except _BadRequest as e:
            await self._error(e.status, e.message, method, target)
            return None
        except Refused as e:
            await self._error(403, e.message, method, target)
            return None
        except TransportError as e:  # the name did not resolve
            await self._error(502, e.message, method, target)
            return None
        try:
            if not await self._skip_body():
                await self._error(501, "request bodies are not supported", method, target)
                return None
        except h11.RemoteProtocolError as e:
            await self._error(400, f"bad request: {e}", method, target)
            return None
        name = f"[{host}]" if ":" in host else host
        return address, port, path, name if port == 80 else f"{name}:{port}"

    async def _relay(self, key: tuple[str, int], resp: Response, method: str, target: str) -> int | None:
        """Step 3, the origin's answer to the client: head, then body; the body bytes relayed, or
        None when the connection must close now.

        An error after the head went out cannot become an error status: the connection is cut so
        the client sees a short body.
        """
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in end_to_end(resp.headers)]
        sent = 0
        body = resp.body
        try:
            try:
                head = h11.Response(
                    status_code=resp.status, reason=resp.reason.encode("latin-1"), headers=out_headers
                )
                await self._send(head)
            except h11.LocalProtocolError as e:
                await self._drop(key)
                await self._error(502, f"unusable response from origin: {e}", method, target)
                return None
            try:
                async for chunk in body:
                    sent += len(chunk)
                    await self._send(h11.Data(data=chunk))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("%s %s -> %d, client went away after %d bytes", method, target, resp.status, sent)
                raise
            except (TransportError, h11.LocalProtocolError) as e:
                await self._drop(key)
                log.info("%s %s -> %d, aborted after %d bytes: %s", method, target, resp.status, sent, e)
                return None
            await self._send(h11.EndOfMessage())
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        return sent

    async def _upstream_request(
        self, key: tuple[str, int], method: str, path: str, headers: list[tuple[str, str]]
    ) -> tuple[Upstream, Response]:
        """Step 2, upstream: send the request on the origin's connection (opened through the
        shared Trickles-then-TCP dialer if need be) and await the response head."""
        for attempt in (0, 1):
            up = self.upstreams.get(key)
            if up is not None and time.monotonic() - up.last_used > UPSTREAM_MAX_IDLE:
                await self._drop(key)
                up = None
            reused = up is not None
            try:
                if up is None:
                    await self._make_room()
                    up = self.upstreams[key] = await self.gw.connect(*key)
                return up, await up.conn.request(method, path, headers)
            except TransportError:
                await self._drop(key)
                if not (reused and attempt == 0):
                    raise
                # A kept connection may have gone bad while idle: GET and HEAD are idempotent, so
                # once more on a fresh one.
        raise AssertionError("unreachable")

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def _make_room(self) -> None:
        """Keep at most MAX_UPSTREAMS origin connections per client: close the least recently used."""
        while len(self.upstreams) >= MAX_UPSTREAMS:
            await self._drop(min(self.upstreams, key=lambda k: self.upstreams[k].last_used))

    async def _drop(self, key: tuple[str, int]) -> None:
        up = self.upstreams.pop(key, None)
        if up is not None:
            await close_quietly(up.conn)

    async def _error(
        self,
        status: int,
        message: str,
        method: str = "-",
        target: str = "-",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        """Send a short text error response if the connection state still allows one."""
        log.info("%s %s -> %d: %s", method, target, status, message)
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (message + "\n").encode("utf-8", "replace")
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *(extra or []),
        ]
        try:
            reason = HTTPStatus(status).phrase.encode()
            await self._send(h11.Response(status_code=status, reason=reason, headers=headers))
            if method != "HEAD":
                await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            pass


async def serve_gateway(
    host: str,
    port: int,
    *,
    allow: Allowlist,
    allow_remote: bool = False,
    probe_timeout: float = 1.5,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy on host:port until cancelled; reports the bound port via ``task_status``.

    Raises :class:`~trickles.client.allowlist.Refused` for a non-loopback ``host`` unless
    ``allow_remote``; forwards only to destinations ``allow`` admits.
    """
    check_listen(host, allow_remote)
    listeners = await trio.open_tcp_listeners(port, host=host)
    actual = listeners[0].socket.getsockname()[1]
    gw = Gateway(allow, probe_timeout)
    log.info("gateway listening on %s:%d (HTTP proxy, Trickles upstream with TCP fallback)", host, actual)
    task_status.started(actual)
    await trio.serve_listeners(gw.handle, listeners)
