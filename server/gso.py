"""UDP segmentation offload: many datagrams per system call, on both ends.

Linux (4.18 and later) sends a buffer of equal-size segments as separate datagrams in one
``sendmsg`` carrying a ``UDP_SEGMENT`` control message (GSO; the last segment may be shorter), and
hands a receiver that set ``UDP_GRO`` such a batch whole, with its segment size in a control message.
On loopback one GSO call costs about a third of the ``sendto`` calls it replaces, and with GRO at the
receiver a ninth of the send and receive calls together (docs/ARCHITECTURE.md §13 has the figures).

Which datagrams share a call, and the padding that gives them one size, is planned by the core's
:func:`trickles.runs.plan_runs` (pure, compiled with the core).

Support is detected once per socket; a kernel or path that refuses a GSO send (``EIO`` from a device
without checksum offload, ``EINVAL``, ...) turns GSO off for that socket, and the refused datagrams go
out one by one.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

from trickles.runs import plan_runs

UDP_SEGMENT = 103
"""``UDP_SEGMENT`` of <linux/udp.h> (Python's socket module does not export it)."""
UDP_GRO = 104
"""``UDP_GRO`` of <linux/udp.h>."""
GRO_BUFFER = 65536
"""Receive buffer for one coalesced batch (a GRO batch never exceeds a 64 KiB datagram)."""
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_REFUSED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.EMSGSIZE)


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows ``UDP_SEGMENT`` for this socket (asked once, at start)."""
    try:
        sock.getsockopt(socket.IPPROTO_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


class GsoSender:
    """Sends a list of datagrams to one address in as few calls as GSO allows.

    ``calls``, ``datagrams``, ``would_block`` and ``errors`` count what happened (for metrics);
    ``refused`` is set when a send reported ICMP port unreachable (a connected socket's peer is gone).
    """

    def __init__(self, sock: socket.socket, enabled: bool = True) -> None:
        self.sock = sock
        self.enabled = enabled and gso_supported(sock)
        self.calls = 0
        self.datagrams = 0
        self.would_block = 0
        self.errors = 0
        self.refused = False
        self.last_error: OSError | None = None
        self._cmsg: dict[int, list[tuple[int, int, bytes]]] = {}

    def _control(self, size: int) -> list[tuple[int, int, bytes]]:
        c = self._cmsg.get(size)
        if c is None:
            c = self._cmsg[size] = [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        return c

    def send(self, datagrams: Sequence[bytes], addr: tuple[Any, ...] | None = None) -> int:
        """Send ``datagrams`` in order; returns the bytes sent. ``addr`` None: a connected socket.

        A full send buffer drops what did not fit (a loss like any other: the protocol recovers).
        """
        sock = self.sock
        sent = 0
        if not self.enabled or len(datagrams) == 1:
            for d in datagrams:
                sent += self._one(d, addr)
            return sent
        for size, parts in plan_runs(datagrams):
            if len(parts) == 1:
                sent += self._one(parts[0], addr)
                continue
            count = -(-sum(map(len, parts)) // size)
            try:  # the parts go as the call's iovecs: the kernel gathers them, no join here
                if addr is None:
                    sent += sock.sendmsg(parts, self._control(size))
                else:
                    sent += sock.sendmsg(parts, self._control(size), 0, addr)
                self.calls += 1
                self.datagrams += count
            except (BlockingIOError, InterruptedError):
                self.calls += 1
                self.would_block += count
            except ConnectionRefusedError:
                self.refused = True
            except OSError as e:
                if e.errno not in _REFUSED:
                    self.calls += 1
                    self.errors += count
                    self.last_error = e
                    continue
                # The path refuses segmentation offload: stop asking, send this run one by one.
                self.enabled = False
                buf = b"".join(parts)
                for k in range(0, len(buf), size):
                    sent += self._one(buf[k : k + size], addr)  # padding is valid on the wire
        return sent

    def _one(self, d: bytes, addr: tuple[Any, ...] | None) -> int:
        self.calls += 1
        try:
            n = self.sock.send(d) if addr is None else self.sock.sendto(d, addr)
        except (BlockingIOError, InterruptedError):
            self.would_block += 1
            return 0
        except ConnectionRefusedError:
            self.refused = True
            return 0
        except OSError as e:
            self.errors += 1
            self.last_error = e
            return 0
        self.datagrams += 1
        return n


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to deliver GSO batches whole (see :func:`receive_batch`)."""
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def split_batch(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> list[bytes]:
    """The datagrams of one ``recvmsg`` result on a GRO socket (one unless it was coalesced)."""
    for level, kind, value in ancdata:
        if level == socket.IPPROTO_UDP and kind == UDP_GRO and len(value) >= 4:
            (size,) = struct.unpack_from("=i", value)
            if 0 < size < len(data):
                return [data[k : k + size] for k in range(0, len(data), size)]
    return [data]


def receive_batch(sock: socket.socket) -> tuple[list[bytes], Any]:
    """One ``recvmsg`` on a GRO socket: its datagrams (one unless coalesced) and their sender.

    Raises what ``recvmsg`` raises.
    """
    data, ancdata, _, addr = sock.recvmsg(GRO_BUFFER, _GRO_CMSG_SPACE)
    return (split_batch(data, ancdata) if ancdata else [data]), addr
