"""The stateless server step: one datagram in, the response datagrams out.

``ServerEngine.step`` is a function of (datagram, client address, now, key ring, app). Nothing about
the connection survives the call: everything it needs arrives in the datagram and everything the
client needs next leaves in the responses. The straight line::

    decode -> open continuation (MAC, freshness) -> replay filter -> SACK proof -> plan
           -> event to the app with a minisocket -> seal children + nonces -> encode

The app sees a :class:`Minisocket` (paper section 3.2): the event's input and fetch requests and one
slot per response packet congestion control allows. It fills slots; unfilled slots still go out,
carrying only the transport continuation, so the trickle continues.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple, Protocol

from trickles import wire
from trickles.congestion import AckKind, Config, Plan, ack_kind, plan_request, plan_timeout
from trickles.continuation import (
    SEALED_LEN,
    Cont,
    Phase,
    check_fresh,
    encode_delta,
    open_untrusted,
    seal,
)
from trickles.errors import BadSackProof, DropReason, MalformedPacket, ProtocolViolation, TricklesError
from trickles.keys import KeyRing, ServerKey
from trickles.nonces import packet_nonces, proof_and_nonces
from trickles.replay import ReplayFilter
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


class EventKind(IntEnum):
    OPEN = 1
    REQUEST = 2
    CLOSE = 3


class Minisocket:
    """A transient TCB for one event: read its input, fill at most ``n_slots`` packets, then gone.

    Input segment ``i`` is answered in slot ``i``; fetch range ``j`` (counting across fetch
    segments) is answered in slot ``len(inputs) + j``. Each slot holds ``capacity(i)`` chunk bytes.
    """

    __slots__ = ("_free", "chunks", "conn_id", "fetches", "inputs", "kind", "now", "plan")

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
        """SKIP: bytes ``[offset, offset+length)`` of the output space will never be sent."""
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
        out = []
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

    protocol: Config = Config()
    horizon_s: float = 120.0
    """Continuations older than this are stale; the replay filter remembers MACs this long."""
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
    received: int = 0
    sent: int = 0
    bytes_sent: int = 0
    continuations_sealed: int = 0
    retransmits: int = 0
    terminated: int = 0
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
        self._cache: dict[bytes, tuple[Cont, bytes]] = {}  # sealed -> (fields, client address)
        self._cache_size = self.config.cache_size
        self.cache_hits = 0
        self.cache_misses = 0

    def drop_cache(self) -> None:
        """Forget all soft state (what a memory-pressed or restarted server has)."""
        self._cache.clear()

    # -- entry point --------------------------------------------------------------------------------

    def step(self, data: bytes, addr: bytes, now: float) -> StepResult:
        """Process one datagram from ``addr`` (the client's address bytes) at time ``now`` (s)."""
        self.stats.received += 1
        kind = 0
        try:
            req = wire.decode_request_untrusted(data)
            kind = req.type
            if kind == ReqType.SYN:
                out = self._syn(req, len(data), addr, now)
                rtt = 0
            else:
                out, rtt = self._request(req, addr, now)
        except TricklesError as e:
            return self._drop(e.reason, kind)
        if not out:
            if kind != ReqType.CLOSE:
                self.stats.terminated += 1
            return StepResult(_DROP_EMPTY, None, kind, rtt)
        self.stats.sent += len(out)
        self.stats.bytes_sent += sum(map(len, out))
        return StepResult(out, None, kind, rtt)

    def _drop(self, reason: DropReason, kind: int) -> StepResult:
        d = self.stats.dropped
        d[reason] = d.get(reason, 0) + 1
        return StepResult(_DROP_EMPTY, reason, kind, 0)

    # -- SYN --------------------------------------------------------------------------------------------

    def _syn(self, req: wire.Request, size: int, addr: bytes, now: float) -> list[bytes]:
        """Answer a SYN statelessly. The answer is one packet, never larger than the SYN itself."""
        budget = size - wire.RESP_HEAD.size - SEALED_LEN
        if budget < 0:
            raise SynTooSmall("SYN smaller than its answer would be")
        inputs = [s for s in req.segments if isinstance(s, InputSeg)][:1]
        key = self.ring.current
        now_ms = int(now * 1000) & 0xFFFFFFFF
        conn_id = int.from_bytes(
            hmac.digest(
                key.mac,
                b"conn" + req.client_nonce.to_bytes(8, "big") + addr + now_ms.to_bytes(4, "big"),
                "sha256",
            )[:8],
            "big",
        )
        p = self.config.protocol
        c = Cont(
            key.key_id,
            Phase.SYNACK,
            p.ack_div,
            conn_id,
            0,
            0,
            1,
            p.initial_cwnd,
            p.initial_ssthresh,
            now_ms,
            0,
        )
        msk = Minisocket(EventKind.OPEN, conn_id, inputs, [], [min(budget, wire.SLOT_CAPACITY)], now, None)
        self._on_event(msk)
        sealed = seal(c, key, addr)
        self.stats.continuations_sealed += 1
        (nonce,) = packet_nonces(key, conn_id, 0, [0])
        head = wire.RESP_HEAD.pack(
            wire.VERSION, RespType.SYNACK, RespFlags.FULL, 0, 0, nonce, 0, req.client_ts, 0
        )
        return [b"".join((head, sealed, *msk.chunks[0]))]

    # -- REQUEST / RTO / CLOSE --------------------------------------------------------------------------

    def _request(self, req: wire.Request, addr: bytes, now: float) -> tuple[list[bytes], int]:
        now_ms = int(now * 1000) & 0xFFFFFFFF
        hit = self._cache.pop(req.cont, None) if self._cache_size else None
        if hit is not None and hit[1] == addr:
            c = hit[0]
            mac = req.cont[-16:]
            check_fresh(c.ts, now_ms, self._horizon_ms, self._skew_ms)
            self.cache_hits += 1
        else:
            c, mac = open_untrusted(req.cont, 0, self.ring, addr, now_ms, self._horizon_ms, self._skew_ms)
            self.cache_misses += 1
        key = self.ring.get(c.key_id)
        proof = req.proof
        ranges = [(l, r) for l, r, _ in proof]
        if req.type == ReqType.CLOSE:
            rkey = self.replay.check(mac, req.type, 0, now_ms)
            ok, _ = proof_and_nonces(key, c.conn_id, c.epoch, proof, 0, -1)
            if not ok:
                raise BadSackProof("SACK proof does not verify")
            self.replay.add(rkey)
            self._on_event(Minisocket(EventKind.CLOSE, c.conn_id, [], [], [], now, None))
            return [], 0
        if req.type == ReqType.RTO:
            plan = plan_timeout(c, ranges, req.attempt, self.config.protocol.rto_cwnd)
        else:
            plan = plan_request(c, ranges, self.config.protocol.burst_limit)
        if plan.n_slots == 0:
            # Terminated trickle: nothing to send. Still verify nothing; no state either way.
            return [], 0
        rkey = self.replay.check(mac, req.type, req.attempt, now_ms)

        # New pieces move to the current key; a loss-free continuation keeps its connection's key.
        ckey = self.ring.current if plan.new_piece else key
        same_prf = ckey is key and plan.epoch == c.epoch
        if same_prf:
            ok, nonces = proof_and_nonces(key, c.conn_id, c.epoch, proof, plan.lo, plan.hi)
        else:
            ok, _ = proof_and_nonces(key, c.conn_id, c.epoch, proof, 0, -1)
            nonces = packet_nonces(ckey, c.conn_id, plan.epoch, range(plan.lo, plan.hi + 1))
        if not ok:
            raise BadSackProof("SACK proof does not verify")
        self.replay.add(rkey)

        rtt = (now_ms - c.ts) & 0xFFFFFFFF
        if rtt > self._horizon_ms:
            rtt = 0
        inputs: list[InputSeg] = []
        fetches: list[FetchSeg] = []
        for s in req.segments:
            if isinstance(s, InputSeg):
                inputs.append(s)
            else:
                fetches.append(s)
        n_slots = plan.n_slots
        if len(inputs) > n_slots:
            raise ProtocolViolation("more input segments than response packets")
        msk = Minisocket(
            EventKind.REQUEST, c.conn_id, inputs, fetches, [wire.SLOT_CAPACITY] * n_slots, now, plan
        )
        self._on_event(msk)
        return self._encode(req, c, plan, ckey, nonces, msk.chunks, addr, now_ms, rtt), rtt

    def _encode(
        self,
        req: wire.Request,
        c: Cont,
        plan: Plan,
        ckey: ServerKey,
        nonces: list[int],
        chunks: list[list[bytes]],
        addr: bytes,
        now_ms: int,
        rtt_sample: int,
    ) -> list[bytes]:
        out: list[bytes] = []
        head_pack = wire.RESP_HEAD.pack
        ver, echo, parent = wire.VERSION, req.client_ts, c.seq
        slot = 0
        if plan.retransmits:
            key = self.ring.get(c.key_id)
            rn = packet_nonces(key, c.conn_id, c.epoch, plan.retransmits, retransmit=True)
            for s, n in zip(plan.retransmits, rn, strict=True):
                head = head_pack(ver, R_RETRANSMIT, 0, 0, s, n, parent, echo, c.epoch)
                out.append(b"".join((head, *chunks[slot])))
                slot += 1
            self.stats.retransmits += len(plan.retransmits)
        rtt = (c.rtt * 7 + rtt_sample) >> 3 if c.rtt else rtt_sample
        rtt = min(rtt, 0xFFFF)
        kid, d, conn, epoch = ckey.key_id, c.ack_div, c.conn_id, plan.epoch
        pb, pstart, pss, pphase = plan.base, plan.start, plan.ssthresh, plan.phase
        delta = self.config.delta
        cache, cache_size = self._cache, self._cache_size
        for j, seq in enumerate(range(plan.lo, plan.hi + 1)):
            kind = ack_kind(seq - pb, d)
            if kind == AckKind.MINIMAL:
                head = head_pack(ver, R_DATA, 0, 0, seq, nonces[j], parent, echo, epoch)
                out.append(b"".join((head, *chunks[slot])))
            else:
                child = Cont(kid, pphase, d, conn, seq, epoch, pb, pstart, pss, now_ms, rtt)
                sealed = seal(child, ckey, addr)
                self.stats.continuations_sealed += 1
                if cache_size:
                    cache[sealed] = (child, addr)
                    if len(cache) > cache_size:
                        del cache[next(iter(cache))]
                if delta:
                    cbytes = encode_delta(child, sealed, c)
                    flags = F_DELTA
                else:
                    cbytes, flags = sealed, F_FULL
                head = head_pack(ver, R_DATA, flags, 0, seq, nonces[j], parent, echo, epoch)
                out.append(b"".join((head, cbytes, *chunks[slot])))
            slot += 1
        return out


class SynTooSmall(MalformedPacket):
    reason = DropReason.SYN_TOO_SMALL


__all__ = [
    "App",
    "EventKind",
    "Minisocket",
    "ServerConfig",
    "ServerEngine",
    "StepResult",
    "check_fresh",
]
