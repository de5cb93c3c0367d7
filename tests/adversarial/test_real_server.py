"""One attacker per attack against a real ``trickles serve --metrics`` process over loopback UDP.

Each test asserts what the attacker gets back (nothing, or no more than an honest client), the drop
counters by reason from /metrics, and that the server still serves an honest ``tcurl`` download
afterwards with no ``internal`` drop. Staleness cannot be reached here (``serve`` has no horizon
option and the horizon is 120 s): ``test_stale.py`` covers it on the in-process engine.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trickles import wire
from trickles.continuation import SEALED_LEN
from trickles.wire import InputSeg

from ..integration.conftest import (
    HOST,
    TCURL,
    ServerProcess,
    Site,
    file_sha256,
    free_port,
    run,
    running_server,
    tail,
)
from .net import (
    SYN_SIZE,
    Server,
    delta,
    drain,
    open_connection,
    replies,
    syn,
    udp_socket,
)

FLOOD = 20_000
BURST = 400
"""Datagrams per burst between two barriers: well inside the server's socket buffer, so the kernel
drops none and every count below is exact."""
RSS_GROWTH_MAX = 20 << 20
FLOOD_SECONDS_MAX = 30.0
CONT_AT = wire.REQ_HEAD.size  # where a request's sealed continuation starts


@dataclass
class Target:
    proc: ServerProcess
    net: Server
    site: Site
    tmp: Path


def metrics_args(mport: int) -> tuple[str, str]:
    return "--metrics", f"{HOST}:{mport}"


@pytest.fixture(scope="module")
def target(site: Site, key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("adversarial")
    mport = free_port()
    with running_server(site, key_file, tmp / "server.log", *metrics_args(mport)) as proc:
        net = Server(proc.port, mport)
        try:
            yield Target(proc, net, site, tmp)
        finally:
            net.close()


def assert_still_serves(t: Target, name: str = "100k.bin") -> None:
    """Alive, no ``internal`` drop ever, no traceback logged, and an honest download is intact."""
    assert t.proc.proc is not None and t.proc.proc.poll() is None, tail(t.proc.log)
    out = t.tmp / f"honest-{time.monotonic_ns()}"
    r = run([TCURL, "-s", "-S", "-o", str(out), t.proc.url(name)], timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert file_sha256(out) == t.site.digests[name]
    assert t.net.barrier().drops()["internal"] == 0
    assert "Traceback" not in t.proc.log.read_text(errors="replace"), tail(t.proc.log)


# -- the two former remote crashes ---------------------------------------------------------------------


def test_former_remote_crashes_are_malformed_drops(target: Target) -> None:
    net = target.net
    with udp_socket() as sock:
        _, synack, _ = open_connection(sock, net.addr)
        before = net.barrier().drops()
        # A SYN whose INPUT region id is >= 2**24 (`region << 40` overflowed the u64 offsets).
        for region, size in ((1 << 24, 69), (1 << 24, 400), (0xFFFFFFFF, 400)):
            seg = InputSeg(region, 0, True, b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            d = wire.encode_syn(0, random.getrandbits(64), [seg], pad_to=size)
            assert len(d) >= 69
            sock.sendto(d, net.addr)
        # An RTO on the SYN-ACK's continuation "proving" 2**32 - 1 packets: g(1) ^ g(0) = n(0).
        head = wire.decode_response_untrusted(synack)
        rto = wire.encode_request(wire.ReqType.RTO, 0, head.cont, [(1, 0xFFFFFFFF, head.nonce)], [])
        sock.sendto(rto, net.addr)
        after = net.barrier().drops()
        assert drain(sock) == [], "the server answered a malformed datagram"
    assert delta(before, after) == {"malformed": 4}
    assert_still_serves(target)


# -- continuations: tampering, another connection, another key, replay ----------------------------------


def test_every_bit_of_the_continuation_is_covered(target: Target) -> None:
    """Each of the 47 x 8 single-bit flips is dropped; the genuine request then still works (the
    forgeries consumed nothing)."""
    net = target.net
    with udp_socket() as sock:
        _, _, reqs = open_connection(sock, net.addr)
        before = net.barrier().drops()
        for i in range(SEALED_LEN):
            for bit in range(8):
                forged = bytearray(reqs[0])
                forged[CONT_AT + i] ^= 1 << bit
                sock.sendto(bytes(forged), net.addr)
        after = net.barrier().drops()
        assert drain(sock) == [], "a tampered continuation was answered"
        got = delta(before, after)
        # The key id byte names a key the ring does not hold: unknown_key; any other bit: bad_mac.
        assert got == {"bad_mac": (SEALED_LEN - 1) * 8, "unknown_key": 8}, got
        sock.sendto(reqs[0], net.addr)
        assert replies(sock), "the genuine request was refused after the forgeries"
    assert_still_serves(target)


def test_continuation_from_another_connection_address(target: Target) -> None:
    """A's request sent from B's socket: the MAC binds the client address (and the soft-state cache
    entry is A's), so bad_mac; A's own copy is still served."""
    net = target.net
    with udp_socket() as a, udp_socket() as b:
        _, _, reqs_a = open_connection(a, net.addr)
        open_connection(b, net.addr)
        before = net.barrier().drops()
        b.sendto(reqs_a[0], net.addr)
        after = net.barrier().drops()
        assert drain(b) == [] and drain(a) == []
        assert delta(before, after) == {"bad_mac": 1}
        a.sendto(reqs_a[0], net.addr)
        assert replies(a), "A's genuine request was refused"
    assert_still_serves(target)


def test_replay_within_the_horizon(target: Target) -> None:
    net = target.net
    with udp_socket() as sock:
        _, _, reqs = open_connection(sock, net.addr)
        sock.sendto(reqs[0], net.addr)
        honest = replies(sock)
        assert honest, "the genuine request got no answer"
        before = net.barrier().drops()
        for _ in range(5):
            sock.sendto(reqs[0], net.addr)
        after = net.barrier().drops()
        assert drain(sock) == [], "a replayed request was answered"
    assert delta(before, after) == {"replay": 5}
    assert_still_serves(target)


def test_cross_key_after_restart(site: Site, key_file: Path, tmp_path: Path) -> None:
    """A continuation sealed by a server is refused by the same server restarted with another key."""
    other_key = tmp_path / "other.key"
    other_key.write_text(os.urandom(32).hex() + "\n")
    other_key.chmod(0o600)
    port, mport = free_port(), free_port()
    first = ServerProcess(site.root, key_file, tmp_path / "first.log", *metrics_args(mport), port=port)
    second = ServerProcess(site.root, other_key, tmp_path / "second.log", *metrics_args(mport), port=port)
    with udp_socket() as sock:
        try:
            first.start()
            _, _, reqs = open_connection(sock, (HOST, port))
        finally:
            first.stop()
        try:
            second.start()
            net = Server(port, mport)
            t = Target(second, net, site, tmp_path)
            before = t.net.barrier().drops()
            sock.sendto(reqs[0], (HOST, port))
            after = t.net.barrier().drops()
            assert drain(sock) == []
            got = delta(before, after)
            assert got in ({"bad_mac": 1}, {"unknown_key": 1}), got
            assert_still_serves(t)
            net.close()
        finally:
            second.stop()


# -- floods ---------------------------------------------------------------------------------------------


@dataclass
class FloodResult:
    sent: int
    sent_bytes: int
    answers: list[bytes]
    seconds: float
    drops: dict[str, float]
    in_bytes: float  # as the server counted them (probes included)
    out_packets: float
    out_bytes: float
    rss_growth: float
    probes: int


def flood(net: Server, sockets: list[socket.socket], datagrams: list[bytes]) -> FloodResult:
    """Send ``datagrams`` round-robin over ``sockets`` in bursts, each followed by a barrier so the
    server's socket buffer never overflows; collect every answer and the server's counters."""
    m0 = net.barrier()
    in0 = m0.get("trickles_packets_received_total")
    answers: list[bytes] = []
    sent = sent_bytes = probes = 0
    t0 = time.monotonic()
    for at in range(0, len(datagrams), BURST):
        for j, d in enumerate(datagrams[at : at + BURST]):
            sent_bytes += sockets[j % len(sockets)].sendto(d, net.addr)
            sent += 1
        net.sync()
        probes += 1
        for s in sockets:
            answers += drain(s)
        assert time.monotonic() - t0 < FLOOD_SECONDS_MAX, f"flood still running after {sent} datagrams"
    m1 = net.barrier(expect_in=in0 + sent + probes + 1)
    seconds = time.monotonic() - t0
    for s in sockets:
        answers += drain(s)
    probes += 1
    return FloodResult(
        sent,
        sent_bytes,
        answers,
        seconds,
        delta(m0.drops(), m1.drops()),
        m1.get("trickles_received_bytes_total") - m0.get("trickles_received_bytes_total"),
        m1.get("trickles_packets_sent_total") - m0.get("trickles_packets_sent_total"),
        m1.get("trickles_sent_bytes_total") - m0.get("trickles_sent_bytes_total"),
        m1.rss - m0.rss,
        probes,
    )


def report(name: str, r: FloodResult) -> None:
    print(
        f"\n{name}: {r.sent} datagrams ({r.sent_bytes} B) in {r.seconds:.2f} s "
        f"({r.sent / r.seconds:.0f}/s), answers {len(r.answers)} ({sum(map(len, r.answers))} B), "
        f"server RSS {r.rss_growth / 1e6:+.2f} MB, drops {r.drops}"
    )


def test_syn_flood_from_many_ports(target: Target) -> None:
    """Every SYN gets one answer no larger than itself; the server keeps nothing per SYN."""
    paths = ["1m.bin", "one.bin", "sub/", "", "missing.bin"]
    datagrams = [syn(paths[i % len(paths)]) for i in range(FLOOD)]
    socks = [udp_socket() for _ in range(100)]
    try:
        r = flood(target.net, socks, datagrams)
    finally:
        for s in socks:
            s.close()
    report("SYN flood", r)
    assert r.drops == {}
    assert r.out_packets == r.sent + r.probes  # one answer per SYN, probes included
    assert r.out_bytes <= r.in_bytes  # anti-amplification, as the server counted it
    assert len(r.answers) <= r.sent and sum(map(len, r.answers)) <= r.sent_bytes
    assert all(len(a) <= SYN_SIZE for a in r.answers)
    assert len(r.answers) >= 0.99 * r.sent, "the flood's answers did not come back"
    assert r.rss_growth < RSS_GROWTH_MAX
    assert_still_serves(target)


def junk(rng: random.Random, genuine: bytes) -> bytes:
    """Hostile bytes of several shapes: noise, other versions, truncations of a genuine request, and
    well-formed headers with random continuations (under the server's key id and others)."""
    shape = rng.randrange(5)
    if shape == 0:
        return rng.randbytes(rng.randrange(0, wire.MAX_DATAGRAM))
    if shape == 1:
        return bytes([rng.choice([0, 2, 0xEE])]) + rng.randbytes(rng.randrange(0, 200))
    if shape == 2:
        return genuine[: rng.randrange(len(genuine))]
    rtype = rng.choice([wire.ReqType.REQUEST, wire.ReqType.REGEN, wire.ReqType.CLOSE, wire.ReqType.RTO])
    key_id = 1 if shape == 3 else rng.randrange(256)
    cont = bytes([key_id]) + rng.randbytes(SEALED_LEN - 1)
    return wire.encode_request(rtype, 0, cont, [(1, 1 + rng.randrange(30), rng.getrandbits(32))], [])


def test_junk_flood(target: Target) -> None:
    rng = random.Random(6)
    with udp_socket() as sock:
        _, _, reqs = open_connection(sock, target.net.addr)
        datagrams = [junk(rng, reqs[0]) for _ in range(FLOOD)]
        socks = [udp_socket() for _ in range(20)]
        try:
            r = flood(target.net, socks, datagrams)
        finally:
            for s in socks:
                s.close()
    report("junk flood", r)
    assert r.answers == []
    assert r.out_packets == r.probes  # the probes' SYN-ACKs only
    assert sum(r.drops.values()) == r.sent
    assert set(r.drops) <= {"malformed", "bad_version", "bad_mac", "unknown_key"}, r.drops
    assert r.rss_growth < RSS_GROWTH_MAX
    assert_still_serves(target)


def test_replay_flood(target: Target) -> None:
    net = target.net
    with udp_socket() as sock:
        _, _, reqs = open_connection(sock, net.addr)
        sock.sendto(reqs[0], net.addr)
        assert replies(sock), "the genuine request got no answer"
        r = flood(net, [sock], [reqs[0]] * FLOOD)
    report("replay flood", r)
    assert r.answers == []
    assert r.out_packets == r.probes
    assert r.drops == {"replay": r.sent}
    assert r.rss_growth < RSS_GROWTH_MAX
    assert_still_serves(target, "1m.bin")
