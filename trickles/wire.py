"""The Trickles wire format, version 1, carried in UDP datagrams (see docs/PROTOCOL.md).

All integers are big-endian. Parsers of attacker-controlled bytes end in ``_untrusted`` and raise only
:class:`~trickles.errors.MalformedPacket` (or its subclass for an unknown version).

Client to server::

    request  = version:8 type:8 flags:8 attempt:8 client_ts:32 body
    SYN      body = client_nonce:64 nseg:8 segment* padding(zero bytes)
    REQUEST / RTO / CLOSE / REGEN
             body = continuation(47) nrange:8 (left:32 right:32 xor:32)* nseg:8 segment*
    segment  = INPUT: 1:8 region:32 offset:64 flags:8 ulen:16 ucont dlen:16 data
             | FETCH: 2:8 ulen:16 ucont nrange:8 (start:64 length:16)*

Server to client::

    response = version:8 type:8 flags:8 reserved:8 seq:32 nonce:32 parent:32 echo_ts:32 epoch:16
               continuation (47 bytes if flags & FULL, a delta if flags & DELTA, else none) chunk*
    chunk    = DATA:  1:8 offset:64 length:16 bytes
             | SKIP:  2:8 offset:64 length:64
             | UCONT: 3:8 kind:8 region:32 consumed:64 valid_start:64 valid_end:64 blen:16 blob
             | ERROR: 4:8 region:32 code:16 mlen:16 message
             | PAD:   0:8 zero bytes to the end of the datagram (at most PAD_LIMIT bytes in all)
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import Final, NamedTuple

from trickles.continuation import DELTA_LENS, DELTA_MIN_LEN, SEALED_LEN, new_namedtuple
from trickles.errors import MalformedPacket, UnsupportedVersion

VERSION: Final = 1
MAX_DATAGRAM: Final = 1452
"""Largest datagram we send: a 1500-byte MTU less IPv6 (40) and UDP (8) headers."""


class ReqType(IntEnum):
    SYN = 1
    REQUEST = 2
    RTO = 3
    CLOSE = 4
    REGEN = 5


class RespType(IntEnum):
    SYNACK = 0x11
    DATA = 0x12
    RETRANSMIT = 0x13


class RespFlags(IntFlag):
    FULL = 0x01
    DELTA = 0x02


class SegType(IntEnum):
    INPUT = 1
    FETCH = 2


class ChunkType(IntEnum):
    PAD = 0
    DATA = 1
    SKIP = 2
    UCONT = 3
    ERROR = 4


_S_INPUT: Final = int(SegType.INPUT)  # plain ints for the per-request path
_S_FETCH: Final = int(SegType.FETCH)
_R_SYN: Final = int(ReqType.SYN)
_R_RTO: Final = int(ReqType.RTO)


class UcontKind(IntEnum):
    INPUT_MORE = 1
    """The app consumed input but needs more: ``blob`` is the input continuation to send back."""
    OUTPUT = 2
    """The app produced a response in the region: ``blob`` is the output continuation."""


# Plain-int aliases for the per-packet paths (enum attribute access and IntFlag arithmetic cost
# more than the rest of a header decode). Final, like the other constants of this module: the
# compiled build inlines a Final literal, where a plain module global costs a dict lookup per use.
F_FULL: Final = 0x01
F_DELTA: Final = 0x02
R_SYNACK: Final = 0x11
R_DATA: Final = 0x12
R_RETRANSMIT: Final = 0x13
C_PAD: Final = 0
C_DATA: Final = 1
C_SKIP: Final = 2
C_UCONT: Final = 3
C_ERROR: Final = 4
PAD_LIMIT: Final = 48
"""Most padding bytes a response may end with. A sender pads packets of one batch to one size so
that they can go out in one segmentation-offload call (server/gso.py); a delta continuation is 24
bytes, the usual difference. A receiver refuses more: padding could otherwise hide amplification."""
INPUT_FIN: Final = 0x01
REGION_SHIFT: Final = 40
"""Output region ``r`` spans bytes ``[r << 40, (r + 1) << 40)`` of the sparse output space."""
MAX_REGION: Final = (1 << (64 - REGION_SHIFT)) - 1
"""Region ids are 24-bit: region ``r``'s first byte ``r << 40`` must fit the 64-bit offsets."""
MAX_SEQ: Final = 0xFFFF0000
"""No packet number above this is ever issued (a connection that got this far must reconnect; at
one full packet each, that is 5.8 TB). Proof blocks beyond it are malformed, so ``r + 1`` of a
proof never wraps to 0 and no plan's packet numbers overflow their 32-bit fields."""

REQ_HEAD: Final = struct.Struct(">BBBBI")
_req_head_unpack: Final = REQ_HEAD.unpack_from
_REQ_HEAD_LEN: Final = REQ_HEAD.size  # an int: `Struct.size` is a generic lookup when compiled
_req_head_pack: Final = REQ_HEAD.pack
SYN_BODY: Final = struct.Struct(">Q")
PROOF_BLOCK: Final = struct.Struct(">III")
_proof_unpack: Final = PROOF_BLOCK.unpack_from
_proof_pack: Final = PROOF_BLOCK.pack
SEG_INPUT: Final = struct.Struct(">BIQBH")
SEG_FETCH: Final = struct.Struct(">BH")
FETCH_RANGE: Final = struct.Struct(">QH")
_fetch_range_unpack: Final = FETCH_RANGE.unpack_from
_FETCH_RANGE_LEN: Final = FETCH_RANGE.size
_seg_input_pack: Final = SEG_INPUT.pack
_seg_fetch_pack: Final = SEG_FETCH.pack
_fetch_range_pack: Final = FETCH_RANGE.pack
RESP_HEAD: Final = struct.Struct(">BBBBIIIIH")
CHUNK_DATA: Final = struct.Struct(">BQH")
_data_pack: Final = CHUNK_DATA.pack
CHUNK_SKIP: Final = struct.Struct(">BQQ")
CHUNK_UCONT: Final = struct.Struct(">BBIQQQH")
CHUNK_ERROR: Final = struct.Struct(">BIHH")

SLOT_CAPACITY: Final = MAX_DATAGRAM - RESP_HEAD.size - SEALED_LEN
"""Chunk bytes one response packet can carry, whatever its continuation encoding (1383)."""
MSS: Final = SLOT_CAPACITY - CHUNK_DATA.size
"""Payload bytes of one full DATA chunk (1372)."""
MAX_PROOF_BLOCKS: Final = 16
"""Like TCP's few SACK blocks: a window with more holes recovers by timeout. Bounds the CPU a
forged proof costs (each block is two PRF words; docs/SECURITY.md)."""
MAX_ATTEMPT: Final = 15
"""Timeout requests may be retried this many times per continuation (each one opens an epoch)."""


class InputSeg(NamedTuple):
    region: int
    offset: int
    fin: bool
    ucont: bytes
    data: bytes


class FetchSeg(NamedTuple):
    ucont: bytes
    ranges: tuple[tuple[int, int], ...]  # (start, length)


Segment = InputSeg | FetchSeg


class Request(NamedTuple):
    type: int
    flags: int
    attempt: int
    client_ts: int
    client_nonce: int  # SYN only
    cont: bytes  # sealed continuation (REQUEST/RTO/CLOSE)
    proof: tuple[tuple[int, int, int], ...]
    segments: tuple[Segment, ...]


class Chunk:
    """One chunk of a response. A plain slotted class rather than a NamedTuple: the client builds
    one or more per packet, and a NamedTuple's ``__new__`` is interpreted Python even in the
    compiled build (a slotted class is a native class there, and cheaper to build in pure Python)."""

    __slots__ = ("consumed", "data", "kind", "length", "offset", "region", "type", "valid_end", "valid_start")

    def __init__(
        self,
        type: int,
        region: int,  # UCONT / ERROR
        offset: int,  # DATA / SKIP
        length: int,  # SKIP
        data: bytes,  # DATA bytes, UCONT blob, ERROR message
        kind: int = 0,  # UCONT kind, ERROR code
        consumed: int = 0,
        valid_start: int = 0,
        valid_end: int = 0,
    ) -> None:
        self.type = type
        self.region = region
        self.offset = offset
        self.length = length
        self.data = data
        self.kind = kind
        self.consumed = consumed
        self.valid_start = valid_start
        self.valid_end = valid_end

    def fields(self) -> tuple[int, int, int, int, bytes, int, int, int, int]:
        return (
            self.type,
            self.region,
            self.offset,
            self.length,
            self.data,
            self.kind,
            self.consumed,
            self.valid_start,
            self.valid_end,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chunk) and self.fields() == other.fields()

    def __repr__(self) -> str:
        return f"Chunk{self.fields()!r}"


class Response:
    """A decoded server datagram (a slotted class for the reason given at :class:`Chunk`)."""

    __slots__ = ("chunks", "cont", "echo_ts", "epoch", "flags", "nonce", "parent", "seq", "type")

    def __init__(
        self,
        type: int,
        flags: int,
        seq: int,
        nonce: int,
        parent: int,
        echo_ts: int,
        epoch: int,
        cont: bytes,  # 47 bytes (FULL), raw delta (DELTA) or b""
        chunks: tuple[Chunk, ...],
    ) -> None:
        self.type = type
        self.flags = flags
        self.seq = seq
        self.nonce = nonce
        self.parent = parent
        self.echo_ts = echo_ts
        self.epoch = epoch
        self.cont = cont
        self.chunks = chunks

    def fields(self) -> tuple[int, int, int, int, int, int, int, bytes, tuple[Chunk, ...]]:
        return (
            self.type,
            self.flags,
            self.seq,
            self.nonce,
            self.parent,
            self.echo_ts,
            self.epoch,
            self.cont,
            self.chunks,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Response) and self.fields() == other.fields()

    def __repr__(self) -> str:
        return f"Response{self.fields()!r}"


# --- encoding --------------------------------------------------------------------------------------


_BYTE: Final = tuple(bytes((i,)) for i in range(256))
"""The one-byte counts of a request, prebuilt (``bytes((n,))`` is a generic type call when compiled)."""


def encode_segments(segments: tuple[Segment, ...] | list[Segment]) -> bytes:
    out = [_BYTE[len(segments)]]
    for s in segments:
        if isinstance(s, InputSeg):
            out.append(_seg_input_pack(_S_INPUT, s.region, s.offset, INPUT_FIN if s.fin else 0, len(s.ucont)))
            out.append(s.ucont)
            out.append(len(s.data).to_bytes(2, "big"))
            out.append(s.data)
        else:
            out.append(_seg_fetch_pack(_S_FETCH, len(s.ucont)))
            out.append(s.ucont)
            out.append(_BYTE[len(s.ranges)])
            for a, n in s.ranges:
                out.append(_fetch_range_pack(a, n))
    return b"".join(out)


def encode_syn(client_ts: int, client_nonce: int, segments: list[Segment], pad_to: int = 0) -> bytes:
    body = REQ_HEAD.pack(VERSION, ReqType.SYN, 0, 0, client_ts) + SYN_BODY.pack(client_nonce)
    body += encode_segments(segments)
    if len(body) < pad_to:
        body += bytes(pad_to - len(body))
    return body


def encode_request(
    rtype: int,
    client_ts: int,
    cont: bytes,
    proof: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...],
    segments: list[Segment] | tuple[Segment, ...],
    attempt: int = 0,
) -> bytes:
    parts = [_req_head_pack(VERSION, rtype, 0, attempt, client_ts), cont, _BYTE[len(proof)]]
    for first, last, summary in proof:
        parts.append(_proof_pack(first, last, summary))
    parts.append(encode_segments(segments))
    return b"".join(parts)


def data_chunk(offset: int, data: bytes) -> bytes:
    return _data_pack(C_DATA, offset, len(data)) + data


def skip_chunk(offset: int, length: int) -> bytes:
    return CHUNK_SKIP.pack(ChunkType.SKIP, offset, length)


def ucont_chunk(
    kind: int, region: int, consumed: int, valid_start: int, valid_end: int, blob: bytes
) -> bytes:
    return CHUNK_UCONT.pack(ChunkType.UCONT, kind, region, consumed, valid_start, valid_end, len(blob)) + blob


def error_chunk(region: int, code: int, message: bytes) -> bytes:
    return CHUNK_ERROR.pack(ChunkType.ERROR, region, code, len(message)) + message


# --- decoding (untrusted) --------------------------------------------------------------------------


def _need(data: bytes | memoryview, end: int) -> None:
    if len(data) < end:
        raise MalformedPacket("truncated datagram")


def _decode_segments(data: bytes, pos: int) -> tuple[tuple[Segment, ...], int]:
    _need(data, pos + 1)
    n = data[pos]
    pos += 1
    segs: list[Segment] = []
    for _ in range(n):
        _need(data, pos + 1)
        t = data[pos]
        if t == _S_INPUT:
            _need(data, pos + SEG_INPUT.size)
            _, region, offset, flags, ulen = SEG_INPUT.unpack_from(data, pos)
            if flags & ~INPUT_FIN:
                raise MalformedPacket("unknown input flags")
            if region > MAX_REGION:
                raise MalformedPacket("region id out of range")
            pos += SEG_INPUT.size
            _need(data, pos + ulen + 2)
            ucont = data[pos : pos + ulen]
            pos += ulen
            dlen = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            _need(data, pos + dlen)
            segs.append(
                new_namedtuple(
                    InputSeg, (region, offset, bool(flags & INPUT_FIN), ucont, data[pos : pos + dlen])
                )
            )
            pos += dlen
        elif t == _S_FETCH:
            _need(data, pos + SEG_FETCH.size)
            _, ulen = SEG_FETCH.unpack_from(data, pos)
            pos += SEG_FETCH.size
            _need(data, pos + ulen + 1)
            ucont = data[pos : pos + ulen]
            pos += ulen
            nr = data[pos]
            pos += 1
            _need(data, pos + nr * FETCH_RANGE.size)
            ranges = tuple([_fetch_range_unpack(data, pos + _FETCH_RANGE_LEN * j) for j in range(nr)])
            pos += nr * FETCH_RANGE.size
            segs.append(new_namedtuple(FetchSeg, (ucont, ranges)))
        else:
            raise MalformedPacket("unknown segment type")
    return tuple(segs), pos


def decode_request_untrusted(data: bytes) -> Request:
    """Parse a client datagram. Raises MalformedPacket (or UnsupportedVersion)."""
    n = len(data)
    if n < _REQ_HEAD_LEN:
        raise MalformedPacket("datagram shorter than a request header")
    version, rtype, flags, attempt, client_ts = _req_head_unpack(data, 0)
    if version != VERSION:
        raise UnsupportedVersion(f"version {version}")
    if flags:
        raise MalformedPacket("unknown request flags")
    # Only a timeout request may carry an attempt number: it is part of the replay key, so on any
    # other request it would let one continuation be replayed 256 times.
    if attempt and (rtype != _R_RTO or attempt > MAX_ATTEMPT):
        raise MalformedPacket("attempt number not allowed here")
    pos = _REQ_HEAD_LEN
    if rtype == _R_SYN:
        _need(data, pos + SYN_BODY.size)
        (nonce,) = SYN_BODY.unpack_from(data, pos)
        segs, pos = _decode_segments(data, pos + SYN_BODY.size)
        if any(data[pos:]):
            raise MalformedPacket("SYN padding must be zero bytes")
        return Request(rtype, flags, attempt, client_ts, nonce, b"", (), segs)
    if rtype < 2 or rtype > 5:
        raise MalformedPacket(f"unknown request type {rtype}")
    fast = _decode_common_request(data, n, rtype, attempt, client_ts)
    if fast is not None:
        return fast
    pos2 = pos + SEALED_LEN
    if n < pos2 + 1:
        raise MalformedPacket("truncated datagram")
    cont = data[pos:pos2]
    nproof = data[pos2]
    pos = pos2 + 1
    if nproof > MAX_PROOF_BLOCKS:
        raise MalformedPacket("too many SACK blocks")
    end = pos + 12 * nproof
    if n < end:
        raise MalformedPacket("truncated datagram")
    if nproof == 1:
        proof: tuple[tuple[int, int, int], ...] = (_proof_unpack(data, pos),)
    else:
        proof = tuple([_proof_unpack(data, pos + 12 * j) for j in range(nproof)])
    _check_proof(proof)
    segs, pos = _decode_segments(data, end)
    if pos != n:
        raise MalformedPacket("trailing bytes after request")
    return new_namedtuple(Request, (rtype, flags, attempt, client_ts, 0, cont, proof, segs))


def _check_proof(proof: tuple[tuple[int, int, int], ...]) -> None:
    for first, last, _ in proof:
        if first > last or last > MAX_SEQ:
            raise MalformedPacket("SACK block out of range")


_FAST_BASE: Final = _REQ_HEAD_LEN + SEALED_LEN  # 55: number of SACK blocks


def _decode_common_request(data: bytes, n: int, rtype: int, attempt: int, client_ts: int) -> Request | None:
    """The steady-state request (one SACK block, one FETCH segment) without the general loop.

    Returns None for any other shape; the general parser then decides (and raises if needed).
    """
    b = _FAST_BASE
    if n < b + 17 or data[b] != 1 or data[b + 13] != 1 or data[b + 14] != _S_FETCH:
        return None
    ulen = (data[b + 15] << 8) | data[b + 16]
    p = b + 17 + ulen
    if p >= n:
        return None
    nr = data[p]
    if p + 1 + 10 * nr != n:
        return None
    ranges = tuple([_fetch_range_unpack(data, p + 1 + _FETCH_RANGE_LEN * j) for j in range(nr)])
    seg = new_namedtuple(FetchSeg, (data[b + 17 : p], ranges))
    block = _proof_unpack(data, b + 1)
    if block[0] > block[1] or block[1] > MAX_SEQ:
        raise MalformedPacket("SACK block out of range")
    return new_namedtuple(Request, (rtype, 0, attempt, client_ts, 0, data[_REQ_HEAD_LEN:b], (block,), (seg,)))


def _delta_len(data: bytes, pos: int) -> int:
    _need(data, pos + DELTA_MIN_LEN)
    mask = data[pos]
    if mask & ~0x3F:
        raise MalformedPacket("unknown delta mask bits")
    return DELTA_LENS[mask]


def decode_response_untrusted(data: bytes) -> Response:
    """Parse a server datagram (the client's trust boundary). Raises MalformedPacket."""
    n = len(data)
    if n < _RESP_HEAD_LEN:
        raise MalformedPacket("datagram shorter than a response header")
    version, rtype, flags, _, seq, nonce, parent, echo_ts, epoch = _resp_head_unpack(data, 0)
    if version != VERSION:
        raise UnsupportedVersion(f"version {version}")
    if rtype != R_DATA and rtype != R_SYNACK and rtype != R_RETRANSMIT:
        raise MalformedPacket(f"unknown response type {rtype}")
    pos = _RESP_HEAD_LEN
    if flags == F_DELTA:
        clen = _delta_len(data, pos)
    elif flags == F_FULL:
        clen = SEALED_LEN
    elif flags == 0:
        clen = 0
    else:
        raise MalformedPacket("bad response flags")
    if n < pos + clen:
        raise MalformedPacket("truncated continuation")
    cont = data[pos : pos + clen]
    pos += clen
    # The common packet: one DATA chunk running to the end of the datagram, or to its padding.
    if pos + _DATA_HEAD_LEN <= n and data[pos] == C_DATA:
        off: int  # typed, so that the compiled build does native int arithmetic with them
        ln: int
        _, off, ln = _data_unpack(data, pos)
        end = pos + _DATA_HEAD_LEN + ln
        if end == n or (end < n and data[end] == C_PAD and _padding_ok(data, end, n)):
            return Response(
                rtype,
                flags,
                seq,
                nonce,
                parent,
                echo_ts,
                epoch,
                cont,
                (Chunk(C_DATA, 0, off, ln, data[pos + _DATA_HEAD_LEN : end]),),
            )
    return Response(rtype, flags, seq, nonce, parent, echo_ts, epoch, cont, _decode_chunks(data, pos, n))


def _padding_ok(data: bytes, pos: int, n: int) -> bool:
    return n - pos <= PAD_LIMIT and data.count(0, pos) == n - pos


def _decode_chunks(data: bytes, pos: int, n: int) -> tuple[Chunk, ...]:
    chunks: list[Chunk] = []
    while pos < n:
        t = data[pos]
        if t == C_PAD:
            if not _padding_ok(data, pos, n):
                raise MalformedPacket("padding must be at most PAD_LIMIT zero bytes")
            break
        if t == C_DATA:
            _need(data, pos + CHUNK_DATA.size)
            _, off, ln = CHUNK_DATA.unpack_from(data, pos)
            pos += CHUNK_DATA.size
            _need(data, pos + ln)
            chunks.append(Chunk(t, 0, off, ln, data[pos : pos + ln]))
            pos += ln
        elif t == C_SKIP:
            _need(data, pos + CHUNK_SKIP.size)
            _, off, ln = CHUNK_SKIP.unpack_from(data, pos)
            pos += CHUNK_SKIP.size
            chunks.append(Chunk(t, 0, off, ln, b""))
        elif t == C_UCONT:
            _need(data, pos + CHUNK_UCONT.size)
            _, kind, region, consumed, vs, ve, blen = CHUNK_UCONT.unpack_from(data, pos)
            if kind not in (1, 2) or ve < vs:
                raise MalformedPacket("bad user continuation chunk")
            pos += CHUNK_UCONT.size
            _need(data, pos + blen)
            chunks.append(Chunk(t, region, 0, 0, data[pos : pos + blen], kind, consumed, vs, ve))
            pos += blen
        elif t == C_ERROR:
            _need(data, pos + CHUNK_ERROR.size)
            _, region, code, mlen = CHUNK_ERROR.unpack_from(data, pos)
            pos += CHUNK_ERROR.size
            _need(data, pos + mlen)
            chunks.append(Chunk(t, region, 0, 0, data[pos : pos + mlen], code))
            pos += mlen
        else:
            raise MalformedPacket(f"unknown chunk type {t}")
    return tuple(chunks)


# Final: the compiled build reads these from C statics instead of the module's dict.
_RESP_HEAD_LEN: Final = RESP_HEAD.size
_resp_head_unpack: Final = RESP_HEAD.unpack_from
_DATA_HEAD_LEN: Final = CHUNK_DATA.size
_data_unpack: Final = CHUNK_DATA.unpack_from
