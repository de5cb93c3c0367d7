"""Encode/decode round trips and hostile bytes (property-based)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trickles import wire
from trickles.continuation import DELTA_MAX_LEN, Continuation, decode_delta, encode_delta, seal
from trickles.errors import MalformedPacket, TricklesError
from trickles.keys import ServerKey

from .helpers import ADDR, T0, engine

u8, u16, u32, u64 = (st.integers(0, 2**n - 1) for n in (8, 16, 32, 64))
blob = st.binary(max_size=60)
regions = st.integers(0, wire.MAX_REGION)
inputs = st.builds(wire.InputSeg, regions, u64, st.booleans(), blob, blob)
fetches = st.builds(wire.FetchSeg, blob, st.lists(st.tuples(u64, u16), max_size=6).map(tuple))
segments = st.lists(st.one_of(inputs, fetches), max_size=4)
blocks = st.tuples(st.integers(0, wire.MAX_SEQ), st.integers(0, wire.MAX_SEQ), u32).map(
    lambda b: (min(b[0], b[1]), max(b[0], b[1]), b[2])
)
proofs = st.lists(blocks, max_size=8)
conts = st.builds(
    Continuation, u8, st.integers(0, 3), st.sampled_from([1, 2]), u64, u32, u16, u32, u16, u16, u32, u16
)
KEY = ServerKey(3, b"x" * 32)


type_attempt = st.one_of(
    st.tuples(st.just(3), st.integers(0, wire.MAX_ATTEMPT)), st.tuples(st.sampled_from([2, 4, 5]), st.just(0))
)


@given(type_attempt, u32, st.binary(min_size=47, max_size=47), proofs, segments)
def test_request_round_trip(
    ta: tuple[int, int], ts: int, cont: bytes, proof: list[tuple[int, int, int]], segs: list[wire.Segment]
) -> None:
    rtype, attempt = ta
    data = wire.encode_request(rtype, ts, cont, proof, segs, attempt)
    q = wire.decode_request_untrusted(data)
    assert (q.type, q.client_ts, q.cont, list(q.proof), list(q.segments), q.attempt) == (
        rtype,
        ts,
        cont,
        proof,
        segs,
        attempt,
    )


@given(
    type_attempt,
    u32,
    st.binary(min_size=47, max_size=47),
    blocks,
    fetches,
)
def test_common_request_shape_round_trip(
    ta: tuple[int, int], ts: int, cont: bytes, block: tuple[int, int, int], seg: wire.FetchSeg
) -> None:
    """The decoder's fast path (one SACK block, one FETCH) agrees with the general encoding."""
    rtype, attempt = ta
    data = wire.encode_request(rtype, ts, cont, [block], [seg], attempt)
    q = wire.decode_request_untrusted(data)
    assert (q.type, q.attempt, q.client_ts, q.cont, q.proof, q.segments) == (
        rtype,
        attempt,
        ts,
        cont,
        (block,),
        (seg,),
    )
    for cut in (1, 5, 10):  # truncated: never a wrong parse, only a typed error
        with pytest.raises(MalformedPacket):
            wire.decode_request_untrusted(data[:-cut])


@given(st.sampled_from([2, 4, 5]), st.integers(1, 255))
def test_attempt_only_on_timeout_requests(rtype: int, attempt: int) -> None:
    """The attempt byte is part of the replay key: elsewhere it would allow 256 replays."""
    with pytest.raises(MalformedPacket):
        wire.decode_request_untrusted(wire.encode_request(rtype, 0, bytes(47), [], [], attempt))
    with pytest.raises(MalformedPacket):
        wire.decode_request_untrusted(wire.encode_request(3, 0, bytes(47), [], [], wire.MAX_ATTEMPT + 1))


@given(u32, u64, segments, st.integers(0, 1400))
def test_syn_round_trip(ts: int, nonce: int, segs: list[wire.Segment], pad: int) -> None:
    data = wire.encode_syn(ts, nonce, segs, pad_to=pad)
    q = wire.decode_request_untrusted(data)
    assert (q.client_ts, q.client_nonce, list(q.segments)) == (ts, nonce, segs)
    assert len(data) >= pad


@given(conts, conts)
def test_delta_round_trip(c: Continuation, parent: Continuation) -> None:
    sealed = seal(c, KEY, ADDR)
    delta = encode_delta(c, sealed, parent)
    assert len(delta) <= DELTA_MAX_LEN
    rebuilt, end = decode_delta(delta, 0, parent, c.seq, c.epoch)
    assert rebuilt == sealed and end == len(delta)


def test_delta_is_small_when_predicted() -> None:
    c = Continuation(1, 1, 2, 99, 50, 0, 10, 3, 100, 5, 7)
    parent = c._replace(seq=48, ts=1, rtt=6)
    assert len(encode_delta(c, seal(c, KEY, ADDR), parent)) == 24


@given(
    st.sampled_from([0x11, 0x12, 0x13]),
    st.sampled_from([0, 1, 2]),
    u32,
    u32,
    u32,
    u32,
    u16,
    st.lists(st.tuples(u64, st.binary(max_size=40)), max_size=4),
)
def test_response_round_trip(
    rtype: int,
    flags: int,
    seq: int,
    nonce: int,
    parent: int,
    ts: int,
    epoch: int,
    data: list[tuple[int, bytes]],
) -> None:
    cont = b"" if flags == 0 else (b"c" * 47 if flags == 1 else bytes([0]) + b"d" * 23)
    chunks = b"".join(wire.data_chunk(o, d) for o, d in data) + wire.skip_chunk(5, 6)
    chunks += wire.ucont_chunk(2, 1, 2, 3, 4, b"u") + wire.error_chunk(1, 404, b"gone")
    dg = wire.RESP_HEAD.pack(1, rtype, flags, 0, seq, nonce, parent, ts, epoch) + cont + chunks
    r = wire.decode_response_untrusted(dg)
    assert (r.type, r.seq, r.nonce, r.parent, r.echo_ts, r.epoch, r.cont) == (
        rtype,
        seq,
        nonce,
        parent,
        ts,
        epoch,
        cont,
    )
    got = [(c.offset, c.data) for c in r.chunks if c.type == wire.ChunkType.DATA]
    assert got == data
    assert [c.type for c in r.chunks[len(data) :]] == [2, 3, 4]


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_malformed(data: bytes) -> None:
    for decode in (wire.decode_request_untrusted, wire.decode_response_untrusted):
        with contextlib.suppress(MalformedPacket):
            decode(data)


@settings(max_examples=300)
@given(st.binary(min_size=8, max_size=300), st.integers(0, 2))
def test_mutated_requests_never_crash_the_engine(noise: bytes, where: int) -> None:
    """Valid prefixes with hostile tails: the engine answers or drops with a reason, never raises."""
    eng = engine()
    head = wire.REQ_HEAD.pack(1, [1, 2, 3][where], 0, 0, 0)
    res = eng.step(head + noise, ADDR, T0)
    assert res.drop is not None or res.datagrams


@given(st.binary(max_size=200))
def test_client_survives_garbage(data: bytes) -> None:
    from trickles.connection import ClientConnection

    cli = ClientConnection(client_nonce=1)
    cli.connect(b"obj", 0.0)
    try:
        cli.receive_datagram(data, 0.1)
    except TricklesError as e:  # pragma: no cover - must not happen
        raise AssertionError(f"client raised {e!r}") from e
    cli.datagrams_to_send(0.2)


@pytest.mark.parametrize("block", [(1, 0xFFFFFFFF, 0), (5, 4, 0), (wire.MAX_SEQ + 1, wire.MAX_SEQ + 1, 0)])
@pytest.mark.parametrize("n_blocks", [1, 2])
def test_out_of_range_sack_blocks_are_malformed(block: tuple[int, int, int], n_blocks: int) -> None:
    """Packet numbers beyond MAX_SEQ (r + 1 would wrap to 0 and "prove" 2**32 - 1 packets with a
    nonce printed in the SYN-ACK) or inverted blocks never reach the crypto. Both decoder paths."""
    proof = [(1, 1, 0)] * (n_blocks - 1) + [block]
    seg = wire.FetchSeg(b"", ((0, 100),))
    with pytest.raises(MalformedPacket):
        wire.decode_request_untrusted(wire.encode_request(2, 0, b"\0" * 47, proof, [seg]))


def test_region_ids_beyond_24_bits_are_malformed() -> None:
    """Region ``r`` starts at byte ``r << 40`` of a 64-bit space: a bigger id once crashed the server."""
    ok = wire.InputSeg(wire.MAX_REGION, 0, True, b"", b"GET / HTTP/1.1\r\n\r\n")
    assert wire.decode_request_untrusted(wire.encode_syn(0, 1, [ok])).segments == (ok,)
    bad = ok._replace(region=wire.MAX_REGION + 1)
    with pytest.raises(MalformedPacket):
        wire.decode_request_untrusted(wire.encode_syn(0, 1, [bad]))


@given(
    st.sampled_from([0, 1, 2]),
    st.lists(st.tuples(u64, st.binary(max_size=40)), min_size=1, max_size=3),
    st.booleans(),
    st.integers(1, wire.PAD_LIMIT),
)
def test_padding_after_the_last_chunk_is_ignored(
    flags: int, data: list[tuple[int, bytes]], more: bool, pad: int
) -> None:
    """PAD (zero bytes after the last chunk, what a GSO sender adds) decodes to the same chunks, on
    the one-DATA-chunk fast path and on the general path alike."""
    cont = b"" if flags == 0 else (b"c" * 47 if flags == 1 else bytes([0]) + b"d" * 23)
    chunks = b"".join(wire.data_chunk(o, d) for o, d in data)
    if more:
        chunks += wire.error_chunk(1, 404, b"gone")
    dg = wire.RESP_HEAD.pack(1, 0x12, flags, 0, 7, 8, 6, 5, 4) + cont + chunks
    plain, padded = wire.decode_response_untrusted(dg), wire.decode_response_untrusted(dg + bytes(pad))
    assert padded == plain
    assert [(c.offset, c.data) for c in padded.chunks if c.type == wire.C_DATA] == data


@pytest.mark.parametrize("one_chunk", [True, False])
def test_bad_padding_is_malformed(one_chunk: bool) -> None:
    """Padding is zero bytes, at most PAD_LIMIT of them: anything else is refused, so padding can
    neither smuggle bytes nor inflate a packet past the bound docs/SECURITY.md gives."""
    chunks = wire.data_chunk(0, b"abc") + (b"" if one_chunk else wire.skip_chunk(3, 1))
    dg = wire.RESP_HEAD.pack(1, 0x12, 0, 0, 7, 8, 6, 5, 4) + chunks
    wire.decode_response_untrusted(dg + bytes(wire.PAD_LIMIT))
    for bad in (bytes(wire.PAD_LIMIT + 1), b"\x00\x00\x07", b"\x00\x01"):
        with pytest.raises(MalformedPacket):
            wire.decode_response_untrusted(dg + bad)
