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

The app sees a :class:`~trickles.minisocket.Minisocket` (paper section 3.2, module
:mod:`trickles.minisocket`): the event's input and fetch requests and one slot per response packet
congestion control allows. It fills slots; unfilled slots still go out, carrying only the transport
continuation, so the trickle continues. Event migration is :mod:`trickles.migration`, the soft-state
cache :mod:`trickles.softstate`; which answer each request gets is the table
``congestion.DECISIONS``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from trickles import migration, wire
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
    FIELDS,
    SEALED_LEN,
    Continuation,
    Phase,
    check_fresh,
    cont_mac,
    encode_delta,
    new_namedtuple,
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
from trickles.keys import KeyRing
from trickles.minisocket import App, EventKind, Minisocket, PendingEvent
from trickles.nonces import packet_nonces, piece_id, proof_and_nonces, verify_proof
from trickles.replay import ReplayFilter, ack_key, close_key, timeout_key
from trickles.softstate import ContinuationCache
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

# Final: the compiled build reads these from C statics (plain ints where compared), not a dict.
_CLOSE: Final = int(ReqType.CLOSE)
_RTO: Final = int(ReqType.RTO)
_REGEN: Final = int(ReqType.REGEN)
_SYN: Final = int(ReqType.SYN)
_SYNACK_PHASE: Final = int(Phase.SYNACK)
_OPEN_EVENT: Final = EventKind.OPEN
_REQUEST_EVENT: Final = EventKind.REQUEST
_CLOSE_EVENT: Final = EventKind.CLOSE
_SLOT_CAP: Final = wire.SLOT_CAPACITY
_U32: Final = 0xFFFFFFFF
_cont_pack: Final = FIELDS.pack
_head_pack: Final = wire.RESP_HEAD.pack
_VERSION: Final = wire.VERSION


class SynTooSmall(MalformedPacket):
    reason = DropReason.SYN_TOO_SMALL


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
        self._cache = ContinuationCache(self.config.cache_size)
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

        Pipeline steps 1-3 of the module docstring: decode (``wire``), then :meth:`_syn` for a SYN or
        :meth:`_request` for everything else; every refusal is a typed error counted by reason.

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
            self.stats.terminated += 1
            return StepResult(_DROP_EMPTY, None, kind, 0)
        return msk

    def send(self, msk: Minisocket) -> StepResult:
        """``msk_send``: seal and encode the event's response packets (the minisocket is then spent)."""
        ctx = msk._ctx
        kind = msk.kind
        if ctx is None or not (kind is _REQUEST_EVENT or kind is _OPEN_EVENT):
            msk._ctx = None
            return StepResult(_DROP_EMPTY, None, _CLOSE, 0)  # spent, or a CLOSE (never answered)
        msk._ctx = None
        out = self._encode(msk, ctx) if kind is _REQUEST_EVENT else self._encode_syn(msk, ctx)
        nbytes = 0
        for d in out:  # a loop, not sum(map(len, out)): builtins are looked up by name when compiled
            nbytes += len(d)
        self.stats.sent += len(out)
        self.stats.bytes_sent += nbytes
        return new_namedtuple(StepResult, (out, None, ctx.req.type, ctx.rtt))

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
        events: list[PendingEvent] = []
        for m in msks:
            ctx = m._ctx
            if ctx is None:
                raise ValueError("event already answered or dropped")
            m._ctx = None
            events.append(ctx)
        return migration.seal_events(self.ring, events, now)

    def insert_events(self, blob: bytes, now: float) -> list[Minisocket]:
        """``msk_insertEvents``: verify a blob from :meth:`extract_events` and queue its events here.

        Raises MalformedPacket, UnknownKeyId, BadMac, Stale or Replay (a blob inserts once).
        """
        out: list[Minisocket] = []
        for data, addr, t in migration.open_events(
            self.ring, self.replay, blob, now, self._horizon_ms, self._skew_ms
        ):
            m = self.receive(data, addr, t, trusted=True)
            if isinstance(m, Minisocket):
                out.append(m)
        return out

    # -- SYN --------------------------------------------------------------------------------------------

    def _syn(self, req: wire.Request, data: bytes, addr: bytes, now: float) -> Minisocket:
        """A SYN becomes an OPEN event; its answer is one packet, never larger than the SYN itself."""
        budget = len(data) - wire.RESP_HEAD.size - SEALED_LEN
        if budget < 0:
            raise SynTooSmall("SYN smaller than its answer would be")
        inputs = [s for s in req.segments if isinstance(s, InputSeg)][:1]
        key = self.ring.current
        now_ms = int(now * 1000) & _U32
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
        msk._ctx = PendingEvent(req, data, addr, now, c, None, key, [], now_ms, 0, b"")
        return msk

    def _encode_syn(self, msk: Minisocket, ctx: PendingEvent) -> list[bytes]:
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
        """Verify a REQUEST/REGEN/RTO/CLOSE and plan its answer: the receive half of the step.

        Pipeline: open the continuation (soft-state cache, else MAC and freshness), then per request
        type (the decision table, ``congestion.DECISIONS``): plan and verify the SACK proof (loss-free:
        one AES call for proof and children's nonces), check and record the replay keys, and build
        the event. None means no event: a terminated trickle.
        """
        now_ms = int(now * 1000) & _U32
        c, piece = self._open(req.cont, addr, now_ms)
        key = self.ring.get(c.key_id)
        proof = req.proof
        ranges = [(lo, hi) for lo, hi, _ in proof]
        rtype = req.type
        if rtype == _CLOSE:
            if not verify_proof(key, piece, proof):
                raise BadSackProof("SACK proof does not verify")
            self._consume([close_key(c.conn_id, c.epoch, c.base, c.seq)], c, now_ms, trusted)
            msk = Minisocket(_CLOSE_EVENT, c.conn_id, [], [], [], now, None)
            msk._ctx = PendingEvent(req, data, addr, now, c, None, key, [], now_ms, 0, b"")
            return msk

        nonces: list[int] = []
        if rtype == _RTO:
            if not timeout_allowed(c, req.attempt, (now_ms - c.ts) & _U32, self._rto_min_ms):
                raise ProtocolViolation("timeout request earlier than the client's timer allows")
            if not verify_proof(key, piece, proof):
                raise BadSackProof("SACK proof does not verify")
            plan = plan_timeout(c, ranges, req.attempt, self._rto_cwnd)
            rkeys = [timeout_key(c.conn_id, plan.epoch)]
        elif rtype != _REGEN and c.phase != _SYNACK_PHASE and len(ranges) == 1 and ranges[0][0] == c.base:
            # Loss-free, the hot path: planning is O(1), so plan first and check the proof and
            # compute the children's nonces (same piece) in one AES call.
            plan = plan_request(c, ranges, self._burst_limit)
            ok, nonces = proof_and_nonces(key, piece, proof, plan.lo, plan.hi)
            if not ok:
                raise BadSackProof("SACK proof does not verify")
            rkeys = [ack_key(c.conn_id, c.epoch, c.base, c.seq)]
        else:
            if c.phase != _SYNACK_PHASE:
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
        if (
            plan.epoch == c.epoch
            and plan.base == c.base
            and plan.start == c.start
            and plan.ssthresh == c.ssthresh
        ):
            child_piece = piece  # same fields, same piece id (every loss-free plan): no second hash
        else:
            child_piece = piece_id(c.conn_id, plan.epoch, plan.base, plan.start, plan.ssthresh)
        if not nonces and plan.hi >= plan.lo:
            nonces = packet_nonces(ckey, child_piece, range(plan.lo, plan.hi + 1))
        rtt = (now_ms - c.ts) & _U32
        if rtt > self._horizon_ms:
            rtt = 0
        self._count(rtype, plan)
        msk = Minisocket(_REQUEST_EVENT, c.conn_id, inputs, fetches, [_SLOT_CAP] * n_slots, now, plan)
        msk._ctx = new_namedtuple(
            PendingEvent, (req, data, addr, now, c, plan, ckey, nonces, now_ms, rtt, child_piece)
        )
        return msk

    def _open(self, sealed: bytes, addr: bytes, now_ms: int) -> tuple[Continuation, bytes]:
        """The request's continuation and its piece id: from the soft-state cache (sealed here for
        this address; only freshness is left to check), else parsed and verified (MAC bound to
        ``addr``, freshness) and the piece id computed."""
        hit = self._cache.take(sealed)
        if hit is not None and hit[1] == addr:
            c = hit[0]
            check_fresh(c.ts, now_ms, self._horizon_ms, self._skew_ms)
            self.cache_hits += 1
            return c, hit[2]
        c, _ = open_untrusted(sealed, 0, self.ring, addr, now_ms, self._horizon_ms, self._skew_ms)
        self.cache_misses += 1
        return c, piece_id(c.conn_id, c.epoch, c.base, c.start, c.ssthresh)

    def _count(self, rtype: int, plan: Plan) -> None:
        """Which kind of answer a request gets (stats only)."""
        st = self.stats
        if rtype == _RTO:
            st.timeout_restarts += 1
        elif plan.new_piece:
            st.recoveries += 1
        elif plan.hi > plan.lo:
            st.split += 1
        else:
            st.continued += 1

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

    def _encode(self, msk: Minisocket, ctx: PendingEvent) -> list[bytes]:
        """Seal and encode a request's answer (the last pipeline step): the RETRANSMITs first (nonces
        under K'), then the children ``plan.lo..plan.hi``; FULL1/FULL2 children carry a sealed
        continuation (delta-encoded against the parent unless turned off), MINIMAL ones none.
        """
        req, c, plan, ckey, nonces, addr, now_ms, child_piece = (
            ctx.req,
            ctx.cont,
            ctx.plan,
            ctx.ckey,
            ctx.nonces,
            ctx.addr,
            ctx.now_ms,
            ctx.piece,
        )
        assert plan is not None
        chunks = msk.chunks
        out: list[bytes] = []
        head_pack = _head_pack
        ver, echo, parent = _VERSION, req.client_ts, c.seq
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
        base, start, ssthresh, phase = plan.base, plan.start, plan.ssthresh, plan.phase
        delta = self.config.delta
        cache = self._cache if self._cache.size else None  # called directly (no bound method)
        # Every child of one request shares all fields but seq, so the delta encoding (everything
        # but the MAC) is the same for all of them: compute it once.
        dprefix = b""
        sealed_count = 0
        for j, seq in enumerate(range(plan.lo, plan.hi + 1)):
            # ack_kind(seq - base, d) == AckKind.MINIMAL, inlined on the hot path: no continuation.
            if d != 1 and seq - base >= FULL1_INTERVAL and (seq - base) & 1:
                head = head_pack(ver, R_DATA, 0, 0, seq, nonces[j], parent, echo, epoch)
                out.append(b"".join((head, *chunks[slot])))
            else:
                fields = _cont_pack(kid, phase, d, conn, seq, epoch, base, start, ssthresh, now_ms, rtt)
                mac = cont_mac(ckey, fields, addr)
                sealed_count += 1
                values = (kid, phase, d, conn, seq, epoch, base, start, ssthresh, now_ms, rtt)
                child = new_namedtuple(Continuation, values)
                if cache is not None:
                    cache.put(fields + mac, child, addr, child_piece)
                if delta:
                    if not dprefix:
                        dprefix = encode_delta(child, b"", c)
                    head = head_pack(ver, R_DATA, F_DELTA, 0, seq, nonces[j], parent, echo, epoch)
                    out.append(b"".join((head, dprefix, mac, *chunks[slot])))
                else:
                    head = head_pack(ver, R_DATA, F_FULL, 0, seq, nonces[j], parent, echo, epoch)
                    out.append(b"".join((head, fields, mac, *chunks[slot])))
            slot += 1
        self.stats.continuations_sealed += sealed_count
        return out


__all__ = [
    "App",
    "EventKind",
    "Minisocket",
    "ServerConfig",
    "ServerEngine",
    "StepResult",
    "SynTooSmall",
]
