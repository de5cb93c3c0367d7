"""Transport continuations: the TCB of one trickle, sealed with a MAC, carried by the client.

Theory of operation
-------------------
TCP keeps a TCB per connection. A Trickles server keeps none: every response packet that can clock a
new request carries a *transport continuation* holding what the server needs to rebuild Reno's state
when the client sends it back (paper sections 2.1, 2.5):

========== ===== ===================================================================================
field      bytes meaning
========== ===== ===================================================================================
key_id     1     which key of the ring sealed it (rotation)
phase      1     SYNACK (initial window deferred), NORMAL, BOOTSTRAP (first window after fast
                 recovery), SLOWSTART (first window after a retransmit timeout); informational for
                 the server, which treats the last three alike
ack_div    1     1, or 2 for delayed ACKs (one Reno ACK event per two packets)
conn_id    8     connection identifier; binds nonces to this connection
seq        4     packet number this continuation rides in; its request acknowledges it
epoch      2     nonce epoch; bumped by every retransmit timeout so re-used packet numbers get fresh
                 nonces
base       4     TCPBase: first packet of the current loss-free piece
start      2     startCwnd: Reno's window in force at ``base``
ssthresh   2     slow-start threshold of the piece
ts         4     server clock (ms, mod 2**32) at sealing; freshness and replay horizon
rtt        2     server's RTT estimate (ms), informational (never used to decide anything)
mac        16    HMAC-SHA256 truncated to 128 bits (RFC 2104 section 5) over the 31 bytes above and
                 the client's address, so a continuation cannot be replayed from another address
========== ===== ===================================================================================

47 bytes against the paper's 75 + 12m (m loss reports; our SACK proof rides in the request instead).
The server's clock only ever meets its own (or a replica's) timestamps: freshness tolerates a stated
skew, and RTT for the retransmit timer is measured by the client from its own echoed timestamps.

Delta encoding (paper section 5.3): the client predicts every field of a child continuation from the
parent continuation it sent (same base, start, ssthresh, ... and seq/epoch from the packet header).
The server sends only the fields the client cannot know (key_id, ts, rtt), a mask naming any
mispredicted field followed by those fields, and the MAC. A wrong reconstruction cannot succeed: the
MAC is over the full continuation, so the next request would be dropped.
"""

from __future__ import annotations

import hmac
import struct
from enum import IntEnum
from typing import Final, NamedTuple

from trickles.errors import BadMac, MalformedPacket, ProtocolViolation, Stale
from trickles.keys import KeyRing, ServerKey
from trickles.reno import MAX_CWND


class Phase(IntEnum):
    SYNACK = 0
    NORMAL = 1
    BOOTSTRAP = 2
    SLOWSTART = 3


class Continuation(NamedTuple):
    """The fields of a transport continuation (immutable; a tuple for speed on the hot path)."""

    key_id: int
    phase: int
    ack_div: int
    conn_id: int
    seq: int
    epoch: int
    base: int
    start: int
    ssthresh: int
    ts: int
    rtt: int


FIELDS: Final = struct.Struct(">BBBQIHIHHIH")
"""The 31 field bytes of a sealed continuation, in wire order (the MAC follows)."""
FIELDS_LEN: Final = FIELDS.size  # 31
MAC_LEN: Final = 16
SEALED_LEN: Final = FIELDS_LEN + MAC_LEN  # 47
_pack: Final = FIELDS.pack  # Final: the compiled build reads these from C statics, not a dict
_unpack_from: Final = FIELDS.unpack_from
_compare: Final = hmac.compare_digest
new_namedtuple: Final = tuple.__new__
"""``new_namedtuple(T, values)`` builds NamedTuple ``T`` from exactly its fields' values, as
``T._make(values)`` does but without running Python: a NamedTuple's ``_make`` and ``__new__`` are
interpreted even in the compiled build (0.52 -> 0.23 us for a request's tuple). For the per-request
ones of both sides (a Final: a C static there)."""

U32: Final = 0xFFFFFFFF


def cont_mac(key: ServerKey, fields: bytes, addr: bytes) -> bytes:
    """The 16-byte MAC of a continuation's 31 field bytes, bound to the client address."""
    h = key.mac_state.copy()
    h.update(fields)
    h.update(addr)
    return h.digest()[:MAC_LEN]


def seal(c: Continuation, key: ServerKey, addr: bytes) -> bytes:
    """The 47-byte wire form of ``c``: fields then MAC (bound to the client address ``addr``)."""
    fields = _pack(*c)
    return fields + cont_mac(key, fields, addr)


def mac_of(sealed: bytes) -> bytes:
    return sealed[FIELDS_LEN:SEALED_LEN]


def check_fresh(ts: int, now_ms: int, horizon_ms: int, skew_ms: int) -> None:
    """Raise :class:`Stale` unless ``ts`` lies within ``[now - horizon, now + skew]`` (mod 2**32)."""
    age = (now_ms - ts) & U32
    if age > horizon_ms and (U32 + 1 - age) > skew_ms:
        raise Stale("continuation outside the freshness horizon")


def open_untrusted(
    data: bytes | memoryview,
    offset: int,
    ring: KeyRing,
    addr: bytes,
    now_ms: int,
    horizon_ms: int,
    skew_ms: int,
) -> tuple[Continuation, bytes]:
    """Parse and verify a sealed continuation at ``data[offset:]``; return it and its MAC.

    Raises MalformedPacket, UnknownKeyId, BadMac or Stale. The MAC is checked before freshness, so
    tampering with the timestamp is reported as tampering.
    """
    end = offset + SEALED_LEN
    if len(data) < end:
        raise MalformedPacket("truncated continuation")
    # Slices of bytes are bytes already: no bytes() call (a generic type call when compiled) for them.
    buf = data if isinstance(data, bytes) else bytes(data)
    fields = buf[offset : offset + FIELDS_LEN]
    mac = buf[offset + FIELDS_LEN : end]
    key = ring.get(fields[0])
    if not _compare(cont_mac(key, fields, addr), mac):
        raise BadMac("continuation MAC does not verify")
    c = new_namedtuple(Continuation, _unpack_from(fields))
    if not plausible(c):
        # Only a key holder can seal such fields; refused here so no arithmetic ever meets them.
        raise ProtocolViolation("continuation fields out of range")
    check_fresh(c.ts, now_ms, horizon_ms, skew_ms)
    return c, mac


def plausible(c: Continuation) -> bool:
    """Fields no server of ours would seal are refused by both ends (the client cannot check the
    MAC, so this arithmetic is all it can check)."""
    return (
        c.ack_div in (1, 2)
        and c.phase <= 3
        and 1 <= c.start <= MAX_CWND
        and c.ssthresh >= 1
        and c.base <= c.seq + 1
    )


def parse_unverified(sealed: bytes) -> Continuation:
    """The fields of a sealed continuation, without checking anything (the client's view)."""
    if len(sealed) != SEALED_LEN:
        raise MalformedPacket("continuation has the wrong length")
    # What _make runs, without its Python frame (see new_namedtuple). FIELDS always unpacks all 11
    # fields, so _make's length check has nothing to catch.
    return new_namedtuple(Continuation, _unpack_from(sealed))


# --- delta encoding -------------------------------------------------------------------------------

# Optional fields, in wire order: (mask bit, Continuation index, struct format).
_DELTA_OPTIONAL: Final = (
    (0x01, 1, struct.Struct(">B")),  # phase
    (0x02, 2, struct.Struct(">B")),  # ack_div
    (0x04, 3, struct.Struct(">Q")),  # conn_id
    (0x08, 6, struct.Struct(">I")),  # base
    (0x10, 7, struct.Struct(">H")),  # start
    (0x20, 8, struct.Struct(">H")),  # ssthresh
)
_DELTA_HEAD: Final = struct.Struct(">BBIH")  # mask, key_id, ts, rtt
DELTA_MIN_LEN: Final = _DELTA_HEAD.size + MAC_LEN  # 24
DELTA_MAX_LEN = DELTA_MIN_LEN + sum(s.size for _, _, s in _DELTA_OPTIONAL)
DELTA_LENS: Final = tuple(
    DELTA_MIN_LEN + sum(st.size for bit, _, st in _DELTA_OPTIONAL if mask & bit) for mask in range(64)
)
"""A delta's length for each mask (its 6 bits name the optional fields that follow)."""


def encode_delta(c: Continuation, sealed: bytes, predicted: Continuation) -> bytes:
    """Only what the client cannot predict: key_id, ts, rtt, mispredicted fields, and the MAC."""
    p = predicted
    if (
        c.phase == p.phase
        and c.ack_div == p.ack_div
        and c.conn_id == p.conn_id
        and c.base == p.base
        and c.start == p.start
        and c.ssthresh == p.ssthresh
    ):  # every optional field predicted (every loss-free child): mask 0, no loop
        return _DELTA_HEAD.pack(0, c.key_id, c.ts, c.rtt) + sealed[FIELDS_LEN:]
    mask = 0
    extra = []
    for bit, idx, st in _DELTA_OPTIONAL:
        if c[idx] != predicted[idx]:
            mask |= bit
            extra.append(st.pack(c[idx]))
    return b"".join((_DELTA_HEAD.pack(mask, c.key_id, c.ts, c.rtt), *extra, sealed[FIELDS_LEN:]))


def decode_delta(
    data: bytes | memoryview, offset: int, predicted: Continuation, seq: int, epoch: int
) -> tuple[bytes, int]:
    """Rebuild the sealed 47-byte continuation from a delta at ``data[offset:]``.

    ``predicted`` is the parent continuation (the client's prediction of every field); ``seq`` and
    ``epoch`` come from the packet header. Returns (sealed continuation, offset after the delta).
    """
    if len(data) < offset + DELTA_MIN_LEN:
        raise MalformedPacket("truncated delta continuation")
    mask: int
    mask, key_id, ts, rtt = _DELTA_HEAD.unpack_from(data, offset)
    if mask & ~0x3F:
        raise MalformedPacket("unknown delta mask bits")
    pos = offset + _DELTA_HEAD.size
    p = predicted
    if mask == 0:  # the common case: every field as predicted
        fields = _pack(
            key_id, p.phase, p.ack_div, p.conn_id, seq, epoch, p.base, p.start, p.ssthresh, ts, rtt
        )
    else:
        vals = list(p)
        for bit, idx, st in _DELTA_OPTIONAL:
            if mask & bit:
                if len(data) < pos + st.size + MAC_LEN:
                    raise MalformedPacket("truncated delta continuation")
                (vals[idx],) = st.unpack_from(data, pos)
                pos += st.size
        vals[0], vals[4], vals[5], vals[9], vals[10] = key_id, seq, epoch, ts, rtt
        fields = _pack(*vals)
    return fields + data[pos : pos + MAC_LEN], pos + MAC_LEN
