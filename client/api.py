"""The HTTP/1.1 client API: what ``tcurl`` and the gateway call, and what each transport implements.

A :class:`Transport` opens a :class:`Connection` to ``host:port``; the connection sends one
request at a time and hands back a :class:`Response` whose body is streamed.  Failures are
reported as :class:`TransportError` subclasses that carry curl's exit code and a curl-style
message, so the CLI can print ``tcurl: (7) Failed to connect ...`` without knowing which
transport produced the error.

Implementations must be trio-native and cancellation-safe: the CLI enforces ``--max-time``
by cancelling whatever the transport is awaiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Connection",
    "ConnectError",
    "EmptyReply",
    "NotTrickles",
    "PartialTransfer",
    "ProtocolError",
    "RecvError",
    "ResolveError",
    "Response",
    "SendError",
    "TransferStats",
    "TransferTimeout",
    "Transport",
    "TransportError",
    "format_raw_headers",
    "header_value",
    "parse_content_length",
]


class TransportError(Exception):
    """A transfer failure; ``str(error)`` is the curl-style message without the prefix."""

    exit_code: int = 56

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ResolveError(TransportError):
    """The host name did not resolve (``Could not resolve host: X``)."""

    exit_code = 6


class ConnectError(TransportError):
    """No connection could be established (``Failed to connect to H port P ...``)."""

    exit_code = 7


class NotTrickles(ConnectError):
    """The peer does not speak Trickles; the caller should fall back to TCP."""


class TransferTimeout(TransportError):
    """A connect or transfer deadline expired."""

    exit_code = 28


class PartialTransfer(TransportError):
    """The server closed the connection before the announced body was complete."""

    exit_code = 18


class EmptyReply(TransportError):
    """The server closed the connection without sending any response bytes."""

    exit_code = 52


class SendError(TransportError):
    """Sending the request failed (``Send failure: Broken pipe``)."""

    exit_code = 55


class RecvError(TransportError):
    """Receiving failed at the OS level (``Recv failure: Connection reset by peer``)."""

    exit_code = 56


class ProtocolError(TransportError):
    """The server's reply is not valid HTTP (curl's ``Weird server reply``)."""

    exit_code = 8


@dataclass
class TransferStats:
    """Transport figures reported by ``tcurl -v`` and ``-w %{num_retransmits}``.

    ``rtt_s`` and ``cwnd`` are ``None`` when the transport cannot observe them.
    Counters are cumulative over the life of the connection.
    """

    transport: str
    rtt_s: float | None = None
    cwnd: int | None = None
    retransmissions: int = 0
    continuations: int = 0
    bytes_received: int = 0


@dataclass
class Response:
    """An HTTP response head plus a body stream.

    ``raw_headers`` is the status line and header block as shown by ``-i``/``-v``
    (CRLF line endings, terminated by an empty line).  ``body`` must be consumed to
    the end (or the connection closed) before the next request on the same connection.
    """

    http_version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    raw_headers: bytes = b""

    def header(self, name: str) -> str | None:
        """Return the values of header ``name`` joined by ``", "`` (None if absent)."""
        return header_value(self.headers, name)

    @property
    def content_length(self) -> int | None:
        """The announced body size, if the server sent a usable Content-Length."""
        return parse_content_length(self.headers)


class Connection(Protocol):
    """One client connection carrying sequential HTTP requests."""

    async def request(self, method: str, target: str, headers: list[tuple[str, str]]) -> Response:
        """Send a request and return once the response head arrived; the body streams."""
        ...

    def stats(self) -> TransferStats:
        """Return the transport figures observed so far."""
        ...

    async def aclose(self) -> None:
        """Release the connection; must be safe to call more than once."""
        ...


class Transport(Protocol):
    """A way of reaching an HTTP server (``tcp`` or ``trickles``)."""

    name: str

    async def connect(self, host: str, port: int, *, timeout: float) -> Connection:
        """Open a connection, raising a :class:`TransportError` subclass on failure."""
        ...


def header_value(headers: list[tuple[str, str]], name: str) -> str | None:
    """Values of header ``name`` (case-insensitive) joined by ``", "``, or None if absent."""
    wanted = name.lower()
    values = [value for key, value in headers if key.lower() == wanted]
    return ", ".join(values) if values else None


def parse_content_length(headers: list[tuple[str, str]]) -> int | None:
    """The Content-Length announced in ``headers``, or None if absent or unusable."""
    value = header_value(headers, "content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def format_raw_headers(http_version: str, status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    """Render a response head the way it appeared on the wire (for transports that parse)."""
    lines = [f"HTTP/{http_version} {status} {reason}".rstrip()]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
