"""HTTP/3 (aioquic) peer for the loopback throughput benchmark; loopback only.

    python bench/aioquic_peer.py serve ROOT PORT        # prints "ready" once listening; SIGTERM stops it
    python bench/aioquic_peer.py get HOST PORT PATH N   # N connections, one GET each; prints "<bytes> <seconds> <cpu seconds>"

The server answers ``GET /name`` with the file ``ROOT/name`` (200 with content-length) or 404. It
streams the body in 64 KiB DATA frames, topping a stream up only while less than ``AHEAD`` bytes are
queued but unsent, so a 40 MB file never sits whole in aioquic's send buffer. Its TLS certificate is a
throwaway self-signed ECDSA P-256 one (CN=localhost, valid one day) made at startup. Both sides use
1452-byte datagrams, the same as Trickles (``trickles.wire.MAX_DATAGRAM``), and the server's socket gets
4 MiB buffers like the Trickles server's. Everything else is aioquic's default: Reno congestion control
with pacing, 1 MiB initial flow-control windows that grow, a 60 s idle timeout, and the kernel's default
buffers on the client sockets (the Trickles client asks for 4 MiB; in a quick trial here that made
aioquic's single download slower and its 100-connection case no faster).
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DATAGRAM = 1452
CHUNK = 64 * 1024
AHEAD = 1024 * 1024  # keep at least this much queued (a client's initial stream window)
SERVER_SOCKBUF = 4 << 20  # as the Trickles server asks for (server/udp.py SOCKBUF)
CLIENT_TIMEOUT = 150.0  # the whole get run; a silent server ends a connection after 60 s (idle timeout)


def _die(msg: str) -> None:
    print(f"aioquic_peer: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def _server_config() -> QuicConfiguration:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_size=DATAGRAM)
    with tempfile.TemporaryDirectory(prefix="aioquic-peer-") as d:
        cert_file, key_file = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        config.load_cert_chain(cert_file, key_file)  # read now; the files go with the directory
    return config


class _Body:
    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.left = size
        self.queued = 0  # stream bytes handed to aioquic (frame headers included, roughly)


class H3Server(QuicConnectionProtocol):
    root: Path = Path(".")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._bodies: dict[int, _Body] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            for body in self._bodies.values():
                body.f.close()
            self._bodies.clear()
            return
        if isinstance(event, StreamReset) and event.stream_id in self._bodies:
            self._bodies.pop(event.stream_id).f.close()
        for h3 in self._http.handle_event(event):
            if isinstance(h3, HeadersReceived):
                self._request(h3)

    def _request(self, ev: HeadersReceived) -> None:
        head = dict(ev.headers)
        target = self._resolve(head.get(b":path", b"")) if head.get(b":method") == b"GET" else None
        if target is None:
            self._http.send_headers(ev.stream_id, [(b":status", b"404"), (b"content-length", b"0")], True)
            return
        f = target.open("rb")
        size = target.stat().st_size
        self._http.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-length", str(size).encode())])
        self._bodies[ev.stream_id] = _Body(f, size)

    def _resolve(self, path: bytes) -> Path | None:
        name = path.decode("latin-1").split("?", 1)[0].lstrip("/")
        if not name:
            return None
        p = (self.root / name).resolve()
        return p if p.is_relative_to(self.root) and p.is_file() else None

    def transmit(self) -> None:
        # Top each body up before aioquic sends what the congestion and flow-control windows allow.
        # aioquic has no public "send buffer low" signal, so this reads the stream's sent offset.
        for sid, body in list(self._bodies.items()):
            stream = self._quic._streams.get(sid)
            if stream is None:
                self._bodies.pop(sid).f.close()
                continue
            while body.queued - stream.sender.highest_offset < AHEAD:
                chunk = body.f.read(min(CHUNK, body.left))
                body.left -= len(chunk)
                last = body.left <= 0 or not chunk
                self._http.send_data(sid, chunk, end_stream=last)
                body.queued += len(chunk) + 9
                if last:
                    self._bodies.pop(sid).f.close()
                    break
        super().transmit()


async def run_server(root: Path, port: int) -> None:
    H3Server.root = root.resolve()
    server = await serve("127.0.0.1", port, configuration=_server_config(), create_protocol=H3Server)
    # The server's one socket takes the ACKs of every connection: with the default buffer it drops
    # thousands of them in the 100-connection case (no throughput change, but no reason to).
    sock = server._transport.get_extra_info("socket")
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SERVER_SOCKBUF)
        except OSError:
            pass
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self.status = b""
        self.got = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated) and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection closed: {event.reason_phrase!r}"))
            self.done.exception()  # mark it retrieved: before a GET is sent, connect() reports the failure
        for h3 in self._http.handle_event(event):
            self._h3(h3)

    def _h3(self, ev: H3Event) -> None:
        if isinstance(ev, HeadersReceived):
            self.status = dict(ev.headers).get(b":status", b"")
        elif isinstance(ev, DataReceived):
            self.got += len(ev.data)
        if isinstance(ev, HeadersReceived | DataReceived) and ev.stream_ended and not self.done.done():
            self.done.set_result(None)

    async def get(self, authority: str, path: str) -> int:
        sid = self._quic.get_next_available_stream_id()
        self._http.send_headers(
            sid,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self.transmit()
        await self.done
        if self.status != b"200":
            raise RuntimeError(f"GET {path}: status {self.status.decode() or '?'}")
        return self.got


async def one_get(host: str, port: int, path: str) -> int:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_size=DATAGRAM)
    config.verify_mode = ssl.CERT_NONE
    config.server_name = "localhost"
    async with connect(host, port, configuration=config, create_protocol=H3Client) as client:
        assert isinstance(client, H3Client)
        return await client.get(f"{host}:{port}", path)


async def run_clients(host: str, port: int, path: str, n: int) -> None:
    t0, cpu0 = time.perf_counter(), time.process_time()
    async with asyncio.timeout(CLIENT_TIMEOUT):
        got = await asyncio.gather(*(one_get(host, port, path) for _ in range(n)))
    print(sum(got), time.perf_counter() - t0, time.process_time() - cpu0, flush=True)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "serve":
        root = Path(argv[1])
        if not root.is_dir():
            _die(f"not a directory: {root}")
        asyncio.run(run_server(root, int(argv[2])))
    elif len(argv) == 5 and argv[0] == "get":
        host, port, path, n = argv[1], int(argv[2]), argv[3], int(argv[4])
        if host not in ("127.0.0.1", "localhost", "::1"):
            _die("loopback only")
        try:
            asyncio.run(run_clients(host, port, path, n))
        except TimeoutError:
            _die(f"timed out after {CLIENT_TIMEOUT:.0f}s")
        except Exception as e:
            _die(f"{type(e).__name__}: {str(e) or 'connection failed'}")
    else:
        _die("usage: aioquic_peer.py serve ROOT PORT | get HOST PORT PATH N")


if __name__ == "__main__":
    main(sys.argv[1:])
