"""An attacker's toolkit against a real ``trickles serve --metrics`` process on loopback.

Counting is exact: the server handles its socket's datagrams in arrival order, so once the answer
to a probe SYN (sent after the attack) is back, every attack datagram has been stepped; the UDP
counters are then read once the server's received-datagram count covers everything sent.
"""

from __future__ import annotations

import secrets
import socket
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from trickles import wire
from trickles.connection import ClientConnection, State
from trickles.wire import InputSeg

from ..integration.conftest import HOST

SYN_SIZE = 160
"""Probe and flood SYNs: comfortably above the smallest answerable SYN (28 + 47 bytes)."""


def http_get(path: str) -> bytes:
    return f"GET /{path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def syn(path: str = "one.bin", nonce: int | None = None, size: int = SYN_SIZE) -> bytes:
    """A well-formed SYN asking for ``path`` in region 0, zero-padded to ``size`` bytes."""
    seg = InputSeg(0, 0, True, b"", http_get(path))
    n = secrets.randbits(64) if nonce is None else nonce
    return wire.encode_syn(0, n, [seg], pad_to=size)


@dataclass
class Scrape:
    """One /metrics scrape of worker 0: ``{(sample name, sorted label items): value}``."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def get(self, name: str, **labels: str) -> float:
        want = {"worker": "0", **labels} if name.startswith("trickles_") else labels
        for (n, ls), v in self.samples.items():
            if n == name and all(dict(ls).get(k) == val for k, val in want.items()):
                return v
        raise KeyError(f"{name} {labels} not in the scrape")

    def drops(self) -> dict[str, float]:
        return {
            dict(ls)["reason"]: v
            for (n, ls), v in self.samples.items()
            if n == "trickles_packets_dropped_total" and dict(ls).get("worker") == "0"
        }

    @property
    def rss(self) -> float:
        return self.get("process_resident_memory_bytes")


def scrape(mport: int) -> Scrape:
    last: Exception | None = None
    for _ in range(50):  # the exporter starts just after the server's TCP listener
        try:
            with urllib.request.urlopen(f"http://{HOST}:{mport}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            break
        except OSError as e:
            last = e
            time.sleep(0.1)
    else:
        raise AssertionError(f"no metrics on port {mport}: {last}")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Scrape(out)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The drop reasons whose counters moved, and by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((HOST, 0))
    return s


def replies(sock: socket.socket, wait: float = 0.3) -> list[bytes]:
    """Every datagram that arrives within ``wait`` seconds of the last one."""
    got = []
    sock.settimeout(wait)
    try:
        while True:
            got.append(sock.recv(65536))
    except TimeoutError:
        return got


def drain(sock: socket.socket) -> list[bytes]:
    """Whatever is queued on ``sock`` now, without waiting."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(65536))
    except BlockingIOError:
        return got


class Server:
    """A running server's UDP address and metrics port, with an ordering barrier."""

    def __init__(self, port: int, mport: int) -> None:
        self.addr = (HOST, port)
        self.mport = mport
        self.probe = udp_socket()

    def close(self) -> None:
        self.probe.close()

    def barrier(self, expect_in: float | None = None, timeout: float = 20.0) -> Scrape:
        """Wait until the server has handled everything sent before this call; scrape it.

        ``expect_in``: the received-datagram count (probe included) to wait for, since the UDP
        counters are added per batch, after the batch's answers went out.
        """
        self.sync(timeout)
        deadline = time.monotonic() + timeout
        last: tuple[float, float] | None = None
        while True:
            m = scrape(self.mport)
            got = (m.get("trickles_packets_received_total"), m.get("trickles_packets_sent_total"))
            if expect_in is not None and got[0] >= expect_in:
                return m
            if expect_in is None and got == last:
                # The loop adds its counters at the end of a batch, just after sending the probe's
                # answer: wait until they stop moving, or a reading may miss that batch.
                return m
            last = got
            if time.monotonic() > deadline:
                raise AssertionError(f"the server received fewer datagrams than {expect_in}")
            time.sleep(0.02)

    def sync(self, timeout: float = 20.0) -> None:
        """Return once the server has stepped every datagram sent to it before this call."""
        drain(self.probe)
        self.probe.sendto(syn(), self.addr)
        self.probe.settimeout(timeout)
        answer = self.probe.recv(65536)
        assert wire.decode_response_untrusted(answer).type == wire.R_SYNACK

    def send_all(self, sock: socket.socket, datagrams: Iterable[bytes]) -> tuple[int, int]:
        """Send ``datagrams`` from ``sock``; returns (count, bytes)."""
        n = b = 0
        for d in datagrams:
            b += sock.sendto(d, self.addr)
            n += 1
        return n, b


def open_connection(
    sock: socket.socket, server: tuple[str, int], path: str = "1m.bin"
) -> tuple[ClientConnection, bytes, list[bytes]]:
    """Handshake by hand from ``sock``: (client, SYN-ACK datagram, its first REQUEST datagrams)."""
    conn = ClientConnection(client_nonce=secrets.randbits(64))
    conn.connect(http_get(path), time.monotonic())
    [first] = conn.datagrams_to_send(time.monotonic())
    sock.sendto(first, server)
    answers = replies(sock)
    assert len(answers) == 1, f"expected one SYN-ACK, got {len(answers)} datagrams"
    conn.receive_datagram(answers[0], time.monotonic())
    assert conn.state is State.OPEN, "no SYN-ACK from the server"
    out = conn.datagrams_to_send(time.monotonic())
    assert out and out[0][1] == wire.ReqType.REQUEST, out
    return conn, answers[0], out
