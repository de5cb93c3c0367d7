"""Tests of TcpTransport against a small h11 file server (which test_cli.py reuses)."""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import pytest
import trio

from trickles.client.api import (
    ConnectError,
    EmptyReply,
    PartialTransfer,
    RecvError,
    ResolveError,
    Response,
    TransferTimeout,
)
from trickles.client.tcp_transport import TcpTransport

BIG = random.Random(1).randbytes(1 << 20)
MEDIUM = random.Random(2).randbytes(400_000)
SMALL = b"hello, trickles\n"
FILES = {
    "/empty.bin": b"",
    "/small.txt": SMALL,
    "/big.bin": BIG,
    "/400k.bin": MEDIUM,
    "/dir/file.txt": b"in a directory\n",
    "/dir/": b"<html>index</html>\n",
}
CHUNK = 64 * 1024


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as an inclusive (first, last), or None if unsatisfiable."""
    spec = value.removeprefix("bytes=")
    first_text, _, last_text = spec.partition("-")
    if not first_text:
        first, last = max(size - int(last_text), 0), size - 1
    else:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    return (first, last) if first <= last < size else None


@dataclass
class FileServer:
    """HTTP/1.1 keep-alive server for FILES plus misbehaving endpoints:

    ``/slow`` stalls mid-body, ``/stall`` stalls before the head, ``/flaky/KEY/N`` answers
    503 the first N times, ``/delay/SECS/TEXT`` answers TEXT late, ``/chunked``,
    ``/close`` (Connection: close), ``/drop`` (closes silently after answering),
    ``/truncated`` (announces 100 bytes, sends 10), ``/empty-reply``, ``/reset`` (RST).
    Anything else is 404.
    """

    port: int = 0
    connections: int = 0
    active: int = 0  # requests being answered right now
    max_active: int = 0  # the most answered at once: >1 only if requests overlapped
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    flaky_hits: dict[str, int] = field(default_factory=dict)

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._serve, listeners)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next_request(stream, conn)
                if request is None:
                    return
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    keep_going = await self._respond(stream, conn, request)
                finally:
                    self.active -= 1
                if not keep_going or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def _next_request(self, stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
        request = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(CHUNK))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request) -> bool:
        """Answer one request; False means the connection must be dropped."""
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0]
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.requests.append((method, path, headers))
        send = _Sender(stream, conn, head_only=method == "HEAD")
        parts = path.split("/")
        if path in FILES:
            await self._send_file(send, FILES[path], headers.get("range"))
        elif path == "/slow":
            await send.head(200, [("Content-Length", "1000")])
            await send.data(b"x" * 10)
            await trio.sleep(60)
        elif path == "/stall":
            await trio.sleep(60)
        elif len(parts) == 4 and parts[1] == "flaky":
            hits = self.flaky_hits[parts[2]] = self.flaky_hits.get(parts[2], 0) + 1
            if hits <= int(parts[3]):
                await send.simple(503, b"busy\n")
            else:
                await send.simple(200, f"ok after {hits - 1}\n".encode())
        elif len(parts) == 4 and parts[1] == "delay":
            await trio.sleep(float(parts[2]))
            await send.simple(200, parts[3].encode())
        elif path == "/chunked":
            await send.head(200, [("Content-Type", "text/plain")])
            for piece in (b"one ", b"two ", b"three\n"):
                await send.data(piece)
            await send.end()
        elif path == "/close":
            await send.simple(200, b"closing\n", [("Connection", "close")])
            return False
        elif path == "/drop":
            await send.simple(200, b"dropped\n")
            return False
        elif path == "/truncated":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            return False
        elif path == "/empty-reply":
            return False
        elif path == "/reset":
            await send.head(200, [("Content-Length", str(len(BIG)))])
            await send.data(BIG[:1000])
            await trio.sleep(0.05)
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        else:
            await send.simple(404, b"not found\n")
        return True

    async def _send_file(self, send: _Sender, data: bytes, range_header: str | None) -> None:
        content_type = ("Content-Type", "application/octet-stream")
        if range_header is None:
            await send.simple(200, data, [content_type])
            return
        span = parse_range(range_header, len(data))
        if span is None:
            await send.simple(416, b"", [("Content-Range", f"bytes */{len(data)}")])
            return
        first, last = span
        extra = [content_type, ("Content-Range", f"bytes {first}-{last}/{len(data)}")]
        await send.simple(206, data[first : last + 1], extra)


@dataclass
class _Sender:
    stream: trio.SocketStream
    conn: h11.Connection
    head_only: bool

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        response = h11.Response(
            status_code=status,
            reason=HTTPStatus(status).phrase,
            headers=[("Server", "test"), *headers],
        )
        await self.stream.send_all(self.conn.send(response) or b"")

    async def data(self, data: bytes) -> None:
        if not self.head_only:
            await self.stream.send_all(self.conn.send(h11.Data(data=data)) or b"")

    async def end(self) -> None:
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")

    async def simple(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        await self.head(status, [("Content-Length", str(len(body))), *(headers or [])])
        for offset in range(0, len(body), CHUNK):
            await self.data(body[offset : offset + CHUNK])
        await self.end()


@pytest.fixture
async def server(nursery: trio.Nursery) -> FileServer:
    file_server = FileServer()
    await file_server.start(nursery)
    return file_server


def closed_port() -> int:
    """A local port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def read_body(response: Response) -> bytes:
    return b"".join([chunk async for chunk in response.body])


def host_headers(server: FileServer) -> list[tuple[str, str]]:
    return [("Host", f"127.0.0.1:{server.port}")]


# --------------------------------------------------------------------------- tests


async def test_get_streams_content_length_body(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    try:
        response = await conn.request("GET", "/big.bin", host_headers(server))
        assert (response.http_version, response.status, response.reason) == ("1.1", 200, "OK")
        assert response.content_length == len(BIG)
        assert response.header("content-type") == "application/octet-stream"
        assert response.raw_headers.startswith(b"HTTP/1.1 200 OK\r\nServer: test\r\n")
        assert response.raw_headers.endswith(b"\r\n\r\n")
        assert await read_body(response) == BIG
    finally:
        await conn.aclose()


async def test_keep_alive_reuses_one_socket(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    for path in ("/small.txt", "/dir/file.txt", "/nope"):
        response = await conn.request("GET", path, host_headers(server))
        assert await read_body(response) == FILES.get(path, b"not found\n")
    await conn.aclose()
    await conn.aclose()  # idempotent
    assert server.connections == 1


async def test_head_has_no_body_and_keeps_connection(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    response = await conn.request("HEAD", "/big.bin", host_headers(server))
    assert response.content_length == len(BIG)
    assert await read_body(response) == b""
    response = await conn.request("GET", "/small.txt", host_headers(server))
    assert await read_body(response) == SMALL
    await conn.aclose()
    assert server.connections == 1


async def test_chunked_body(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    response = await conn.request("GET", "/chunked", host_headers(server))
    assert response.header("transfer-encoding") == "chunked"
    assert response.content_length is None
    assert await read_body(response) == b"one two three\n"
    await conn.aclose()


async def test_unread_body_or_close_header_means_new_socket(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    await conn.request("GET", "/big.bin", host_headers(server))  # body left unread
    response = await conn.request("GET", "/close", host_headers(server))
    assert await read_body(response) == b"closing\n"
    response = await conn.request("GET", "/small.txt", host_headers(server))
    assert await read_body(response) == SMALL
    await conn.aclose()
    assert server.connections == 3


async def test_silently_dropped_keep_alive_is_retried_once(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    assert await read_body(await conn.request("GET", "/drop", host_headers(server))) == (b"dropped\n")
    await trio.sleep(0.05)  # let the server's FIN arrive
    assert await read_body(await conn.request("GET", "/small.txt", host_headers(server))) == (SMALL)
    await conn.aclose()
    assert server.connections == 2


async def test_truncated_body_is_partial_transfer(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    response = await conn.request("GET", "/truncated", host_headers(server))
    with pytest.raises(PartialTransfer) as caught:
        await read_body(response)
    assert caught.value.exit_code == 18
    assert caught.value.message == "end of response with 90 bytes missing"
    await conn.aclose()


async def test_empty_reply(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    with pytest.raises(EmptyReply) as caught:
        await conn.request("GET", "/empty-reply", host_headers(server))
    assert (caught.value.exit_code, caught.value.message) == (52, "Empty reply from server")
    await conn.aclose()


async def test_reset_mid_body_is_recv_error(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    response = await conn.request("GET", "/reset", host_headers(server))
    with pytest.raises(RecvError) as caught:
        await read_body(response)
    assert caught.value.exit_code == 56
    assert caught.value.message == "Recv failure: Connection reset by peer"
    await conn.aclose()


async def test_connection_refused() -> None:
    port = closed_port()
    with pytest.raises(ConnectError) as caught:
        await TcpTransport().connect("127.0.0.1", port, timeout=5)
    assert caught.value.exit_code == 7
    assert caught.value.message.startswith(f"Failed to connect to 127.0.0.1 port {port} after ")
    assert caught.value.message.endswith(" ms: Connection refused")


async def test_unresolvable_host() -> None:
    with pytest.raises(ResolveError) as caught:
        await TcpTransport().connect("nonexistent.invalid", 80, timeout=10)
    assert caught.value.exit_code == 6
    assert caught.value.message == "Could not resolve host: nonexistent.invalid"


async def test_connect_timeout(server: FileServer) -> None:
    with pytest.raises(TransferTimeout) as caught:
        await TcpTransport().connect("127.0.0.1", server.port, timeout=0)
    assert caught.value.exit_code == 28
    assert caught.value.message.startswith("Connection timed out after ")


async def test_cancellation_mid_body_is_clean(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    response = await conn.request("GET", "/slow", host_headers(server))
    received = b""
    with trio.move_on_after(0.3) as scope:
        async for chunk in response.body:
            received += chunk
    assert scope.cancelled_caught
    assert received == b"x" * 10
    await conn.aclose()


async def test_stats(server: FileServer) -> None:
    conn = await TcpTransport().connect("127.0.0.1", server.port, timeout=5)
    await read_body(await conn.request("GET", "/big.bin", host_headers(server)))
    stats = conn.stats()
    await conn.aclose()
    assert stats.transport == "tcp"
    assert stats.bytes_received > len(BIG)
    assert stats.continuations == 0
    assert stats.cwnd is None
    if hasattr(socket, "TCP_INFO"):
        assert stats.rtt_s is not None and 0 <= stats.rtt_s < 1
    assert conn.stats().bytes_received == stats.bytes_received  # still answers after close
