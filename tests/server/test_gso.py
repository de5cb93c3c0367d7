"""UDP segmentation offload (server/gso.py): run planning as a property, then real sockets on
loopback (GSO sends, GRO receives, the fallback when a path refuses), then the whole server loop."""

from __future__ import annotations

import errno
import functools
import socket
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.core.helpers import engine
from trickles import runs, wire
from trickles.client.endpoint import Endpoint
from trickles.server import gso
from trickles.server.udp import UdpStats, open_udp_socket, serve_udp

FULL, MINIMAL = 1429, 1405  # a child with a delta continuation, and one without


def datagram(rtype: int, size: int, tag: int = 0) -> bytes:
    head = wire.RESP_HEAD.pack(1, rtype, 0, 0, tag, 0, 0, 0, 0)
    return head + wire.data_chunk(tag, bytes(size - len(head) - wire.CHUNK_DATA.size))


def strip(segment: bytes) -> bytes:
    """The datagram in a segment: its DATA chunk's end, padding dropped."""
    n = wire.RESP_HEAD.size
    _, _, length = wire.CHUNK_DATA.unpack_from(segment, n)
    return segment[: n + wire.CHUNK_DATA.size + length]


sizes = st.integers(wire.RESP_HEAD.size + wire.CHUNK_DATA.size, wire.MAX_DATAGRAM)
kinds = st.sampled_from([wire.R_DATA, wire.R_RETRANSMIT, wire.R_SYNACK])
lists = st.lists(st.tuples(kinds, sizes), max_size=150)


@given(lists, st.integers(1, 64), st.integers(1500, 65000))
def test_runs_keep_every_datagram_in_order_within_the_kernels_limits(
    spec: list[tuple[int, int]], max_segments: int, max_bytes: int
) -> None:
    ds = [datagram(k, n, i) for i, (k, n) in enumerate(spec)]
    out: list[bytes] = []
    for size, parts in runs.plan_runs(ds, max_segments=max_segments, max_bytes=max_bytes):
        buf = b"".join(parts)
        segs = [buf[k : k + size] for k in range(0, len(buf), size)]
        if len(segs) > 1:
            assert len(segs) <= max_segments and len(buf) <= max_bytes
        assert all(len(s) == size for s in segs[:-1]) and len(segs[-1]) <= size
        for s in segs:
            d = strip(s)
            pad = s[len(d) :]
            assert not any(pad) and len(pad) <= wire.PAD_LIMIT
            if pad:  # only data packets grow, a SYN-ACK never does
                assert d[1] in (wire.R_DATA, wire.R_RETRANSMIT)
                assert wire.decode_response_untrusted(s).chunks == wire.decode_response_untrusted(d).chunks
            out.append(d)
    assert out == ds


def test_a_window_of_mixed_children_is_one_run() -> None:
    """What makes GSO pay for Trickles: children with and without a continuation alternate, and
    still go out in one call (the shorter ones padded by 24 bytes)."""
    ds = [datagram(wire.R_DATA, FULL if i % 2 else MINIMAL, i) for i in range(40)]
    planned = runs.plan_runs(ds)
    assert [(size, len(b"".join(parts))) for size, parts in planned] == [(FULL, 40 * FULL)]
    big = [datagram(wire.R_DATA, FULL, i) for i in range(100)]
    assert [len(p) for _, p in runs.plan_runs(big)] == [45, 45, 10]  # 45 x 1429 B fit 65,000 B


def test_a_syn_ack_is_never_padded() -> None:
    ds = [datagram(wire.R_SYNACK, 1000), datagram(wire.R_DATA, 1010), datagram(wire.R_DATA, 1010)]
    planned = runs.plan_runs(ds)
    assert planned[0] == (1000, [ds[0]])
    assert b"".join(b"".join(p) for _, p in planned) == b"".join(ds)


def pair(gro: bool) -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if gro:
        assert gso.enable_gro(rx)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    rx.settimeout(5)
    return tx, rx


@pytest.mark.parametrize("gro", [False, True])
def test_one_call_sends_a_window_as_separate_datagrams(gro: bool) -> None:
    ds = [datagram(wire.R_DATA, FULL if i % 2 else MINIMAL, i) for i in range(40)]
    tx, rx = pair(gro)
    with tx, rx:
        sender = gso.GsoSender(tx)
        assert sender.enabled, "this kernel has UDP_SEGMENT (Linux >= 4.18)"
        assert sender.send(ds, rx.getsockname()) == 40 * FULL
        assert (sender.calls, sender.datagrams) == (1, 40)
        got: list[bytes] = []
        calls = 0
        while len(got) < 40:
            got += gso.receive_batch(rx)[0] if gro else [rx.recv(65536)]
            calls += 1
    assert [strip(g) for g in got] == ds and all(len(g) == FULL for g in got[:-1])
    assert calls == (1 if gro else 40)  # GRO: the whole batch in one receive


class RefusingSocket(socket.socket):
    """A path whose device cannot segment: every GSO send fails the way Linux reports it (EIO)."""

    def sendmsg(self, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")


def test_a_path_that_refuses_gso_falls_back_to_one_send_per_datagram() -> None:
    ds = [datagram(wire.R_DATA, FULL, i) for i in range(5)]
    unused, rx = pair(False)
    unused.close()
    tx = RefusingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    with tx, rx:
        sender = gso.GsoSender(tx)
        before = sender.enabled
        sender.send(ds, rx.getsockname())
        assert (before, sender.enabled, sender.datagrams, sender.errors) == (True, False, 5, 0)
        sender.send(ds, rx.getsockname())  # no second attempt: detected once
        assert sender.calls == 10  # one sendto per datagram (the refused call sent nothing)
        assert [rx.recv(2048) for _ in range(10)] == ds + ds


@pytest.mark.parametrize("use_gso", [True, False])
async def test_the_server_loop_sends_a_download_in_few_calls(use_gso: bool) -> None:
    """A real download through serve_udp with the real client: with segmentation offload each side
    makes a fraction of the send and receive calls it makes without, and the bytes are right."""
    obj = bytes(range(256)) * 2000  # 512 KB
    eng = engine(objects={b"obj": obj})
    sock = open_udp_socket("127.0.0.1", 0)
    stats = UdpStats()
    with trio.fail_after(30), sock:
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(functools.partial(serve_udp, eng, sock, stats=stats, gso=use_gso))
            ep = await Endpoint.open(*addr, first_request=b"obj", probe_timeout=5)
            try:
                r0 = ep.conn.regions[0]
                await ep.run_until(lambda: r0.complete or r0.error is not None)
                data = ep.conn.read(0)
            finally:
                ep.close()
            nursery.cancel_scope.cancel()
    assert data == obj
    assert stats.datagrams_out >= len(obj) // wire.MSS
    if use_gso:
        assert stats.send_calls * 4 < stats.datagrams_out, stats
        assert ep.receive_calls * 4 < stats.datagrams_out
        # the client's requests of one wake-up: one GSO call out, one GRO receive in
        assert stats.receive_calls * 2 < stats.datagrams_in and ep.sender.calls * 2 < stats.datagrams_in
    else:
        assert stats.send_calls == stats.datagrams_out and stats.receive_calls == stats.datagrams_in
        assert ep.receive_calls >= stats.datagrams_out - 2  # a datagram or two may be lost
