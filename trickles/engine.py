"""The stateless server step: one datagram in, the response datagrams out.

``ServerEngine.step`` is a function of (datagram, client address, now, key ring, app). Nothing about
the connection survives the call: everything it needs arrives in the datagram and everything the
client needs next leaves in the responses. The straight line::

    decode -> open continuation (MAC, freshness) -> structural checks of the SACK proof
           -> [loss-free: plan, then proof + children's nonces in one AES call]
              [otherwise: verify the proof, then plan (O(SACK blocks)), then children's nonces]
           -> replay filter (the acks the plan consumes) -> event to the app with a minisocket
           -> seal children -> encode

Nothing costly runs before the proof verifies: a loss-free plan is two window evaluations, and the
filter records the consumed acks only once everything has verified, so a forged request that copies
a genuine continuation cannot burn it.

The app sees a :class:`Minisocket` (paper section 3.2): the event's input and fetch requests and one
slot per response packet congestion control allows. It fills slots; unfilled slots still go out,
carrying only the transport continuation, so the trickle continues.
"""

from __future__ import annotations

import hmac
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple, Protocol

from trickles import tokens, wire
from trickles.congestion import (
    FULL1_INTERVAL,
    AckKind,
    Plan,
    ProtocolConfig,
    ack_kind,
    check_ranges,
    plan_request,
    plan_timeout,
    timeout_allowed,
)
from trickles.continuation import (
    SEALED_LEN,
    Continuation,
    Phase,
    check_fresh,
    cont_mac,
    encode_delta,
    open_untrusted,
    seal,
)
from trickles.errors import (
    BadSackProof,
    DropReason,
    MalformedPacket,
    ProtocolViolation,
    TricklesError,
)
from trickles.keys import KeyRing, ServerKey
from trickles.nonces import packet_nonces, piece_id, proof_and_nonces, verify_proof
from trickles.replay import ReplayFilter, ack_key, close_key, timeout_key
from trickles.wire import (
    F_DELTA,
    F_FULL,
    R_DATA,
    R_RETRANSMIT,
    FetchSeg,
    InputSeg,
    ReqType,
    RespFlags,
    RespType,
)

_CLOSE, _RTO, _REGEN = int(ReqType.CLOSE), int(ReqType.RTO), int(ReqType.REGEN)


class EventKind(IntEnum):
    OPEN = 1
    REQUEST = 2
    CLOSE = 3


class Minisocket:
    """A transient TCB for one event: read its input, fill at most ``n_slots`` packets, then gone.

    Input segment ``i`` is answered in slot ``i``; fetch range ``j`` (counting across fetch
    segments) is answered in slot ``len(inputs) + j``. Each slot holds ``capacity(i)`` chunk bytes.
    """

    __slots__ = ("_ctx", "_free", "chunks", "conn_id", "fetches", "inputs", "kind", "now", "plan")

    def __init__(
        self,
        kind: EventKind,
        conn_id: int,
        inputs: list[InputSeg],
        fetches: list[FetchSeg],
        caps: list[int],
        now: float,
        plan: Plan | None,
    ) -> None:
        self.kind = kind
        self.conn_id = conn_id
        self.inputs = inputs
        self.fetches = fetches
        self._free = caps
        self.chunks: list[list[bytes]] = [[] for _ in caps]
        self.now = now
        self.plan = plan
        self._ctx: _Ctx | None = None

    @property
    def peer(self) -> bytes:
        """The client's address bytes (packed IP, 2-byte port) the continuations are MAC-bound to.

        Authenticated for requests (a continuation verifies only from the address it was sealed
        for), claimed for an OPEN; empty once the event is spent.
        """
        ctx = self._ctx
        return ctx.addr if ctx is not None else b""

    @property
    def n_slots(self) -> int:
        return len(self._free)

    def capacity(self, slot: int) -> int:
        """Chunk bytes still free in ``slot``."""
        return self._free[slot]

    def _put(self, slot: int, chunk: bytes) -> bool:
        free = self._free
        if slot >= len(free) or len(chunk) > free[slot]:
            return False
        self.chunks[slot].append(chunk)
        free[slot] -= len(chunk)
        return True

    def send_data(self, slot: int, offset: int, data: bytes) -> bool:
        """``msk_send`` for one slot: bytes at ``offset`` of the output space. False if it does not fit."""
        free = self._free
        n = len(data) + _DATA_HEAD
        if slot >= len(free) or n > free[slot]:
            return False
        self.chunks[slot].append(_data_pack(_C_DATA, offset, len(data)) + data)
        free[slot] -= n
        return True

    def send_skip(self, slot: int, offset: int, length: int) -> bool:
        """SKIP (paper section 5.2): the object ends at ``offset``; ``[offset, offset+length)`` of its
        region will never be sent, so the client stops asking for it."""
        return self._put(slot, wire.skip_chunk(offset, length))

    def set_ucont(
        self, slot: int, kind: int, region: int, consumed: int, valid_start: int, valid_end: int, blob: bytes
    ) -> bool:
        """``msk_setucont``: attach a user continuation to the packet of ``slot``."""
        return self._put(slot, wire.ucont_chunk(kind, region, consumed, valid_start, valid_end, blob))

    def send_error(self, slot: int, region: int, code: int, message: bytes) -> bool:
        return self._put(slot, wire.error_chunk(region, code, message[:200]))

    def fetch_slots(self) -> list[tuple[int, FetchSeg, int, int]]:
        """(slot, segment, start, length) for every requested range, in slot order."""
        out: list[tuple[int, FetchSeg, int, int]] = []
        slot = len(self.inputs)
        n = len(self._free)
        for seg in self.fetches:
            for start, length in seg.ranges:
                if slot >= n:
                    return out
                out.append((slot, seg, start, length))
                slot += 1
        return out


_DATA_HEAD = wire.CHUNK_DATA.size
_data_pack = wire.CHUNK_DATA.pack
_C_DATA = wire.C_DATA


class App(Protocol):
    """A continuation-based server application (stateless per connection)."""

    def handle(self, msk: Minisocket) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Server-side settings. ``protocol`` holds the constants clients must agree with."""

    protocol: ProtocolConfig = ProtocolConfig()
    horizon_s: float = 120.0
    """Continuations older than this are stale; the replay filter remembers MACs at least this long
    plus ``skew_s`` (two generations of that period)."""
    skew_s: float = 5.0
    """How far in the future (another replica's clock) a continuation's timestamp may lie."""
    delta: bool = True
    """Delta-encode continuations in responses (paper section 5.3)."""
    replay_capacity: int = 1 << 20
    cache_size: int = 65536
    """Soft-state continuation cache entries (paper section 5.1); 0 turns it off."""


class StepResult(NamedTuple):
    datagrams: list[bytes]
    drop: DropReason | None
    kind: int  # request type, 0 if undecodable
    rtt_ms: int  # server's RTT sample, 0 if none


_DROP_EMPTY: list[bytes] = []


@dataclass
class EngineStats:
    """Plain counters the I/O layer exports (metrics read them at scrape time; nothing per packet)."""

    received: int = 0
    sent: int = 0
    bytes_sent: int = 0
    continuations_sealed: int = 0
    retransmits: int = 0
    terminated: int = 0
    continued: int = 0  # requests answered with one new packet
    split: int = 0  # requests answered with two or more (the window grew)
    recoveries: int = 0  # requests answered by fast recovery (a new piece after a loss)
    timeout_restarts: int = 0  # timeout requests answered (slow start in a new epoch)
    dropped: dict[str, int] = field(default_factory=dict)


class ServerEngine:
    """The stateless Trickles server. Holds keys, config and app-wide bounded filters only."""

    def __init__(self, ring: KeyRing, app: App, config: ServerConfig | None = None) -> None:
        self.ring = ring
        self.app = app
        self.config = config or ServerConfig()
        self.stats = EngineStats()
        self._horizon_ms = int(self.config.horizon_s * 1000)
        self._skew_ms = int(self.config.skew_s * 1000)
        self.replay = ReplayFilter(self._horizon_ms + self._skew_ms, self.config.replay_capacity)
        self._on_event: Callable[[Minisocket], None] = app.handle
        # Soft state: continuations this server sealed, parsed, keyed by their sealed bytes. A hit
        # skips the MAC check and the parse; a miss (or dropping the cache) costs only time.
        # sealed -> (fields, client address), oldest first
        self._cache: OrderedDict[bytes, tuple[Continuation, bytes]] = OrderedDict()
        self._cache_size = self.config.cache_size
        self._rto_cwnd = self.config.protocol.rto_cwnd
        self._rto_min_ms = self.config.protocol.rto_min_ms
        self._burst_limit = self.config.protocol.burst_limit
        self.cache_hits = 0
        self.cache_misses = 0
        self.last_internal_error: BaseException | None = None

    @property
    def cache_len(self) -> int:
        """Continuations in the soft-state cache."""
        return len(self._cache)

    def drop_cache(self) -> None:
        """Forget all soft state (what a memory-pressed or restarted server has)."""
        self._cache.clear()

    # -- entry points ---------------------------------------------------------------------------------

    def step(self, data: bytes, addr: bytes, now: float) -> StepResult:
        """Process one datagram from ``addr`` (the client's address bytes) at time ``now`` (s).

        The whole event-queue cycle in one call: :meth:`receive`, the app's ``handle``, :meth:`send`.
        """
        try:
            msk = self.receive(data, addr, now)
            if not isinstance(msk, Minisocket):
                return msk
            self._on_event(msk)
            return self.send(msk)
        except Exception as e:  # one datagram must never stop the server
            return self.internal_drop(e)

    def internal_drop(self, exc: BaseException) -> StepResult:
        """Count an unexpected exception as a drop (reason ``internal``) and keep it for the I/O
        layer to log (rate-limited): a bug triggered by one datagram costs that datagram only."""
        d = self.stats.dropped
        d[DropReason.INTERNAL] = d.get(DropReason.INTERNAL, 0) + 1
        self.last_internal_error = exc
        return StepResult(_DROP_EMPTY, DropReason.INTERNAL, 0, 0)

    def receive(
        self, data: bytes, addr: bytes, now: float, *, trusted: bool = False
    ) -> Minisocket | StepResult:
        """Verify a datagram and turn it into a pending event (a minisocket), or a drop/no-op result.

        ``trusted`` skips the replay filter: for events re-inserted by :meth:`insert_events`, which
        were verified (and recorded) where they were extracted.
        """
        self.stats.received += 1
        kind = 0
        try:
            req = wire.decode_request_untrusted(data)
            kind = req.type
            if kind == _SYN:
                return self._syn(req, data, addr, now)
            msk = self._request(req, data, addr, now, trusted)
        except TricklesError as e:
            d = self.stats.dropped
            d[e.reason] = d.get(e.reason, 0) + 1
            return StepResult(_DROP_EMPTY, e.reason, kind, 0)
        if msk is None:
            if kind != _CLOSE:
                self.stats.terminated += 1
            return StepResult(_DROP_EMPTY, None, kind, 0)
        return msk

    def send(self, msk: Minisocket) -> StepResult:
        """``msk_send``: seal and encode the event's response packets (the minisocket is then spent)."""
        ctx = msk._ctx
        if ctx is None:
            return StepResult(_DROP_EMPTY, None, int(ReqType.CLOSE), 0)
        msk._ctx = None
        out = self._encode_syn(msk, ctx) if msk.kind == EventKind.OPEN else self._encode(msk, ctx)
        self.stats.sent += len(out)
        self.stats.bytes_sent += sum(map(len, out))
        return StepResult(out, None, ctx.req.type, ctx.rtt)

    def drop_event(self, msk: Minisocket) -> None:
        """``msk_drop``: discard a pending event without answering (the client will recover)."""
        msk._ctx = None

    def extract_events(self, msks: list[Minisocket], now: float) -> bytes:
        """``msk_extractEvents``: pending events as one MAC-protected blob for another endpoint.

        An event is fully determined by the datagram that caused it, the client address and the
        arrival time, so that is what travels; the MAC (under the key ring's current key) stops
        anyone from injecting events that skip verification, and the blob is stamped so it can be
        inserted once, within the freshness horizon. The events are spent here.
        """
        parts = [len(msks).to_bytes(2, "big")]
        for m in msks:
            ctx = m._ctx
            if ctx is None:
                raise ValueError("event already answered or dropped")
            m._ctx = None
            parts += [
                len(ctx.data).to_bytes(2, "big"),
                ctx.data,
                len(ctx.addr).to_bytes(1, "big"),
                ctx.addr,
                int(ctx.now * 1e6).to_bytes(8, "big"),
            ]
        return tokens.seal(self.ring.current, tokens.EVENTS, tokens.now_ms(now), b"".join(parts))

    def insert_events(self, blob: bytes, now: float) -> list[Minisocket]:
        """``msk_insertEvents``: verify a blob from :meth:`extract_events` and queue its events here.

        Raises MalformedPacket, UnknownKeyId, BadMac, Stale or Replay (a blob inserts once).
        """
        now_ms = tokens.now_ms(now)
        body = tokens.open_untrusted(
            self.ring, tokens.EVENTS, blob, now_ms, self._horizon_ms, self._skew_ms
        ).body
        rkeys = [hash((blob[-tokens.MAC_LEN :], "events"))]
        self.replay.check(rkeys, tokens.HEAD.unpack_from(blob)[1], now_ms)
        self.replay.add(rkeys, now_ms)
        n, pos = int.from_bytes(body[0:2], "big"), 2
        out: list[Minisocket] = []
        try:
            for _ in range(n):
                dl = int.from_bytes(body[pos : pos + 2], "big")
                data = body[pos + 2 : pos + 2 + dl]
                pos += 2 + dl
                al = body[pos]
                addr = body[pos + 1 : pos + 1 + al]
                pos += 1 + al
                t = int.from_bytes(body[pos : pos + 8], "big") / 1e6
                pos += 8
                m = self.receive(data, addr, t, trusted=True)
                if isinstance(m, Minisocket):
                    out.append(m)
        except IndexError:
            raise MalformedPacket("truncated event blob") from None
        return out

    # -- SYN --------------------------------------------------------------------------------------------

    def _syn(self, req: wire.Request, data: bytes, addr: bytes, now: float) -> Minisocket:
        """A SYN becomes an OPEN event; its answer is one packet, never larger than the SYN itself."""
        budget = len(data) - wire.RESP_HEAD.size - SEALED_LEN
        if budget < 0:
            raise SynTooSmall("SYN smaller than its answer would be")
        inputs = [s for s in req.segments if isinstance(s, InputSeg)][:1]
        key = self.ring.current
        now_ms = int(now * 1000) & 0xFFFFFFFF
        # A fresh connection id without state: a MAC over the client's nonce, address and time.
        conn_id = int.from_bytes(
            hmac.digest(
                key.mac,
                b"conn" + req.client_nonce.to_bytes(8, "big") + addr + now_ms.to_bytes(4, "big"),
                "sha256",
            )[:8],
            "big",
        )
        p = self.config.protocol
        # The first nonce epoch is unpredictable too: blind injection of forged packets then has
        # to guess it as well as a packet number in the window.
        c = Continuation(
            key.key_id,
            Phase.SYNACK,
            p.ack_div,
            conn_id,
            0,
            conn_id >> 49,
            1,
            p.initial_cwnd,
            p.initial_ssthresh,
            now_ms,
            0,
        )
        msk = Minisocket(EventKind.OPEN, conn_id, inputs, [], [min(budget, wire.SLOT_CAPACITY)], now, None)
        msk._ctx = _Ctx(req, data, addr, now, c, None, key, [], now_ms, 0)
        return msk

    def _encode_syn(self, msk: Minisocket, ctx: _Ctx) -> list[bytes]:
        c, key = ctx.cont, ctx.ckey
        sealed = seal(c, key, ctx.addr)
        self.stats.continuations_sealed += 1
        (nonce,) = packet_nonces(key, piece_id(c.conn_id, c.epoch, c.base, c.start, c.ssthresh), [0])
        head = wire.RESP_HEAD.pack(
            wire.VERSION, RespType.SYNACK, RespFlags.FULL, 0, 0, nonce, 0, ctx.req.client_ts, c.epoch
        )
        return [b"".join((head, sealed, *msk.chunks[0]))]

    # -- REQUEST / RTO / CLOSE --------------------------------------------------------------------------

    def _request(
        self, req: wire.Request, data: bytes, addr: bytes, now: float, trusted: bool
    ) -> Minisocket | None:
        """Verify a REQUEST/REGEN/RTO/CLOSE and plan its answer: the receive half of the step."""
        now_ms = int(now * 1000) & 0xFFFFFFFF
        hit = self._cache.pop(req.cont, None) if self._cache_size else None
        if hit is not None and hit[1] == addr:
            c = hit[0]
            check_fresh(c.ts, now_ms, self._horizon_ms, self._skew_ms)
            self.cache_hits += 1
        else:
            c, _ = open_untrusted(req.cont, 0, self.ring, addr, now_ms, self._horizon_ms, self._skew_ms)
            self.cache_misses += 1
        key = self.ring.get(c.key_id)
        proof = req.proof
        ranges = [(l, r) for l, r, _ in proof]
        rtype = req.type
        piece = piece_id(c.conn_id, c.epoch, c.base, c.start, c.ssthresh)
        if rtype == _CLOSE:
            if not verify_proof(key, piece, proof):
                raise BadSackProof("SACK proof does not verify")
            self._consume([close_key(c.conn_id, c.epoch, c.base, c.seq)], c, now_ms, trusted)
            self._on_event(Minisocket(EventKind.CLOSE, c.conn_id, [], [], [], now, None))
            return None

        nonces: list[int] = []
        if rtype == _RTO:
            if not timeout_allowed(c, req.attempt, (now_ms - c.ts) & 0xFFFFFFFF, self._rto_min_ms):
                raise ProtocolViolation("timeout request earlier than the client's timer allows")
            if not verify_proof(key, piece, proof):
                raise BadSackProof("SACK proof does not verify")
            plan = plan_timeout(c, ranges, req.attempt, self._rto_cwnd)
            rkeys = [timeout_key(c.conn_id, plan.epoch)]
        elif rtype != _REGEN and c.phase != Phase.SYNACK and len(ranges) == 1 and ranges[0][0] == c.base:
            # Loss-free, the hot path: planning is O(1), so plan first and check the proof and
            # compute the children's nonces (same piece) in one AES call.
            plan = plan_request(c, ranges, self._burst_limit)
            ok, nonces = proof_and_nonces(key, piece, proof, plan.lo, plan.hi)
            if not ok:
                raise BadSackProof("SACK proof does not verify")
            rkeys = [ack_key(c.conn_id, c.epoch, c.base, c.seq)]
        else:
            if c.phase != Phase.SYNACK:
                check_ranges(c, ranges)
            if not verify_proof(key, piece, proof):
                raise BadSackProof("SACK proof does not verify")
            plan = plan_request(c, ranges, self._burst_limit, rtype == _REGEN)
            rkeys = self._owned_keys(c, plan)
        n_slots = plan.n_slots
        if n_slots == 0:
            # Terminated trickle: nothing to send; its acks are still spent.
            self._consume(rkeys, c, now_ms, trusted)
            return None
        inputs: list[InputSeg] = []
        fetches: list[FetchSeg] = []
        for sg in req.segments:
            if isinstance(sg, InputSeg):
                inputs.append(sg)
            else:
                fetches.append(sg)
        if len(inputs) > n_slots:
            raise ProtocolViolation("more input segments than response packets")
        self._consume(rkeys, c, now_ms, trusted)

        # New pieces move to the current key; a loss-free continuation keeps its connection's key.
        ckey = self.ring.current if plan.new_piece else key
        if not nonces and plan.hi >= plan.lo:
            child_piece = piece_id(c.conn_id, plan.epoch, plan.base, plan.start, plan.ssthresh)
            nonces = packet_nonces(ckey, child_piece, range(plan.lo, plan.hi + 1))
        rtt = (now_ms - c.ts) & 0xFFFFFFFF
        if rtt > self._horizon_ms:
            rtt = 0
        st = self.stats
        if rtype == _RTO:
            st.timeout_restarts += 1
        elif plan.new_piece:
            st.recoveries += 1
        elif plan.hi > plan.lo:
            st.split += 1
        else:
            st.continued += 1
        msk = Minisocket(EventKind.REQUEST, c.conn_id, inputs, fetches, [_SLOT_CAP] * n_slots, now, plan)
        msk._ctx = _Ctx(req, data, addr, now, c, plan, ckey, nonces, now_ms, rtt)
        return msk

    def _owned_keys(self, c: Continuation, plan: Plan) -> list[int]:
        """Replay keys of every ack the plan consumes (those carrying a continuation)."""
        b, d, conn, epoch = c.base, c.ack_div, c.conn_id, c.epoch
        return [
            ack_key(conn, epoch, b, p)
            for p in range(plan.own_lo, plan.own_hi + 1)
            if p < b or ack_kind(p - b, d) != AckKind.MINIMAL
        ]

    def _consume(self, rkeys: list[int], c: Continuation, now_ms: int, trusted: bool) -> None:
        """Refuse a request whose acks (or timeout epoch) were used; record them otherwise."""
        if trusted:
            return
        self.replay.check(rkeys, c.ts, now_ms)
        self.replay.add(rkeys, now_ms)

    def _encode(self, msk: Minisocket, ctx: _Ctx) -> list[bytes]:
        req, c, plan, ckey, nonces, addr, now_ms = (
            ctx.req,
            ctx.cont,
            ctx.plan,
            ctx.ckey,
            ctx.nonces,
            ctx.addr,
            ctx.now_ms,
        )
        assert plan is not None
        chunks = msk.chunks
        out: list[bytes] = []
        head_pack = wire.RESP_HEAD.pack
        ver, echo, parent = wire.VERSION, req.client_ts, c.seq
        slot = 0
        if plan.retransmits:
            key = self.ring.get(c.key_id)
            piece = piece_id(c.conn_id, c.epoch, c.base, c.start, c.ssthresh)
            rn = packet_nonces(key, piece, plan.retransmits, retransmit=True)
            for s, n in zip(plan.retransmits, rn, strict=True):
                head = head_pack(ver, R_RETRANSMIT, 0, 0, s, n, parent, echo, c.epoch)
                out.append(b"".join((head, *chunks[slot])))
                slot += 1
            self.stats.retransmits += len(plan.retransmits)
        rtt_sample = ctx.rtt
        rtt = (c.rtt * 7 + rtt_sample) >> 3 if c.rtt else rtt_sample
        rtt = min(rtt, 0xFFFF)
        kid, d, conn, epoch = ckey.key_id, c.ack_div, c.conn_id, plan.epoch
        pb, pstart, pss, pphase = plan.base, plan.start, plan.ssthresh, plan.phase
        delta = self.config.delta
        cache, cache_size = self._cache, self._cache_size
        # Every child of one request shares all fields but seq, so the delta encoding (everything
        # but the MAC) is the same for all of them: compute it once.
        dprefix = b""
        sealed_count = 0
        for j, seq in enumerate(range(plan.lo, plan.hi + 1)):
            if d != 1 and seq - pb >= FULL1_INTERVAL and (seq - pb) & 1:  # MINIMAL: no continuation
                head = head_pack(ver, R_DATA, 0, 0, seq, nonces[j], parent, echo, epoch)
                out.append(b"".join((head, *chunks[slot])))
            else:
                fields = _cont_pack(kid, pphase, d, conn, seq, epoch, pb, pstart, pss, now_ms, rtt)
                mac = cont_mac(ckey, fields, addr)
                sealed_count += 1
                if cache_size:
                    cache[fields + mac] = (
                        _new_cont(
                            Continuation, (kid, pphase, d, conn, seq, epoch, pb, pstart, pss, now_ms, rtt)
                        ),
                        addr,
                    )
                    if len(cache) > cache_size:
                        cache.popitem(last=False)
                if delta:
                    if not dprefix:
                        child = Continuation(kid, pphase, d, conn, seq, epoch, pb, pstart, pss, now_ms, rtt)
                        dprefix = encode_delta(child, b"", c)
                    head = head_pack(ver, R_DATA, F_DELTA, 0, seq, nonces[j], parent, echo, epoch)
                    out.append(b"".join((head, dprefix, mac, *chunks[slot])))
                else:
                    head = head_pack(ver, R_DATA, F_FULL, 0, seq, nonces[j], parent, echo, epoch)
                    out.append(b"".join((head, fields, mac, *chunks[slot])))
            slot += 1
        self.stats.continuations_sealed += sealed_count
        return out


_cont_pack = struct.Struct(">BBBQIHIHHIH").pack
_new_cont = tuple.__new__


class _Ctx(NamedTuple):
    """What a pending event needs to be answered (and to be extracted and moved elsewhere)."""

    req: wire.Request
    data: bytes
    addr: bytes
    now: float
    cont: Continuation
    plan: Plan | None
    ckey: ServerKey
    nonces: list[int]
    now_ms: int
    rtt: int


_SLOT_CAP = wire.SLOT_CAPACITY
_SYN = int(ReqType.SYN)


class SynTooSmall(MalformedPacket):
    reason = DropReason.SYN_TOO_SMALL


__all__ = [
    "App",
    "EventKind",
    "Minisocket",
    "ServerConfig",
    "ServerEngine",
    "StepResult",
    "SynTooSmall",
]
