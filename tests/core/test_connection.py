"""The client machine on its own: handshake, timers, loss detection, proofs and reassembly.

The server's datagrams come from a real engine stepped by hand (no simulator), so each test decides
exactly which responses the client sees, in which order, and when.
"""

from __future__ import annotations

from trickles import wire
from trickles.connection import SYN_PAD, ClientConnection, State
from trickles.regions import Region
from trickles.sack import DUPTHRESH, SackRecord
from trickles.wire import REGION_SHIFT, ReqType

from .helpers import ADDR, T0, engine, handshake


def _answers(eng: object, reqs: list[bytes], now: float) -> list[bytes]:
    out: list[bytes] = []
    for q in reqs:
        out += eng.step(q, ADDR, now).datagrams  # type: ignore[attr-defined]
    return out


def test_syn_is_padded_and_retried_with_backoff_then_fails() -> None:
    cli = ClientConnection(client_nonce=1)
    cli.connect(b"obj", T0)
    (syn,) = cli.datagrams_to_send(T0)
    assert len(syn) == SYN_PAD and wire.decode_request_untrusted(syn).type == ReqType.SYN
    deadlines = []
    now = T0
    for _ in range(cli.max_syn_tries - 1):
        timer = cli.get_timer()
        assert timer is not None
        deadlines.append(timer - now)
        now = timer
        cli.handle_timer(now)
        (again,) = cli.datagrams_to_send(now)
        assert again[8:] == syn[8:] and again[4:8] != syn[4:8]  # same SYN, fresh timestamp
    assert deadlines == sorted(deadlines) and deadlines[-1] > deadlines[0]  # backed off
    timer = cli.get_timer()
    assert timer is not None
    cli.handle_timer(timer)
    assert cli.state is State.FAILED and cli.datagrams_to_send(timer) == []


def test_synack_must_echo_a_syn_timestamp_of_ours() -> None:
    eng = engine()
    cli = ClientConnection(client_nonce=2)
    cli.connect(b"obj", T0)
    (syn,) = cli.datagrams_to_send(T0)
    other = bytearray(syn)
    other[4:8] = (12345).to_bytes(4, "big")  # someone else's SYN
    (synack,) = eng.step(bytes(other), ADDR, T0).datagrams
    cli.receive_datagram(synack, T0 + 0.01)
    assert cli.state is State.SYN_SENT
    (synack,) = eng.step(syn, ADDR, T0).datagrams
    cli.receive_datagram(synack, T0 + 0.01)
    assert state_of(cli) is State.OPEN and cli.conn_id != 0


def test_garbage_is_counted_never_raised() -> None:
    cli, _ = handshake(engine())
    for junk in (b"", b"\x00" * 10, b"\xff" * 200):
        cli.receive_datagram(junk, T0 + 0.02)
    assert cli.stats.malformed == 3 and cli.state is State.OPEN


def test_packets_beyond_what_we_asked_for_are_refused() -> None:
    eng = engine()
    cli, reqs = handshake(eng)
    data = _answers(eng, reqs, T0 + 0.02)
    head = wire.decode_response_untrusted(data[-1])
    far = bytearray(data[-1])
    far[4:8] = (head.seq + 1000).to_bytes(4, "big")  # packet number field of the response header
    cli.receive_datagram(bytes(far), T0 + 0.03)
    assert cli.stats.malformed == 1
    assert cli.sack.rcv_nxt == 1 and not cli.sack.ooo


def test_a_hole_with_dupthresh_packets_above_is_lost_and_left_out_of_the_next_proof() -> None:
    eng = engine()
    cli, reqs = handshake(eng)
    now = T0 + 0.02
    # Grow the window loss-free until one round brings more than DUPTHRESH + 1 packets.
    while True:
        data = _answers(eng, reqs, now)
        if len(data) > DUPTHRESH + 1:
            break
        for d in data:
            cli.receive_datagram(d, now)
        now += 0.01
        reqs = cli.datagrams_to_send(now)
    lost = wire.decode_response_untrusted(data[0]).seq
    for d in data[1:]:
        cli.receive_datagram(d, now)
    assert cli.stats.losses_declared == 1 and cli.sack.lost == [(lost, lost)]
    proofs = [wire.decode_request_untrusted(q).proof for q in cli.datagrams_to_send(now + 0.01)]
    assert proofs and all(not first <= lost <= last for proof in proofs for first, last, _ in proof)
    assert any(len(proof) == 2 for proof in proofs)  # a proof with a hole: a recovery request


def test_retransmit_timeout_asks_for_slow_start() -> None:
    eng = engine()
    cli, reqs = handshake(eng)
    _answers(eng, reqs, T0 + 0.02)  # every answer lost
    timer = cli.get_timer()
    assert timer is not None
    cli.handle_timer(timer)
    (rto,) = cli.datagrams_to_send(timer)
    req = wire.decode_request_untrusted(rto)
    assert req.type == ReqType.RTO and req.attempt == 0 and cli.stats.timeouts == 1


def test_close_sends_one_close_request_and_stops() -> None:
    cli, _ = handshake(engine())
    cli.close(T0 + 0.1)
    (close,) = cli.datagrams_to_send(T0 + 0.1)
    assert wire.decode_request_untrusted(close).type == ReqType.CLOSE
    assert cli.state is State.CLOSED and cli.get_timer() is None


def test_sack_record_proof_contiguous_run_and_xor() -> None:
    rec = SackRecord(10)
    nonces = {s: s * 7919 for s in range(10, 20)}
    for s in (10, 11, 13, 14, 15, 16):  # 12 missing, three packets above it
        rec.ooo[s] = nonces[s]
    assert rec.advance() == [(12, 12)]
    assert rec.rcv_nxt == 17 and rec.lost == [(12, 12)]
    x = 0
    for s in (13, 14, 15):
        x ^= nonces[s]
    assert rec.proof(10, 15) == [(10, 11, nonces[10] ^ nonces[11]), (13, 15, x)]
    assert rec.contiguous_right(10) == 11 and rec.contiguous_right(13) == 16
    rec.ooo[18] = nonces[18]  # above rcv_nxt, not final yet
    assert rec.run_xor(13, 14) == nonces[13] ^ nonces[14]
    assert rec.advance() == []


def test_region_reassembles_out_of_order_and_ignores_duplicates() -> None:
    r = Region(1, 1 << REGION_SHIFT)
    start = r.start
    r.want.add(start, start + 30)
    r.store(start + 10, b"b" * 10)
    r.store(start + 20, b"c" * 10)
    assert r.ready == b"" and list(r.want) == [(start, start + 10)]
    r.store(start, b"a" * 10)
    r.store(start + 5, b"x" * 10)  # duplicate bytes change nothing
    assert bytes(r.ready) == b"a" * 10 + b"b" * 10 + b"c" * 10 and not r.want and not r.pieces
    r.skip(start + 30)
    assert r.end == start + 30 and r.complete


def state_of(cli: ClientConnection) -> State:
    """The state, read through a call (mypy keeps an attribute narrowed across method calls)."""
    return cli.state
