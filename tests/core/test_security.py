"""Sealed continuations, SACK proofs and replay: every tampered or forged input is rejected."""

from __future__ import annotations

import pytest

from trickles import wire
from trickles.connection import ClientConnection
from trickles.continuation import SEALED_LEN, Continuation, Phase, open_untrusted, parse_unverified, seal
from trickles.errors import BadMac, BadSackProof, DropReason, Stale, UnknownKeyId
from trickles.keys import KeyRing, ServerKey
from trickles.nonces import packet_nonces, piece_id, range_summary, verify_proof

from .helpers import ADDR, MASTER, T0, drive, engine, handshake, sim_flow

KEY = ServerKey(1, MASTER)
RING = KeyRing(KEY)
C = Continuation(1, Phase.NORMAL, 2, 0xABCDEF0123456789, 40, 3, 12, 5, 9, 123456, 20)
H, SKEW = 120_000, 5_000


def test_seal_open_round_trip() -> None:
    sealed = seal(C, KEY, ADDR)
    assert len(sealed) == SEALED_LEN == 47
    got, mac = open_untrusted(sealed, 0, RING, ADDR, 123456 + 1000, H, SKEW)
    assert got == C and mac == sealed[-16:]
    assert parse_unverified(sealed) == C


def test_every_single_bit_flip_is_rejected() -> None:
    sealed = seal(C, KEY, ADDR)
    for bit in range(len(sealed) * 8):
        bad = bytearray(sealed)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((BadMac, UnknownKeyId)):
            open_untrusted(bytes(bad), 0, RING, ADDR, 123456, H, SKEW)


def test_bound_to_client_address() -> None:
    sealed = seal(C, KEY, ADDR)
    with pytest.raises(BadMac):
        open_untrusted(sealed, 0, RING, b"\x7f\x00\x00\x02\x13\x88", 123456, H, SKEW)


def test_stale_and_future_continuations_rejected() -> None:
    sealed = seal(C, KEY, ADDR)
    open_untrusted(sealed, 0, RING, ADDR, 123456 + H, H, SKEW)  # exactly at the horizon: fresh
    with pytest.raises(Stale):
        open_untrusted(sealed, 0, RING, ADDR, 123456 + H + 1, H, SKEW)
    open_untrusted(sealed, 0, RING, ADDR, 123456 - SKEW, H, SKEW)  # another replica, clock behind
    with pytest.raises(Stale):
        open_untrusted(sealed, 0, RING, ADDR, 123456 - SKEW - 1, H, SKEW)


def test_freshness_survives_wraparound() -> None:
    c = C._replace(ts=0xFFFFFF00)
    sealed = seal(c, KEY, ADDR)
    open_untrusted(sealed, 0, RING, ADDR, 0x100, H, SKEW)  # 512 ms later, after the wrap


def test_unknown_key_id_rejected_and_rotation() -> None:
    other = ServerKey(9, b"o" * 32)
    sealed = seal(C._replace(key_id=9), other, ADDR)
    with pytest.raises(UnknownKeyId):
        open_untrusted(sealed, 0, RING, ADDR, 123456, H, SKEW)
    rotated = RING.rotate(other)  # 9 seals, 1 still opens
    assert rotated.current is other
    open_untrusted(seal(C, KEY, ADDR), 0, rotated, ADDR, 123456, H, SKEW)
    retired = rotated.rotate(ServerKey(10, b"n" * 32))  # key 1 retires
    with pytest.raises(UnknownKeyId):
        open_untrusted(seal(C, KEY, ADDR), 0, retired, ADDR, 123456, H, SKEW)


def test_sack_proof_telescopes_and_rejects_a_lost_packet() -> None:
    p = piece_id(77, 0, 1, 3, 100)
    nonces = packet_nonces(KEY, p, range(1, 21))
    full = (1, 20, range_summary(nonces))
    assert verify_proof(KEY, p, [full])
    # Claim 1..20 while packet 7 was lost: the client can only XOR the nonces it saw.
    forged = (1, 20, range_summary(nonces[:6] + nonces[7:]))
    assert not verify_proof(KEY, p, [forged])
    # Retransmit nonces come from K': the retransmission of 7 does not help either.
    (renonce,) = packet_nonces(KEY, p, [7], retransmit=True)
    forged2 = (1, 20, range_summary([*nonces[:6], renonce, *nonces[7:]]))
    assert not verify_proof(KEY, p, [forged2])
    # Nonces are bound to the connection, the epoch and the piece (base, start, ssthresh): a packet
    # number reissued in another piece (a faked earlier hole) gets a fresh nonce.
    (n5,) = packet_nonces(KEY, p, [5])
    for other in (
        piece_id(78, 0, 1, 3, 100),
        piece_id(77, 1, 1, 3, 100),
        piece_id(77, 0, 2, 3, 100),
        piece_id(77, 0, 1, 4, 100),
        piece_id(77, 0, 1, 3, 101),
    ):
        assert packet_nonces(KEY, other, [5]) != [n5]


def test_server_drops_forged_proof_tampered_and_replayed_requests() -> None:
    eng = engine()
    cli, reqs = handshake(eng)
    now = T0 + 0.02
    # The first request after the SYN-ACK is answered.
    res = eng.step(reqs[0], ADDR, now)
    assert res.drop is None and len(res.datagrams) == 3
    # Replaying it is dropped and counted.
    again = eng.step(reqs[0], ADDR, now)
    assert again.drop is DropReason.REPLAY and not again.datagrams
    for d in res.datagrams:
        cli.receive_datagram(d, now)
    nxt = cli.datagrams_to_send(now)
    assert nxt
    q = wire.decode_request_untrusted(nxt[0])
    # A forged summary in the SACK proof.
    first, last, x = q.proof[0]
    forged = wire.encode_request(q.type, q.client_ts, q.cont, [(first, last, x ^ 1)], q.segments)
    assert eng.step(forged, ADDR, now).drop is DropReason.FORGED_PROOF
    # A proof claiming a packet beyond what the continuation acknowledges.
    beyond = wire.encode_request(q.type, q.client_ts, q.cont, [(first, last + 1, x)], q.segments)
    assert eng.step(beyond, ADDR, now).drop is DropReason.FORGED_PROOF
    # A tampered continuation.
    bad = bytearray(nxt[0])
    bad[8 + 20] ^= 0x40
    assert eng.step(bytes(bad), ADDR, now).drop is DropReason.BAD_MAC
    # From another address.
    assert eng.step(nxt[0], b"\x7f\x00\x00\x09\x13\x88", now).drop is DropReason.BAD_MAC
    # Too late.
    assert eng.step(nxt[0], ADDR, now + 121).drop is DropReason.STALE
    # And the genuine request still works after all of that.
    assert eng.step(nxt[0], ADDR, now).drop is None
    assert eng.stats.dropped[DropReason.REPLAY] == 1


def test_syn_answer_never_larger_than_syn() -> None:
    eng = engine()
    for size in (80, 100, 300, 1200):
        syn = wire.encode_syn(0, 5, [wire.InputSeg(0, 0, True, b"", b"obj")], pad_to=size)
        res = eng.step(syn, ADDR, T0)
        assert res.drop is None
        assert sum(map(len, res.datagrams)) <= len(syn)
    tiny = wire.encode_syn(0, 5, [wire.InputSeg(0, 0, True, b"", b"obj")])
    res = eng.step(tiny, ADDR, T0)
    assert res.drop is DropReason.SYN_TOO_SMALL and not res.datagrams


def test_wrong_version_is_a_typed_drop() -> None:
    eng = engine()
    syn = bytearray(wire.encode_syn(0, 5, [], pad_to=200))
    syn[0] = 9
    assert eng.step(bytes(syn), ADDR, T0).drop is DropReason.BAD_VERSION


def test_bad_sack_blocks_rejected_before_crypto() -> None:
    from trickles.congestion import plan_request

    c = Continuation(1, Phase.NORMAL, 1, 5, 20, 0, 10, 3, 100, 0, 0)
    with pytest.raises(BadSackProof):
        plan_request(c, [(10, 15), (14, 20)], 20)  # overlapping
    with pytest.raises(BadSackProof):
        plan_request(c, [(9, 20)], 20)  # starts before TCPBase
    with pytest.raises(BadSackProof):
        plan_request(c, [(10, 19)], 20)  # does not cover the acknowledged packet


def test_key_rotation_twice_during_a_transfer() -> None:
    """New pieces (after a loss or timeout) move to the current key, so a connection survives the
    retirement of the key it started with. (A piece that stays loss-free across two rotations
    cannot: its nonces need its key. See docs/PROTOCOL.md, known limitations.)"""
    obj = bytes(range(256)) * 12000
    sim, eng, cli = sim_flow(2, obj, bandwidth=2e6, queue=100, loss=0.01)
    first_key = eng.ring.current.key_id

    def rotate(i: int) -> None:
        eng.ring = eng.ring.rotate(ServerKey(10 + i, bytes([i]) * 32))
        eng.drop_cache()

    sim.at(0.4, rotate, 1)
    sim.at(1.2, rotate, 2)  # the connection's first key retires here
    sim.run(120, stop=lambda: cli.finished)
    assert bytes(cli.data) == obj
    assert eng.ring.get(12) and first_key not in (eng.ring.current.key_id, 11)
    assert eng.stats.dropped.get(DropReason.UNKNOWN_KEY, 0) == 0
    assert cli.done_at is not None and cli.done_at > 1.2  # the transfer really spanned both rotations


def test_client_ignores_forged_responses() -> None:
    from trickles.connection import ClientConnection

    eng = engine()
    cli, reqs = handshake(eng)
    now = T0 + 0.02
    for d in eng.step(reqs[0], ADDR, now).datagrams:
        cli.receive_datagram(d, now)
    # A packet number far beyond anything requested: ignored, and the SACK record stays small.
    forged = wire.RESP_HEAD.pack(1, wire.R_DATA, 0, 0, 20_000_000, 0, 0, 0, cli.epoch)
    for _ in range(3):
        cli.receive_datagram(forged, now)
    assert cli.stats.malformed == 3 and len(cli.sack.px) < 100
    # A continuation whose fields make no sense (base after seq), even under a valid MAC, is
    # refused by the client: counted as malformed, never used for a request.
    held = cli.stats.continuations
    genuine = parse_unverified(wire.decode_request_untrusted(reqs[0]).cont)
    bad = Continuation(1, Phase.NORMAL, 2, cli.conn_id, 4, cli.epoch, 100, 3, 9, genuine.ts, 0)
    sealed = seal(bad, KEY, ADDR)
    pkt = wire.RESP_HEAD.pack(1, wire.R_DATA, wire.F_FULL, 0, 4, 0, 1, 0, cli.epoch) + sealed
    cli.receive_datagram(pkt, now)
    assert cli.stats.malformed == 4 and cli.stats.continuations == held
    nxt = cli.datagrams_to_send(now)
    assert nxt and all(wire.decode_request_untrusted(q).cont != sealed for q in nxt)
    assert all(eng.step(q, ADDR, now).drop is None for q in nxt)  # the genuine ones still work
    # A client that did use it gets nothing for it, whatever proof it sends: the server refuses
    # implausible fields when it opens the continuation, before any arithmetic meets them.
    q = wire.decode_request_untrusted(nxt[0])
    for proof in ([], [(4, 4, 0)], [(100, 100, 0)], list(q.proof)):
        res = eng.step(wire.encode_request(q.type, q.client_ts, sealed, proof, q.segments), ADDR, now)
        assert res.drop is DropReason.PROTOCOL and res.datagrams == []
    assert eng.stats.dropped[DropReason.PROTOCOL] == 4
    # A SYN-ACK that answers no SYN of ours is ignored.
    fresh = ClientConnection(client_nonce=3)
    fresh.connect(b"obj", 5.0)
    fresh.datagrams_to_send(5.0)
    fake = wire.RESP_HEAD.pack(1, wire.R_SYNACK, wire.F_FULL, 0, 0, 0, 0, 12345, 0) + seal(C, KEY, ADDR)
    fresh.receive_datagram(fake, 5.1)
    assert fresh.state.value == "syn_sent"


def test_connection_survives_forged_nonces_in_its_sack_record() -> None:
    """Blind injection: forged packets (spoofed source) land in the SACK record ahead of the real
    ones, so proofs covering them fail. The client's third unanswered timeout drops the proof
    (slow start from the piece's base) and the transfer still completes byte-identical."""
    obj = bytes(range(256)) * 4000
    sim, eng, cli = sim_flow(9, obj, bandwidth=5e6)

    def inject() -> None:
        conn = cli.conn
        for s in range(conn.sack.rcv_nxt + 1, conn.sack.rcv_nxt + 6):
            forged = wire.RESP_HEAD.pack(1, wire.R_DATA, 0, 0, s, 0xDEADBEEF, 0, 0, conn.epoch)
            cli.receive(forged)

    sim.at(0.15, inject)
    sim.run(600, stop=lambda: cli.finished)
    assert bytes(cli.data) == obj
    assert eng.stats.dropped.get(DropReason.FORGED_PROOF, 0) > 0  # the poisoning really bit


def test_unexpected_exception_is_a_counted_internal_drop() -> None:
    """A bug reached by one datagram costs that datagram only: counted as ``internal``, kept for
    the I/O layer's log, and the next connection is served."""
    eng = engine()
    real = eng._on_event
    boom = [True]

    def flaky(msk: object) -> None:
        if boom[0]:
            boom[0] = False
            raise RuntimeError("app bug")
        real(msk)  # type: ignore[arg-type]

    eng._on_event = flaky
    cli = ClientConnection(client_nonce=99)
    cli.connect(b"obj", T0)
    (syn,) = cli.datagrams_to_send(T0)
    res = eng.step(syn, ADDR, T0)
    assert res.drop == DropReason.INTERNAL and res.datagrams == []
    assert eng.stats.dropped[DropReason.INTERNAL] == 1
    assert isinstance(eng.last_internal_error, RuntimeError)
    cli2, reqs = handshake(eng)
    drive(eng, cli2, reqs, T0 + 0.02)
    assert cli2.regions[0].complete


def test_the_keyed_mac_state_is_openssls_and_agrees_with_hmac() -> None:
    """Continuations are MAC'd through OpenSSL's HMAC object (C calls only) where the interpreter
    has it, as this one does; its MACs are the stdlib hmac module's, for any key and message."""
    import hmac
    import random

    from trickles.keys import keyed_sha256

    assert type(keyed_sha256(b"k" * 32)).__module__ == "_hashlib"
    rng = random.Random(4)
    for _ in range(50):
        key, msg = rng.randbytes(rng.randrange(1, 80)), rng.randbytes(rng.randrange(0, 200))
        h = keyed_sha256(key).copy()
        h.update(msg)
        assert h.digest() == hmac.new(key, msg, "sha256").digest()
