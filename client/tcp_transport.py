"""Plain HTTP/1.1 over TCP (trio + h11): the fallback and ``--tcp`` transport of ``tcurl``."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator

import h11
import trio

from trickles.client.api import (
    ConnectError,
    EmptyReply,
    PartialTransfer,
    ProtocolError,
    RecvError,
    ResolveError,
    Response,
    SendError,
    TransferStats,
    TransferTimeout,
    TransportError,
    format_raw_headers,
    parse_content_length,
)

__all__ = ["TcpConnection", "TcpTransport"]

RECV_SIZE = 64 * 1024

# Offsets into Linux's struct tcp_info (stable kernel ABI): tcpi_rtt is in microseconds.
_TCPI_RTT_OFFSET = 68
_TCPI_TOTAL_RETRANS_OFFSET = 100
_TCPI_SIZE = 104


def _os_reason(exc: BaseException) -> str:
    """Best human-readable OS reason for ``exc`` (looks through trio's wrapping)."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if current in seen:
            continue
        seen.append(current)
        if isinstance(current, OSError) and current.errno:
            # trio's own messages wrap strerror ("Error connecting to (...): ..."); curl
            # shows the bare OS reason.
            return os.strerror(current.errno)
        if isinstance(current, BaseExceptionGroup):
            # trio reports the last connection attempt last; that is the one curl shows.
            pending.extend(reversed(current.exceptions))
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        if current.__context__ is not None:
            pending.append(current.__context__)
    return str(exc) or type(exc).__name__


def _elapsed_ms(start: float) -> int:
    return int((trio.current_time() - start) * 1000)


async def _open_stream(host: str, port: int, timeout: float) -> trio.SocketStream:
    """Connect to ``host:port``, translating every failure into a curl-style error."""
    start = trio.current_time()
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise TransferTimeout(f"Connection timed out after {_elapsed_ms(start)} milliseconds")
    except socket.gaierror:
        raise ResolveError(f"Could not resolve host: {host}")
    except OSError as exc:
        raise ConnectError(
            f"Failed to connect to {host} port {port} after {_elapsed_ms(start)} ms: {_os_reason(exc)}"
        )


class TcpTransport:
    """Opens keep-alive HTTP/1.1 connections over TCP."""

    name = "tcp"

    async def connect(self, host: str, port: int, *, timeout: float) -> TcpConnection:
        """Connect to ``host:port`` within ``timeout`` seconds."""
        stream = await _open_stream(host, port, timeout)
        return TcpConnection(host, port, stream, timeout)


class TcpConnection:
    """An h11 client connection; transparently reconnects when keep-alive is not possible."""

    def __init__(self, host: str, port: int, stream: trio.SocketStream, connect_timeout: float) -> None:
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._stream: trio.SocketStream | None = stream
        self._h11 = h11.Connection(h11.CLIENT)
        self._requests_on_stream = 0
        self._bytes_received = 0
        self._eof = False
        self._last_stats = TransferStats(transport="tcp")

    async def request(self, method: str, target: str, headers: list[tuple[str, str]]) -> Response:
        """Send one request and return its response head; the body streams afterwards."""
        await self._ready_for_request()
        reused = self._requests_on_stream > 0
        try:
            return await self._exchange(method, target, headers)
        except (EmptyReply, SendError, RecvError):
            # A kept-alive connection may have been closed by the server while idle;
            # like curl, retry idempotent requests once on a fresh connection.
            if not reused or method not in ("GET", "HEAD"):
                raise
            await self._reconnect()
            return await self._exchange(method, target, headers)

    def stats(self) -> TransferStats:
        """RTT and retransmissions from the kernel's TCP_INFO (Linux), byte count."""
        if self._stream is not None:
            rtt, retrans = _tcp_info(self._stream)
            if rtt is not None:
                self._last_stats.rtt_s = rtt
            if retrans is not None:
                self._last_stats.retransmissions = retrans
        self._last_stats.bytes_received = self._bytes_received
        return TransferStats(**vars(self._last_stats))

    async def aclose(self) -> None:
        """Close the socket (idempotent)."""
        if self._stream is not None:
            self.stats()  # keep the final kernel figures after the socket is gone
            stream, self._stream = self._stream, None
            await stream.aclose()

    async def _ready_for_request(self) -> None:
        state = (self._h11.our_state, self._h11.their_state)
        if self._stream is None:
            await self._reconnect()
        elif state == (h11.DONE, h11.DONE):
            self._h11.start_next_cycle()
        elif state != (h11.IDLE, h11.IDLE):
            # Previous body not consumed, or the server asked to close: start afresh.
            await self._reconnect()

    async def _reconnect(self) -> None:
        await self.aclose()
        self._stream = await _open_stream(self._host, self._port, self._connect_timeout)
        self._h11 = h11.Connection(h11.CLIENT)
        self._requests_on_stream = 0
        self._eof = False

    async def _exchange(self, method: str, target: str, headers: list[tuple[str, str]]) -> Response:
        """The request on the wire, then the response head; the body streams afterwards (from
        :class:`_BodyStream`) so the caller's exchange step sees the head first."""
        request = h11.Request(method=method, target=target, headers=headers)
        await self._send(self._h11.send(request) or b"")
        await self._send(self._h11.send(h11.EndOfMessage()) or b"")
        self._requests_on_stream += 1
        head = await self._read_head()
        raw_items = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers.raw_items()
        ]
        http_version = head.http_version.decode("ascii")
        reason = head.reason.decode("latin-1")
        return Response(
            http_version=http_version,
            status=head.status_code,
            reason=reason,
            headers=raw_items,
            body=_BodyStream(self, parse_content_length(raw_items)),
            raw_headers=format_raw_headers(http_version, head.status_code, reason, raw_items),
        )

    async def _send(self, data: bytes) -> None:
        stream = self._require_stream()
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SendError(f"Send failure: {_os_reason(exc)}")

    async def _receive(self) -> None:
        """Feed the next chunk of socket data (or EOF) to h11."""
        stream = self._require_stream()
        try:
            data = await stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise RecvError(f"Recv failure: {_os_reason(exc)}")
        self._bytes_received += len(data)
        self._eof = not data
        self._h11.receive_data(data)

    async def _read_head(self) -> h11.Response:
        received_before = self._bytes_received
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof and self._bytes_received == received_before:
                    raise EmptyReply("Empty reply from server")
                raise ProtocolError(f"Weird server reply: {exc}")
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Response):
                return event
            elif isinstance(event, h11.ConnectionClosed):
                raise EmptyReply("Empty reply from server")
            # InformationalResponse (1xx): keep reading for the final response.

    async def _next_body_chunk(self, remaining: int | None) -> bytes | None:
        """Return the next body bytes, or None at the end of the message."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if not self._eof:
                    raise ProtocolError(f"Weird server reply: {exc}")
                if remaining is not None:
                    raise PartialTransfer(f"end of response with {remaining} bytes missing")
                raise PartialTransfer("transfer closed with outstanding read data remaining")
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Data):
                return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return None

    def _require_stream(self) -> trio.SocketStream:
        if self._stream is None:
            raise TransportError("Connection closed")
        return self._stream


class _BodyStream(AsyncIterator[bytes]):
    """Iterator over one response body (a class, not an async generator, so that an
    abandoned body needs no finalisation)."""

    def __init__(self, connection: TcpConnection, content_length: int | None) -> None:
        self._connection = connection
        self._remaining = content_length
        self._done = False

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        chunk = await self._connection._next_body_chunk(self._remaining)
        if chunk is None:
            self._done = True
            raise StopAsyncIteration
        if self._remaining is not None:
            self._remaining -= len(chunk)
        return chunk


def _tcp_info(stream: trio.SocketStream) -> tuple[float | None, int | None]:
    """(RTT in seconds, total retransmissions) from TCP_INFO, or Nones where unsupported."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None, None
    try:
        info = stream.socket.getsockopt(socket.IPPROTO_TCP, option, _TCPI_SIZE)
    except OSError:
        return None, None
    if len(info) < _TCPI_SIZE:
        return None, None
    (rtt_us,) = struct.unpack_from("=I", info, _TCPI_RTT_OFFSET)
    (retrans,) = struct.unpack_from("=I", info, _TCPI_TOTAL_RETRANS_OFFSET)
    return rtt_us / 1e6, retrans
