"""The trio side of a Trickles client: a UDP socket driving one :class:`ClientConnection`.

There is no background task: the protocol makes progress whenever the application waits on it
(``receive_some``, a response body, ...). That keeps :func:`connect` a plain function returning a
trio stream, the way ``trio.open_tcp_stream`` does, with nothing to leak when the caller walks away.
The datagram path avoids one ``await`` per datagram: wait for readability, then drain the socket,
with the kernel handing over the server's GSO batches whole (GRO) and the requests of one wake-up
going out in as few calls as their sizes allow (:mod:`trickles.server.gso`).
"""

from __future__ import annotations

import errno
import math
import secrets
import socket
from collections.abc import Callable

import trio

from trickles.congestion import ProtocolConfig
from trickles.connection import ClientConnection, State
from trickles.server.gso import GsoSender, enable_gro, receive_batch

from .api import ConnectError, NotTrickles, RecvError, ResolveError, TransferTimeout


def _receive_one(sock: socket.socket) -> tuple[list[bytes], None]:
    return [sock.recv(65536)], None


async def resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    """(family, sockaddr) for host:port, preferring IPv4; ResolveError if it does not resolve."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ResolveError(f"Could not resolve host: {host}") from e
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    fam, _, _, _, sockaddr = infos[0]
    return int(fam), (str(sockaddr[0]), int(sockaddr[1]))


class Endpoint:
    """A connected UDP socket plus the sans-IO client machine it feeds."""

    def __init__(self, sock: socket.socket, conn: ClientConnection, peer: tuple[str, int]) -> None:
        self.sock = sock
        self.conn = conn
        self.peer = peer
        self.sender = GsoSender(sock)
        self.gro = enable_gro(sock)
        self.receive_calls = 0
        """recv system calls that returned data (fewer than datagrams received when GRO coalesces)."""

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        first_request: bytes = b"",
        probe_timeout: float = 1.5,
        config: ProtocolConfig | None = None,
    ) -> Endpoint:
        """Send the SYN (carrying ``first_request`` as SYN data) and wait for the SYN-ACK.

        Raises NotTrickles when the port answers with ICMP unreachable or stays silent for
        ``probe_timeout`` seconds: the caller may then fall back to TCP.
        """
        fam, sockaddr = await resolve(host, port)
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        sock.setblocking(False)
        try:
            sock.connect(sockaddr)
        except OSError as e:
            sock.close()
            raise ConnectError(f"Failed to connect to {host} port {port}: {e.strerror}") from e
        # Flow control (the receive window): never have more packets in flight than the socket's
        # receive buffer holds (a loopback datagram of ours takes about 2.3 KB of buffer).
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        conn = ClientConnection(
            config, client_nonce=secrets.randbits(64), rwnd_packets=max(rcvbuf // 2400, 16)
        )
        ep = cls(sock, conn, sockaddr)
        conn.connect(first_request, trio.current_time(), fin=bool(first_request))
        try:
            with trio.move_on_after(probe_timeout) as scope:
                await ep.run_until(lambda: conn.state is not State.SYN_SENT)
        except BaseException:
            sock.close()
            raise
        if scope.cancelled_caught or conn.state is not State.OPEN:
            sock.close()
            why = "port unreachable" if ep.refused else f"no Trickles answer within {probe_timeout:g} s"
            raise NotTrickles(f"Failed to connect to {host} port {port}: {why}")
        return ep

    @property
    def refused(self) -> bool:
        """The server's host answered with ICMP port unreachable."""
        return self.sender.refused

    def _flush(self) -> None:
        out = self.conn.datagrams_to_send(trio.current_time())
        if out:
            errors = self.sender.errors
            self.sender.send(out)  # a full send buffer is like a loss; the protocol recovers
            if self.sender.errors != errors and self.sender.last_error is not None:
                raise RecvError(f"Send failure: {self.sender.last_error.strerror}")

    def _drain(self) -> None:
        conn, sock = self.conn, self.sock
        receive = receive_batch if self.gro else _receive_one
        for _ in range(4096):
            try:
                batch, _ = receive(sock)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                self.sender.refused = True
                if conn.state is State.SYN_SENT:
                    raise NotTrickles(
                        f"Failed to connect to {self.peer[0]} port {self.peer[1]}: port unreachable"
                    )
                continue
            except OSError as e:
                if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise RecvError(f"Recv failure: {e.strerror}") from e
            self.receive_calls += 1
            now = trio.current_time()
            for data in batch:
                conn.receive_datagram(data, now)

    async def run_until(self, done: Callable[[], bool]) -> None:
        """Drive the protocol until ``done()`` holds (cancel the caller's scope for a deadline)."""
        conn = self.conn
        while True:
            self._flush()
            if done():
                return
            if conn.state is State.FAILED:
                raise TransferTimeout("Trickles connection timed out (no progress after retransmissions)")
            timer = conn.get_timer()
            wait = math.inf if timer is None else max(timer - trio.current_time(), 0.0)
            with trio.move_on_after(wait):
                await trio.lowlevel.wait_readable(self.sock)
            self._drain()
            now = trio.current_time()
            t = conn.get_timer()
            if t is not None and now >= t:
                conn.handle_timer(now)

    def close(self) -> None:
        try:
            self.conn.close(trio.current_time())
            self._flush()
        except Exception:  # best effort: the server keeps no state anyway
            pass
        self.sock.close()
