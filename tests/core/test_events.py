"""The minisocket event API: receive / send, extracting events to another replica, SKIP, input
continuations spanning several packets, and the soft-state cache being droppable."""

from __future__ import annotations

import pytest

from trickles.engine import ServerConfig, ServerEngine
from trickles.errors import BadMac, DropReason
from trickles.keys import KeyRing, ServerKey
from trickles.minisocket import EventKind, Minisocket
from trickles.sim.network import transfer

from .helpers import ADDR, MASTER, T0, UnknownLengthApp, drive, engine, handshake, sim_flow


def test_receive_then_send_equals_step() -> None:
    a, b = engine(), engine()
    _cli, reqs = handshake(a)
    q = reqs[0]
    via_step = a.step(q, ADDR, T0 + 0.02).datagrams
    msk = b.receive(q, ADDR, T0 + 0.02)
    assert isinstance(msk, Minisocket) and msk.kind == EventKind.REQUEST and msk.n_slots == 3
    b.app.handle(msk)
    assert b.send(msk).datagrams == via_step


def test_extracted_events_are_answered_by_another_replica() -> None:
    a, b = engine(), engine()
    cli, reqs = handshake(a)
    msk = a.receive(reqs[0], ADDR, T0 + 0.02)
    assert isinstance(msk, Minisocket)
    blob = a.extract_events([msk], T0 + 0.02)
    with pytest.raises(ValueError, match="already"):
        a.extract_events([msk], T0 + 0.02)  # spent
    moved = b.insert_events(blob, T0 + 0.03)
    assert len(moved) == 1
    b.app.handle(moved[0])
    out = b.send(moved[0]).datagrams
    assert len(out) == 3
    for d in out:
        cli.receive_datagram(d, T0 + 0.03)
    assert cli.regions[0].next_off > 0
    tampered = bytearray(blob)
    tampered[5] ^= 1
    with pytest.raises(BadMac):
        b.insert_events(bytes(tampered), T0 + 0.03)
    # A blob inserts once, and only within the freshness horizon.
    from trickles.errors import Replay, Stale

    with pytest.raises(Replay):
        b.insert_events(blob, T0 + 0.04)
    c = engine()
    with pytest.raises(Stale):
        c.insert_events(blob, T0 + 1000)
    # The original request was recorded by a's replay filter: it cannot be answered twice there.
    assert a.step(reqs[0], ADDR, T0 + 0.02).drop is DropReason.REPLAY


def test_skip_ends_an_object_of_unknown_length() -> None:
    obj = bytes(range(256)) * 300
    eng = ServerEngine(KeyRing(ServerKey(1, MASTER)), UnknownLengthApp({b"obj": obj}), ServerConfig())
    cli, reqs = handshake(eng)
    drive(eng, cli, reqs, T0 + 0.02)
    assert cli.regions[0].complete
    assert cli.read(0) == obj


def test_request_head_spanning_several_packets(tmp_path: object) -> None:
    """A long HTTP head travels as INPUT segments with MAC'd input continuations in between."""
    from pathlib import Path

    from trickles.apps.httpapp import StaticHttpApp
    from trickles.apps.static import StaticSite

    root = Path(str(tmp_path))
    (root / "f.txt").write_bytes(b"x" * 5000)
    key = ServerKey(1, MASTER)
    ring = KeyRing(key)
    eng = ServerEngine(ring, StaticHttpApp(StaticSite(root), ring), ServerConfig())
    head = (
        b"GET /f.txt HTTP/1.1\r\nHost: h\r\n"
        + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 200) for i in range(30))
        + b"\r\n"
    )
    assert len(head) > 3 * 1200
    from trickles.connection import ClientConnection

    cli = ClientConnection(client_nonce=9)
    cli.connect(head, T0)
    drive(eng, cli, cli.datagrams_to_send(T0), T0)
    resp = cli.read(0)
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n") and resp.endswith(b"\r\n\r\n" + b"x" * 5000)
    assert eng.stats.dropped == {}


def test_cache_is_soft_state() -> None:
    with_cache = transfer(500_000, 3, loss=0.02)
    assert with_cache.server.cache_hits > 100
    without = transfer(500_000, 3, loss=0.02, cache_size=0)
    assert without.server.cache_hits == 0
    assert without.data == with_cache.data
    # Same decisions either way: the cache only saves the MAC check and the parse.
    assert without.client.conn.stats.requests_sent == with_cache.client.conn.stats.requests_sent


def test_dropping_the_cache_mid_transfer_breaks_nothing() -> None:
    obj = bytes(range(256)) * 4000
    sim, eng, cli = sim_flow(4, obj, bandwidth=10e6, queue=100)
    for t in (0.05, 0.1, 0.15, 0.2):
        sim.at(t, eng.drop_cache)
    sim.run(60, stop=lambda: cli.finished)
    assert bytes(cli.data) == obj
    assert eng.cache_misses > 4 and eng.cache_hits > 0
