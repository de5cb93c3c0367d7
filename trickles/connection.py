"""The client's protocol machine (stateful, sans-IO): the side of Trickles that keeps the state.

Theory of operation
-------------------
The server forgets everything; the client remembers for both (paper section 4). This object keeps

* the transport continuations received and not yet used, and sends one request per continuation,
  strictly in packet-number order and only once every packet below it is *final* (received or
  declared lost). That keeps the SACK-proof prefix property: what a request reports about
  ``[base, k]`` never changes later, so every trickle of a window computes the same recovery;
* the SACK record of the current nonce epoch (:mod:`trickles.sack`): prefix XORs of the nonces of
  final packets (so the summary of any received run is one XOR) and the list of lost runs, with loss
  detection (a hole with ``DUPTHRESH`` (3) packets received above it is declared lost; the
  threshold grows, up to ``MAX_DUPTHRESH``, when a packet declared lost arrives after all). A packet
  that turns up after it was declared lost gives its bytes but never enters the proof;
* the retransmit timer (RFC 6298 estimator from echoed client timestamps), exposed as a deadline
  (:meth:`get_timer`); when it fires the client asks for slow start (:meth:`handle_timer`);
* request sizing: before sending, it runs the server's own :func:`~trickles.congestion.plan_request`
  on the same inputs, so it knows exactly which packets will come back and fills each one's slot
  with a byte range; it never sends a request the server would terminate;
* user data: per *region* (:mod:`trickles.regions`: one response, in a sparse output space) the
  output continuation, the bytes received, the bytes wanted, and reassembly; per region the input
  to send with its input continuation. Bytes are identified by offset, so duplicates,
  retransmissions and late packets are all harmless; bytes whose packet was lost go back to the
  wanted set and are asked for again first.

Time is always an argument (seconds, float); the client clock is echoed in microseconds.

Why this module is longer than the others (~700 lines): its receive and send halves share the held
continuations, the slot assignments in flight and the recovery state; the parts that stand alone
are :mod:`trickles.sack` and :mod:`trickles.regions`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from trickles import wire
from trickles.congestion import (
    Plan,
    ProtocolConfig,
    plan_request,
    plan_timeout,
)
from trickles.continuation import (
    SEALED_LEN,
    Continuation,
    Phase,
    decode_delta,
    new_namedtuple,
    parse_unverified,
    plausible,
)
from trickles.errors import TricklesError
from trickles.regions import Assign, Region
from trickles.reno import tcp_cwnd
from trickles.rtt import RttEstimator
from trickles.sack import DUPTHRESH, MAX_DUPTHRESH, ProofBlock, SackRecord
from trickles.wire import (
    C_DATA,
    C_ERROR,
    C_SKIP,
    C_UCONT,
    F_FULL,
    MAX_DATAGRAM,
    MSS,
    R_DATA,
    R_RETRANSMIT,
    R_SYNACK,
    REGION_SHIFT,
    FetchSeg,
    InputSeg,
    ReqType,
)

U32: Final = 0xFFFFFFFF
SYN_PAD: Final = 1200
"""SYNs are padded so the server may answer with a full first packet without amplification."""


class State(Enum):
    SYN_SENT = "syn_sent"
    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"


# Plain constants for the per-packet paths: the compiled build reads a Final from a C static, where
# an enum member costs a dict lookup (and comparing an IntEnum a generic rich compare).
_OPEN: Final = State.OPEN
_SYN_SENT: Final = State.SYN_SENT
_P_SYNACK: Final = int(Phase.SYNACK)
_P_BOOTSTRAP: Final = int(Phase.BOOTSTRAP)
_P_SLOWSTART: Final = int(Phase.SLOWSTART)
_T_REQUEST: Final = int(ReqType.REQUEST)
_T_RTO: Final = int(ReqType.RTO)
SEG_INPUT_SIZE: Final = wire.SEG_INPUT.size
SEG_FETCH_SIZE: Final = wire.SEG_FETCH.size
FETCH_RANGE_SIZE: Final = wire.FETCH_RANGE.size
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop


@dataclass
class _Recovery:
    new_base: int
    new_cwnd: int
    planned: set[int] = field(default_factory=set)  # bootstrap packets our requests will get
    done: bool = False


class _Sent:
    """A request sent: its continuation (the parent its children's deltas are predicted from) and
    the server's plan for it. A slotted class: a NamedTuple's ``__new__`` is interpreted Python even
    in the compiled build."""

    __slots__ = ("cont", "plan")

    def __init__(self, cont: Continuation, plan: Plan) -> None:
        self.cont = cont
        self.plan = plan


@dataclass
class _Handshake:
    """The SYN (sent again with a fresh timestamp on each retry) and the timestamps it was sent with."""

    syn: bytes = b""
    timestamps: set[int] = field(default_factory=set)
    tries: int = 0


@dataclass
class ClientStats:
    requests_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    continuations: int = 0
    losses_declared: int = 0
    spurious_losses: int = 0  # packets declared lost that arrived later (reordering)
    timeouts: int = 0
    retransmits_received: int = 0
    duplicates: int = 0
    malformed: int = 0
    stale_epoch: int = 0
    rtt_s: float | None = None
    cwnd_samples: list[tuple[float, int]] = field(default_factory=list)


class ClientConnection:
    """Sans-IO Trickles client. Feed datagrams and timer expiries in; take datagrams out."""

    def __init__(
        self,
        config: ProtocolConfig | None = None,
        *,
        client_nonce: int,
        rcvbuf: int = 8 << 20,
        rwnd_packets: int = 4096,
        record_cwnd: bool = False,
    ) -> None:
        # settings
        self.config = config or ProtocolConfig()
        self.client_nonce = client_nonce & 0xFFFFFFFFFFFFFFFF
        self.rcvbuf = rcvbuf
        self.rwnd_packets = rwnd_packets
        self.max_syn_tries = 6
        self.max_timeouts = 12
        self._record_cwnd = record_cwnd
        # connection
        self.state = State.SYN_SENT
        self.stats = ClientStats()
        self.conn_id = 0
        self.epoch = 0
        self._out: deque[bytes] = deque()
        # user data (regions.py)
        self.regions: dict[int, Region] = {}
        self._next_rid = 0
        # what the server sent: the SACK record of the epoch (sack.py) and the continuations held
        self.sack = SackRecord()
        self._dupthresh = DUPTHRESH  # reordering tolerance: grows with reordering seen, all epochs
        self._conts: dict[int, tuple[Continuation, bytes]] = {}
        self._cont_heap: list[int] = []
        self._best: tuple[Continuation, bytes] | None = None  # newest continuation (for timeouts)
        # what we asked for: requests sent, each slot's assignment, retransmissions' deadlines
        self._sent: dict[tuple[int, int], _Sent] = {}
        self._inflight: dict[tuple[int, int, bool], Assign] = {}  # (epoch, seq, retransmit) -> slot
        self._retx_deadline: list[tuple[int, int, int]] = []  # (rcv_nxt bound, epoch, seq)
        self._max_child = 0
        # recovery: pieces (epoch, base) in fast recovery, to notice a lost tail (see _regenerate)
        self._recovering: dict[tuple[int, int], _Recovery] = {}
        self._last_cont: dict[tuple[int, int], tuple[Continuation, bytes]] = {}
        self._slowstart: int | None = None  # expected epoch while waiting for slow start
        self._attempt = 0
        # timers: the handshake's SYN retries, then the retransmit timer (RFC 6298)
        self._handshake = _Handshake()
        self.rtt = RttEstimator()
        self._timer: float | None = None
        self._consecutive_timeouts = 0
        self._last_emit: float | None = None  # when a request last left (idle restart)

    # -- public API ------------------------------------------------------------------------------------

    def connect(self, request: bytes, now: float, fin: bool = True) -> int:
        """Start the connection with the first request's bytes in the SYN. Returns its region id."""
        rid = self.open_region(request, fin=fin)
        r = self.regions[rid]
        room = SYN_PAD - 64
        data = bytes(r.input[:room])
        seg = InputSeg(rid, 0, fin and len(data) == len(r.input), b"", data)
        self._handshake.syn = wire.encode_syn(0, self.client_nonce, [seg], pad_to=SYN_PAD)
        r.input_inflight = True
        self._send_syn(now)
        return rid

    def open_region(self, request: bytes, fin: bool = True) -> int:
        """Queue another request (its own sparse output region, as a parallel request)."""
        rid = self._next_rid
        self._next_rid += 1
        r = Region(rid, rid << REGION_SHIFT)
        r.input += request
        r.input_fin = fin
        self.regions[rid] = r
        return rid

    def msk_request(self, data: bytes) -> int:
        """The paper's parallel continuation request (section 6.1): send ``data`` reliably to the
        server app, to be turned into an output continuation for a region of its own; several may
        be pending at once. Returns the region id (same as :meth:`open_region`)."""
        return self.open_region(data)

    def read(self, rid: int, max_bytes: int = -1) -> bytes:
        """Take in-order bytes of region ``rid`` that have arrived."""
        r = self.regions[rid]
        if max_bytes < 0 or max_bytes >= len(r.ready):
            out = bytes(r.ready)
            r.ready.clear()
        else:
            out = bytes(r.ready[:max_bytes])
            del r.ready[:max_bytes]
        return out

    def close(self, now: float) -> None:
        """Tell the server (a CLOSE event) and stop; the server had nothing to free."""
        if self.state is State.OPEN and self._best is not None:
            sealed = self._best[1]
            self._out.append(wire.encode_request(ReqType.CLOSE, self._ts(now), sealed, [], []))
        self.state = State.CLOSED
        self._timer = None

    def datagrams_to_send(self, now: float) -> list[bytes]:
        if self.state is _OPEN:
            self._send_requests(now)
        out = list(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> None:
        if self._timer is None or now < self._timer:
            return
        self._timer = None
        if self.state is State.SYN_SENT:
            if self._handshake.tries >= self.max_syn_tries:
                self.state = State.FAILED
                return
            self._backoff()
            self._send_syn(now)
        elif self.state is State.OPEN and self._busy():
            self._timeout(now)

    @property
    def cwnd_estimate(self) -> int:
        """Reno's window of the newest continuation (what the server will allow next)."""
        if self._best is None:
            return 0
        c = self._best[0]
        return tcp_cwnd(c.seq, c.base, c.start, c.ssthresh, c.ack_div)

    # -- receive path ----------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, now: float) -> None:
        """The receive half of the client machine, for one datagram from the server.

        Pipeline: decode (malformed datagrams are counted, never raised) -> SYNACK handshake -> the
        first packet of a requested slow start opens its epoch -> RETRANSMITs give bytes only ->
        packet numbers bounded by what we asked for -> late, duplicate or stale packets give bytes
        only -> the continuation (full or delta against the parent we sent), checked for plausibility
        and held -> RTT sample and timer -> SACK record (loss detection) -> bytes to their regions.
        """
        try:
            resp = wire.decode_response_untrusted(data)
        except TricklesError:
            self.stats.malformed += 1
            return
        st = self.stats
        st.packets_received += 1
        st.bytes_received += len(data)
        rtype, epoch, seq = resp.type, resp.epoch, resp.seq
        if rtype == R_SYNACK:
            self._on_synack(resp, now)
            return
        if self.state is not _OPEN:
            return
        if self._slowstart is not None and epoch == self._slowstart and rtype == R_DATA:
            sent = self._sent.get((epoch, resp.parent))
            if sent is None or sent.plan.phase != _P_SLOWSTART or not sent.plan.lo <= seq <= sent.plan.hi:
                st.malformed += 1  # not an answer to our timeout request
                return
            self._enter_epoch(epoch, seq, resp.parent)
        current = epoch == self.epoch and self._slowstart is None
        if rtype == R_RETRANSMIT:
            st.retransmits_received += 1
            self._deliver(resp.chunks, self._inflight.pop((epoch, seq, True), None))
            return
        sack = self.sack
        if current and (seq > self._max_child or seq < sack.e0):
            # No request of ours can have produced it: forged or from a dead connection. Bounding
            # packet numbers by what we asked for bounds the SACK record, too.
            st.malformed += 1
            return
        assigned = self._inflight.pop((epoch, seq, False), None)
        if not current or seq < sack.rcv_nxt or seq in sack.ooo:
            # Late, duplicate or from an abandoned epoch: keep its bytes, not its transport state.
            if not current:
                st.stale_epoch += 1
            else:
                st.duplicates += 1
                if seq < sack.rcv_nxt:
                    self._late(seq)
            self._deliver(resp.chunks, assigned)
            return
        cont = resp.cont
        if cont:
            try:
                if resp.flags & F_FULL:
                    sealed = bytes(cont)
                else:
                    sent = self._sent.get((epoch, resp.parent))
                    sealed = decode_delta(cont, 0, sent.cont, seq, epoch)[0] if sent is not None else b""
                c = parse_unverified(sealed) if sealed else None
            except TricklesError:
                st.malformed += 1
                c = None
            if (
                c is not None
                and c.seq == seq
                and c.epoch == epoch
                and c.conn_id == self.conn_id
                and plausible(c)
            ):
                self._store_cont(c, sealed)
                self._rtt_sample(now, resp.echo_ts)  # only from packets we could attribute
                self._arm(now)
        sack.ooo[seq] = resp.nonce
        self._deliver(resp.chunks, assigned)
        self._advance()

    def _on_synack(self, resp: wire.Response, now: float) -> None:
        if (
            self.state is not _SYN_SENT
            or not (resp.flags & F_FULL)
            or resp.echo_ts not in self._handshake.timestamps
        ):
            return  # not an answer to a SYN we sent
        try:
            c = parse_unverified(bytes(resp.cont))
        except TricklesError:
            self.stats.malformed += 1
            return
        if not plausible(c):
            self.stats.malformed += 1
            return
        self._rtt_sample(now, resp.echo_ts)
        self.state = State.OPEN
        self.conn_id = c.conn_id
        self.epoch = c.epoch
        self.sack = SackRecord(c.base)
        self._store_cont(c, bytes(resp.cont))
        r0 = self.regions.get(0)
        if r0 is not None:
            r0.input_inflight = False
        self._deliver(resp.chunks, None)
        self._timer = None
        self._consecutive_timeouts = 0

    def _store_cont(self, c: Continuation, sealed: bytes) -> None:
        self.stats.continuations += 1
        self._conts[c.seq] = (c, sealed)
        _heappush(self._cont_heap, c.seq)
        best = self._best
        if best is None:
            self._best = (c, sealed)
            return
        b = best[0]
        if b.epoch != c.epoch or c.base > b.base or (c.base == b.base and c.seq > b.seq):
            self._best = (c, sealed)

    def _enter_epoch(self, epoch: int, seq: int, parent: int) -> None:
        """The first packet of the slow start we asked for: start a fresh SACK record."""
        sent = self._sent.get((epoch, parent))
        base = sent.plan.base if sent is not None else seq
        self.epoch = epoch
        self._slowstart = None
        self.sack = SackRecord(base)
        self._consecutive_timeouts = 0
        self._attempt = 0

    def _late(self, seq: int) -> None:
        """A packet below rcv_nxt arrived: if it was declared lost, the loss was reordering, and the
        reordering tolerance grows to its degree."""
        degree = self.sack.reordering(seq)
        if degree:
            self.stats.spurious_losses += 1
            self._dupthresh = min(max(self._dupthresh, degree + 1), MAX_DUPTHRESH)

    def _advance(self) -> None:
        """Finalize packets in the SACK record; ask again for what the packets declared lost (and
        retransmissions overtaken by later packets) were to carry."""
        for lo, hi in self.sack.advance(self._dupthresh):
            self.stats.losses_declared += hi - lo + 1
            for s in range(lo, hi + 1):
                self._requeue(self._inflight.pop((self.epoch, s, False), None))
        dl = self._retx_deadline
        rcv_nxt = self.sack.rcv_nxt
        while dl and dl[0][0] < rcv_nxt:
            _, ep, s = _heappop(dl)
            self._requeue(self._inflight.pop((ep, s, True), None))

    # -- user data -------------------------------------------------------------------------------------

    def _deliver(self, chunks: Iterable[wire.Chunk], assigned: Assign | None) -> None:
        """Hand a packet's chunks to their regions; then ask again for what its slots did not bring."""
        regions = self.regions
        for ch in chunks:
            if ch.type == C_DATA:
                r = regions.get(ch.offset >> REGION_SHIFT)
                if r is not None and ch.length:
                    r.store(ch.offset, ch.data)
            elif ch.type == C_UCONT:
                r = regions.get(ch.region)
                if r is not None:
                    r.on_ucont(ch)
            elif ch.type == C_SKIP:
                r = regions.get(ch.offset >> REGION_SHIFT)
                if r is not None:
                    r.skip(ch.offset)
            elif ch.type == C_ERROR:
                r = regions.get(ch.region)
                if r is not None:
                    r.fail(ch.kind, ch.data.decode("utf-8", "replace"))
        self._requeue(assigned)

    def _requeue(self, a: Assign | None) -> None:
        """A slot whose packet arrived or was lost: ask again for whatever did not arrive."""
        if a is None:
            return
        r = self.regions.get(a.region)
        if r is None:
            return
        if a.length == 0:
            r.input_inflight = False
            return
        end = a.start + a.length
        if r.end is not None:
            end = min(end, r.end)
        if end <= r.next_off:
            return  # all arrived in order: the common case, without building an empty list
        for x, y in r.missing(a.start, end):
            r.want.add(x, y)

    # -- send path -------------------------------------------------------------------------------------

    def _ts(self, now: float) -> int:
        return int(now * 1_000_000) & U32

    def _send_syn(self, now: float) -> None:
        hs = self._handshake
        hs.tries += 1
        hs.timestamps.add(self._ts(now))
        ts = self._ts(now).to_bytes(4, "big")
        self._out.append(hs.syn[:4] + ts + hs.syn[8:])
        self._timer = now + self.rtt.rto

    def _busy(self) -> bool:
        """Is anything in flight or wanted (so the transport must keep going)?"""
        if self._inflight:
            return True
        for r in self.regions.values():
            if r.error is None and (r.want or (not r.input_done and len(r.input) > 0)):
                return True
        return False

    def _has_work(self) -> bool:
        for r in self.regions.values():
            if r.error is not None:
                continue
            if self._wanted(r) or self._input_pending(r):
                return True
        return False

    def _input_pending(self, r: Region) -> bool:
        return not r.input_done and not r.input_inflight and r.input_acked < len(r.input)

    def _wanted(self, r: Region) -> bool:
        first = r.want.first()
        return first is not None and first[0] < r.next_off + self.rcvbuf

    def _send_requests(self, now: float) -> None:
        """Turn held continuations into requests: the send half of the client machine.

        Pipeline: an idle restart (RFC 5681 4.1) if due -> REGEN for a recovering piece whose tail
        was lost -> for every held continuation whose packet is final, in packet order: its SACK
        proof, the server's own plan (:func:`~trickles.congestion.plan_request`), skip it if the
        server would terminate it, hold it while there is nothing to ask for or the receive window
        is full, else fill its slots and emit the request.
        """
        if self._idle_restart_due(now):
            self._attempt = 0
            self._slow_start_request(now)
            return
        if self._recovering and self._slowstart is None:
            # Before any request of the new piece: its bootstrap packets must come first.
            self._regenerate(now)
        heap = self._cont_heap
        sack = self.sack
        while heap and heap[0] < sack.rcv_nxt:
            k = heap[0]
            c, sealed = self._conts[k]
            if c.epoch != self.epoch or c.base < sack.e0:
                _heappop(heap)
                del self._conts[k]
                continue
            if c.phase == _P_SYNACK:
                proof: list[ProofBlock] | None = []
            else:
                proof = sack.proof(c.base, k)
            if proof is None:
                _heappop(heap)
                del self._conts[k]
                continue
            try:
                plan = plan_request(c, [(lo, hi) for lo, hi, _ in proof], self.config.burst_limit)
            except TricklesError:
                # Only a forged response can carry such a continuation (we cannot check its MAC).
                _heappop(heap)
                del self._conts[k]
                self.stats.malformed += 1
                continue
            piece = (c.epoch, c.base)
            last_cont = self._last_cont
            if piece not in last_cont and len(last_cont) > 8:
                for old in [p for p in last_cont if p not in self._recovering]:
                    del last_cont[old]  # pieces that finished without a recovery
            last_cont[piece] = (c, sealed)
            if plan.phase == _P_BOOTSTRAP:
                rec = self._recovering.get(piece)
                if rec is None:
                    rec = self._recovering[piece] = _Recovery(plan.base, plan.start)
                rec.planned.update(range(plan.lo, plan.hi + 1))
            if plan.n_slots == 0:
                _heappop(heap)  # the server would terminate this trickle
                del self._conts[k]
                continue
            if not self._has_work():
                # Nothing to ask for: hold the continuations (in order) until there is, rather
                # than clock packets that would carry nothing (in flight or idle alike).
                break
            if self._max_child - sack.rcv_nxt >= self.rwnd_packets:
                break  # receive window: no more packets in flight than our socket buffer holds
            _heappop(heap)
            del self._conts[k]
            self._emit(_T_REQUEST, c, sealed, proof, plan, now)
        if self._recovering and self._slowstart is None:
            self._regenerate(now)

    def _regenerate(self, now: float) -> None:
        """REGEN for a recovering piece whose last packets were all lost (see plan_recovery)."""
        heap = self._cont_heap
        for piece, rec in list(self._recovering.items()):
            if rec.done or piece[0] != self.epoch:
                if piece[0] != self.epoch:
                    del self._recovering[piece]
                continue
            b2 = rec.new_base
            if self.sack.rcv_nxt < b2 or (heap and heap[0] < b2):
                continue  # the old piece is not final yet
            rec.done = True
            del self._recovering[piece]
            last = self._last_cont.pop(piece, None)
            if not set(range(b2, b2 + rec.new_cwnd)) - rec.planned:
                continue
            if last is None:
                continue
            c, sealed = last
            proof = self.sack.proof(c.base, c.seq)
            if proof is None:
                continue
            try:
                plan = plan_request(c, [(lo, hi) for lo, hi, _ in proof], self.config.burst_limit, regen=True)
            except TricklesError:
                continue
            if plan.n_slots:
                self._emit(ReqType.REGEN, c, sealed, proof, plan, now)

    def _emit(
        self,
        rtype: int,
        c: Continuation,
        sealed: bytes,
        proof: list[ProofBlock],
        plan: Plan,
        now: float,
    ) -> None:
        retransmits = plan.retransmits
        n_retx = len(retransmits)
        segments, assigns = self._fill(n_retx + plan.n_children, 8 + SEALED_LEN + 1 + 12 * len(proof) + 1)
        if plan.hi > self._max_child:
            self._max_child = plan.hi
        # Slots in response order: the retransmissions (old packet numbers, no continuation), then
        # the new packets lo..hi.
        for i, a in enumerate(assigns):
            if a is None:
                continue
            if i < n_retx:
                self._inflight[(c.epoch, retransmits[i], True)] = a
                bound = plan.hi if plan.hi >= plan.lo else self._max_child
                _heappush(self._retx_deadline, (bound, c.epoch, retransmits[i]))
            else:
                self._inflight[(plan.epoch, plan.lo + i - n_retx, False)] = a
        self._sent[(plan.epoch, c.seq)] = _Sent(c, plan)
        if len(self._sent) > 4096:
            for key in list(self._sent)[:1024]:
                del self._sent[key]
        attempt = self._attempt if rtype == _T_RTO else 0
        self._out.append(wire.encode_request(rtype, self._ts(now), sealed, proof, segments, attempt))
        self._last_emit = now
        self.stats.requests_sent += 1
        if self._record_cwnd:
            self.stats.cwnd_samples.append((now, self.cwnd_estimate))
        if self._timer is None:
            self._arm(now)

    def _fill(self, n_slots: int, used: int) -> tuple[list[wire.Segment], list[Assign | None]]:
        """Choose what each response slot carries: pending inputs first, then wanted byte ranges."""
        segments: list[wire.Segment] = []
        assigns: list[Assign | None] = [None] * n_slots
        budget = MAX_DATAGRAM - used - 1
        slot = 0
        for r in self.regions.values():
            if slot >= n_slots or budget < 200:
                break
            if r.error is None and self._input_pending(r):
                room = budget - SEG_INPUT_SIZE - len(r.input_ucont) - 2
                if room < 64:
                    continue
                data = bytes(r.input[r.input_acked : r.input_acked + max(room, 0)])
                fin = r.input_fin and r.input_acked + len(data) == len(r.input)
                segments.append(InputSeg(r.rid, r.input_acked, fin, r.input_ucont, data))
                budget -= SEG_INPUT_SIZE + len(r.input_ucont) + 2 + len(data)
                r.input_inflight = True
                assigns[slot] = Assign(r.rid, 0, 0)
                slot += 1
        for r in self.regions.values():
            if slot >= n_slots:
                break
            if r.error is not None or not r.ucont or not r.want:
                continue
            seg_cost = SEG_FETCH_SIZE + len(r.ucont) + 1
            if budget < seg_cost + FETCH_RANGE_SIZE:
                break
            budget -= seg_cost
            ranges: list[tuple[int, int]] = []
            limit = r.next_off + self.rcvbuf
            want = r.want
            while slot < n_slots and len(ranges) < 255 and budget >= FETCH_RANGE_SIZE:
                taken = want.take_first(MSS, limit)
                if taken is None:
                    break
                a, b = taken
                ranges.append((a, b - a))
                assigns[slot] = Assign(r.rid, a, b - a)
                budget -= FETCH_RANGE_SIZE
                slot += 1
            if ranges:
                segments.append(new_namedtuple(FetchSeg, (r.ucont, tuple(ranges))))  # one per request
            else:
                budget += seg_cost
        return segments, assigns

    # -- timer -----------------------------------------------------------------------------------------

    def _rtt_sample(self, now: float, echo: int) -> None:
        sample = ((self._ts(now) - echo) & U32) / 1_000_000
        if sample > 60:
            return
        self.rtt.sample(sample)
        self.stats.rtt_s = self.rtt.srtt

    def _arm(self, now: float) -> None:
        self._timer = now + self.rtt.rto

    def _backoff(self) -> None:
        self.rtt.backoff()

    def _timeout(self, now: float) -> None:
        """Retransmit timeout: ask the server for slow start from the last contiguous packet."""
        self.stats.timeouts += 1
        self._consecutive_timeouts += 1
        if self._consecutive_timeouts > self.max_timeouts or self._best is None:
            self.state = State.FAILED
            return
        self._backoff()
        if self._slowstart is None:
            self._attempt = 0
        else:
            self._attempt = min(self._attempt + 1, wire.MAX_ATTEMPT)
        # Every byte in flight is presumed lost; the new epoch asks for it again.
        for a in self._inflight.values():
            self._requeue(a)
        self._inflight.clear()
        self._retx_deadline.clear()
        self._slow_start_request(now)

    def _idle_restart_due(self, now: float) -> bool:
        """RFC 5681 section 4.1: after more than an RTO without sending, do not release the whole
        held window at once; restart in slow start (one timeout request, attempt 0) instead."""
        return (
            self._last_emit is not None
            and now - self._last_emit > self.rtt.rto
            and bool(self._cont_heap)
            and self._best is not None
            and not self._inflight
            and self._slowstart is None
            and not self._recovering
            and self._has_work()
        )

    def _slow_start_request(self, now: float) -> None:
        """A timeout request (attempt ``self._attempt``) on the newest continuation, proving the
        contiguous run from its base: the server restarts slow start in a new epoch."""
        if self._best is None:
            return
        c, sealed = self._best
        right = self.sack.contiguous_right(c.base) if c.epoch == self.epoch else c.base - 1
        if self._attempt >= 3:
            # Three timeout requests in a row went unanswered. If a forged packet poisoned our SACK
            # record their proofs can never verify, so now prove nothing (slow start from the
            # piece's base, at the cost of a lower ssthresh): the connection still recovers.
            right = c.base - 1
        proof: list[ProofBlock] = []
        if right >= c.base:
            proof = [(c.base, right, self.sack.run_xor(c.base, right))]
        plan = plan_timeout(c, [(lo, hi) for lo, hi, _ in proof], self._attempt, self.config.rto_cwnd)
        self._slowstart = plan.epoch
        self._max_child = 0
        self._conts.clear()
        self._cont_heap.clear()
        self._emit(ReqType.RTO, c, sealed, proof, plan, now)
        self._arm(now)


__all__ = ["SYN_PAD", "ClientConnection", "State"]
