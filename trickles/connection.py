"""The client's protocol machine (stateful, sans-IO): the side of Trickles that keeps the state.

Theory of operation
-------------------
The server forgets everything; the client remembers for both (paper section 4). This object keeps

* the transport continuations received and not yet used, and sends one request per continuation,
  strictly in packet-number order and only once every packet below it is *final* (received or
  declared lost). That keeps the SACK-proof prefix property: what a request reports about
  ``[base, k]`` never changes later, so every trickle of a window computes the same recovery;
* the SACK record of the current nonce epoch: prefix XORs of the nonces of final packets (so the
  summary of any received run is one XOR) and the list of lost runs. A packet that turns up after it
  was declared lost gives its bytes but never enters the proof;
* loss detection: a hole with ``dupthresh`` (3) packets received above it is declared lost;
* the retransmit timer (RFC 6298 estimator from echoed client timestamps), exposed as a deadline
  (:meth:`get_timer`); when it fires the client asks for slow start (:meth:`handle_timer`);
* request sizing: before sending, it runs the server's own :func:`~trickles.congestion.plan_request`
  on the same inputs, so it knows exactly which packets will come back and fills each one's slot
  with a byte range; it never sends a request the server would terminate;
* user data: per *region* (one response, in a sparse output space) the output continuation, the
  bytes received, the bytes wanted, and reassembly; per region the input to send with its input
  continuation. Bytes are identified by offset, so duplicates, retransmissions and late packets are
  all harmless; bytes whose packet was lost go back to the wanted set and are asked for again first.

Time is always an argument (seconds, float); the client clock is echoed in microseconds.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from trickles import wire
from trickles.congestion import (
    AckKind,
    Config,
    Plan,
    ack_kind,
    plan_request,
    plan_timeout,
)
from trickles.continuation import SEALED_LEN, Cont, Phase, decode_delta, parse_unverified
from trickles.errors import TricklesError
from trickles.ranges import RangeSet
from trickles.reno import MAX_CWND, tcp_cwnd
from trickles.rtt import RttEstimator
from trickles.wire import (
    C_DATA,
    C_ERROR,
    C_SKIP,
    C_UCONT,
    F_FULL,
    R_DATA,
    R_RETRANSMIT,
    R_SYNACK,
    REGION_SHIFT,
    FetchSeg,
    InputSeg,
    ReqType,
    UcontKind,
)

U32 = 0xFFFFFFFF
DUPTHRESH = 3
MAX_DUPTHRESH = 64
"""Reordering tolerance grows (like Linux's ``tcp_reordering``) when a packet declared lost turns
up after all: the path reorders, as a sprayer across replicas does. It never exceeds this."""
SYN_PAD = 1200
"""SYNs are padded so the server may answer with a full first packet without amplification."""


class State(Enum):
    SYN_SENT = "syn_sent"
    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass
class Region:
    """One response: where it lives in the output space and how much of it has arrived."""

    rid: int
    start: int  # region's first byte in the output space
    end: int | None = None  # one past the last byte, once known
    ucont: bytes = b""  # output continuation (empty until the app sent it)
    have: RangeSet = field(default_factory=RangeSet)  # bytes received beyond next_off
    want: RangeSet = field(default_factory=RangeSet)
    pieces: dict[int, bytes] = field(default_factory=dict)
    next_off: int = 0  # reassembly point (absolute)
    ready: bytearray = field(default_factory=bytearray)
    error: tuple[int, str] | None = None
    # input side
    input: bytearray = field(default_factory=bytearray)
    input_fin: bool = False
    input_acked: int = 0  # bytes of input the server consumed
    input_ucont: bytes = b""
    input_inflight: bool = False
    input_done: bool = False
    consumed: int = 0  # bytes of input the app used for this region's request (stream mode)

    def __post_init__(self) -> None:
        self.next_off = self.start

    @property
    def complete(self) -> bool:
        return self.end is not None and self.next_off >= self.end


class Assign(NamedTuple):
    """What one response slot was asked to carry: a byte range, or the answer to an input."""

    region: int
    start: int
    length: int  # 0 for an input slot


@dataclass
class _Recovery:
    new_base: int
    new_cwnd: int
    planned: set[int] = field(default_factory=set)  # bootstrap packets our requests will get
    done: bool = False


class _Sent(NamedTuple):
    cont: Cont
    plan: Plan


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
        config: Config | None = None,
        *,
        client_nonce: int,
        rcvbuf: int = 8 << 20,
        rwnd_packets: int = 4096,
        record_cwnd: bool = False,
    ) -> None:
        self.config = config or Config()
        self.client_nonce = client_nonce & 0xFFFFFFFFFFFFFFFF
        self.rcvbuf = rcvbuf
        self.rwnd_packets = rwnd_packets
        self.state = State.SYN_SENT
        self.stats = ClientStats()
        self._record_cwnd = record_cwnd
        self.regions: dict[int, Region] = {}
        self._next_rid = 0
        self._out: deque[bytes] = deque()
        # transport
        self.conn_id = 0
        self.epoch = 0
        self._e0 = 1  # first packet number of the epoch's SACK record
        self._px: list[int] = [0]  # prefix XOR of nonces of final received packets from _e0
        self._lost: list[tuple[int, int]] = []  # lost runs in the final region, sorted
        self._lost_lefts: list[int] = []
        self.rcv_nxt = 1
        self._ooo: dict[int, int] = {}  # seq -> nonce, received above rcv_nxt
        self._conts: dict[int, tuple[Cont, bytes]] = {}
        self._cont_heap: list[int] = []
        self._best: tuple[Cont, bytes] | None = None  # newest continuation (for timeouts)
        self._sent: dict[tuple[int, int], _Sent] = {}
        self._inflight: dict[tuple[int, int, bool], list[Assign]] = {}
        self._retx_deadline: list[tuple[int, int, int]] = []  # (rcv_nxt bound, epoch, seq)
        self._max_child = 0
        # Pieces (epoch, base) in fast recovery, to notice a lost tail (see _regenerate).
        self._recovering: dict[tuple[int, int], _Recovery] = {}
        self._last_cont: dict[tuple[int, int], tuple[Cont, bytes]] = {}
        self._slowstart: int | None = None  # expected epoch while waiting for slow start
        self._attempt = 0
        # timer (RFC 6298)
        self.rtt = RttEstimator()
        self._timer: float | None = None
        self._syn: bytes = b""
        self._syn_ts: set[int] = set()
        self._syn_tries = 0
        self.max_syn_tries = 6
        self.max_timeouts = 12
        self._consecutive_timeouts = 0
        self._last_emit: float | None = None  # when a request last left (idle restart)
        self._dupthresh = DUPTHRESH  # grows with the reordering seen (see MAX_DUPTHRESH)

    # -- public API ------------------------------------------------------------------------------------

    def connect(self, request: bytes, now: float, fin: bool = True) -> int:
        """Start the connection with the first request's bytes in the SYN. Returns its region id."""
        rid = self.open_region(request, fin=fin)
        r = self.regions[rid]
        room = SYN_PAD - 64
        data = bytes(r.input[:room])
        seg = InputSeg(rid, 0, fin and len(data) == len(r.input), b"", data)
        self._syn = wire.encode_syn(0, self.client_nonce, [seg], pad_to=SYN_PAD)
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
        if self.state is State.OPEN:
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
            if self._syn_tries >= self.max_syn_tries:
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
        try:
            resp = wire.decode_response_untrusted(data)
        except TricklesError:
            self.stats.malformed += 1
            return
        st = self.stats
        st.packets_received += 1
        st.bytes_received += len(data)
        if resp.type == R_SYNACK:
            self._on_synack(resp, now)
            return
        if self.state is not State.OPEN:
            return
        if self._slowstart is not None and resp.epoch == self._slowstart and resp.type == R_DATA:
            sent = self._sent.get((resp.epoch, resp.parent))
            if (
                sent is None
                or sent.plan.phase != Phase.SLOWSTART
                or not sent.plan.lo <= resp.seq <= sent.plan.hi
            ):
                self.stats.malformed += 1  # not an answer to our timeout request
                return
            self._enter_epoch(resp.epoch, resp.seq, resp.parent)
        current = resp.epoch == self.epoch and self._slowstart is None
        if resp.type == R_RETRANSMIT:
            self.stats.retransmits_received += 1
            self._deliver(resp.chunks, self._inflight.pop((resp.epoch, resp.seq, True), None))
            return
        if current and (resp.seq > self._max_child or resp.seq < self._e0):
            # No request of ours can have produced it: forged or from a dead connection. Bounding
            # packet numbers by what we asked for bounds the SACK record, too.
            self.stats.malformed += 1
            return
        ident = (resp.epoch, resp.seq, False)
        assigned = self._inflight.pop(ident, None)
        if not current or resp.seq < self.rcv_nxt or resp.seq in self._ooo:
            # Late, duplicate or from an abandoned epoch: keep its bytes, not its transport state.
            if not current:
                self.stats.stale_epoch += 1
            else:
                self.stats.duplicates += 1
                if resp.seq < self.rcv_nxt:
                    self._late(resp.seq)
            self._deliver(resp.chunks, assigned)
            return
        if resp.cont:
            sent = self._sent.get((resp.epoch, resp.parent))
            try:
                if resp.flags & F_FULL:
                    sealed = bytes(resp.cont)
                elif sent is not None:
                    sealed, _ = decode_delta(resp.cont, 0, sent.cont, resp.seq, resp.epoch)
                else:
                    sealed = b""
                c = parse_unverified(sealed) if sealed else None
            except TricklesError:
                self.stats.malformed += 1
                c = None
            if (
                c is not None
                and c.seq == resp.seq
                and c.epoch == resp.epoch
                and c.conn_id == self.conn_id
                and _sane(c)
            ):
                self._store_cont(c, sealed)
                self._rtt_sample(now, resp.echo_ts)  # only from packets we could attribute
                self._arm(now)
        self._ooo[resp.seq] = resp.nonce
        self._deliver(resp.chunks, assigned)
        self._advance()

    def _on_synack(self, resp: wire.Response, now: float) -> None:
        if self.state is not State.SYN_SENT or not (resp.flags & F_FULL) or resp.echo_ts not in self._syn_ts:
            return  # not an answer to a SYN we sent
        try:
            c = parse_unverified(bytes(resp.cont))
        except TricklesError:
            self.stats.malformed += 1
            return
        if not _sane(c):
            self.stats.malformed += 1
            return
        self._rtt_sample(now, resp.echo_ts)
        self.state = State.OPEN
        self.conn_id = c.conn_id
        self.epoch = c.epoch
        self._e0 = self.rcv_nxt = c.base
        self._store_cont(c, bytes(resp.cont))
        r0 = self.regions.get(0)
        if r0 is not None:
            r0.input_inflight = False
        self._deliver(resp.chunks, None)
        self._timer = None
        self._consecutive_timeouts = 0

    def _store_cont(self, c: Cont, sealed: bytes) -> None:
        self.stats.continuations += 1
        self._conts[c.seq] = (c, sealed)
        heapq.heappush(self._cont_heap, c.seq)
        best = self._best
        if best is None or best[0].epoch != c.epoch or (c.base, c.seq) > (best[0].base, best[0].seq):
            self._best = (c, sealed)

    def _enter_epoch(self, epoch: int, seq: int, parent: int) -> None:
        """The first packet of the slow start we asked for: start a fresh SACK record."""
        sent = self._sent.get((epoch, parent))
        base = sent.plan.base if sent is not None else seq
        self.epoch = epoch
        self._slowstart = None
        self._e0 = self.rcv_nxt = base
        self._px = [0]
        self._lost = []
        self._lost_lefts = []
        self._ooo = {}
        self._consecutive_timeouts = 0
        self._attempt = 0

    def _late(self, seq: int) -> None:
        """A packet below rcv_nxt arrived: if it was declared lost, the loss was reordering."""
        i = bisect_right(self._lost_lefts, seq) - 1
        if i >= 0 and self._lost[i][1] >= seq:
            self.stats.spurious_losses += 1
            degree = self.rcv_nxt + len(self._ooo) - seq
            self._dupthresh = min(max(self._dupthresh, degree + 1), MAX_DUPTHRESH)

    def _advance(self) -> None:
        """Finalize packets at rcv_nxt; declare holes lost once DUPTHRESH packets lie above them."""
        ooo = self._ooo
        px = self._px
        while True:
            while self.rcv_nxt in ooo:
                px.append(px[-1] ^ ooo.pop(self.rcv_nxt))
                self.rcv_nxt += 1
            if len(ooo) < self._dupthresh:
                break
            nxt = min(ooo)
            lo, hi = self.rcv_nxt, nxt - 1
            self._lost.append((lo, hi))
            self._lost_lefts.append(lo)
            px.extend([px[-1]] * (hi - lo + 1))
            self.stats.losses_declared += hi - lo + 1
            for s in range(lo, hi + 1):
                self._requeue(self._inflight.pop((self.epoch, s, False), None))
            self.rcv_nxt = nxt
        dl = self._retx_deadline
        while dl and dl[0][0] < self.rcv_nxt:
            _, ep, s = heapq.heappop(dl)
            self._requeue(self._inflight.pop((ep, s, True), None))

    # -- user data -------------------------------------------------------------------------------------

    def _deliver(self, chunks: Iterable[wire.Chunk], assigned: list[Assign] | None) -> None:
        regions = self.regions
        for ch in chunks:
            if ch.type == C_DATA:
                rid = ch.offset >> REGION_SHIFT
                r = regions.get(rid)
                if r is not None and ch.length:
                    self._store_data(r, ch.offset, ch.data)
            elif ch.type == C_UCONT:
                self._on_ucont(ch)
            elif ch.type == C_SKIP:
                r = regions.get(ch.offset >> REGION_SHIFT)
                if r is not None and ch.offset >= r.start and (r.end is None or ch.offset < r.end):
                    r.end = ch.offset
                    r.want.remove(ch.offset, r.start + (1 << REGION_SHIFT))
                    self._drain(r)
            elif ch.type == C_ERROR:
                r = regions.get(ch.region)
                if r is not None and r.error is None:
                    r.error = (ch.kind, ch.data.decode("utf-8", "replace"))
                    r.want = RangeSet()
                    r.input_done = True
        self._requeue(assigned)

    def _store_data(self, r: Region, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if r.end is not None and end > r.end:
            end = r.end
        nxt = r.next_off
        if end <= nxt:
            return  # a duplicate
        want = r.want
        if offset <= nxt and not r.have:
            # The common case: in order. No range bookkeeping beyond moving the reassembly point.
            r.ready += (
                data[nxt - offset : end - offset] if (offset < nxt or end - offset < len(data)) else data
            )
            r.next_off = end
            if want:
                first = want.first()
                if first is not None and first[0] < end:
                    want.remove(nxt, end)
            return
        for a, b in r.have.missing(max(offset, nxt), end):
            r.pieces[a] = data[a - offset : b - offset]
            r.have.add(a, b)
            want.remove(a, b)
        self._drain(r)

    def _drain(self, r: Region) -> None:
        pieces = r.pieces
        start = r.next_off
        while r.next_off in pieces:
            p = pieces.pop(r.next_off)
            r.ready += p
            r.next_off += len(p)
        if r.next_off != start:
            r.have.remove(start, r.next_off)

    def _missing(self, r: Region, start: int, end: int) -> list[tuple[int, int]]:
        """Bytes of [start, end) not received yet."""
        start = max(start, r.next_off)
        if start >= end:
            return []
        if not r.have:
            return [(start, end)]
        return r.have.missing(start, end)

    def _on_ucont(self, ch: wire.Chunk) -> None:
        r = self.regions.get(ch.region)
        if r is None:
            return
        r.input_inflight = False
        if ch.kind == UcontKind.INPUT_MORE:
            if ch.consumed > r.input_acked:
                r.input_acked = min(ch.consumed, len(r.input))
            r.input_ucont = bytes(ch.data)
            return
        if r.ucont:
            return  # already have an output continuation for this region
        if not (r.start <= ch.valid_start <= ch.valid_end <= r.start + (1 << REGION_SHIFT)):
            return
        r.input_done = True
        r.consumed = ch.consumed
        r.ucont = bytes(ch.data)
        r.end = ch.valid_end
        if r.next_off < ch.valid_start:
            r.next_off = ch.valid_start
        for a, b in self._missing(r, ch.valid_start, ch.valid_end):
            r.want.add(a, b)

    def _requeue(self, assigned: list[Assign] | None) -> None:
        """Slots whose packet arrived or was lost: ask again for whatever did not arrive."""
        if not assigned:
            return
        for a in assigned:
            r = self.regions.get(a.region)
            if r is None:
                continue
            if a.length == 0:
                r.input_inflight = False
                continue
            end = a.start + a.length
            if r.end is not None:
                end = min(end, r.end)
            for x, y in self._missing(r, a.start, end):
                r.want.add(x, y)

    # -- send path -------------------------------------------------------------------------------------

    def _ts(self, now: float) -> int:
        return int(now * 1_000_000) & U32

    def _send_syn(self, now: float) -> None:
        self._syn_tries += 1
        self._syn_ts.add(self._ts(now))
        ts = self._ts(now).to_bytes(4, "big")
        self._out.append(self._syn[:4] + ts + self._syn[8:])
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

    def _proof(self, base: int, k: int) -> list[tuple[int, int, int]] | None:
        """Received runs of [base, k] with their nonce summaries (all final)."""
        out: list[tuple[int, int, int]] = []
        px, e0 = self._px, self._e0
        pos = base
        i = max(bisect_left(self._lost_lefts, base) - 1, 0)
        lost = self._lost
        while i < len(lost) and lost[i][0] <= k:
            lo, hi = lost[i]
            if hi >= pos:
                if lo > pos:
                    out.append((pos, lo - 1, px[lo - e0] ^ px[pos - e0]))
                pos = hi + 1
            i += 1
        if pos <= k:
            out.append((pos, k, px[k + 1 - e0] ^ px[pos - e0]))
        if len(out) > wire.MAX_PROOF_BLOCKS:
            return None
        return out

    def _send_requests(self, now: float) -> None:
        """Turn held continuations into requests: the send half of the client machine."""
        if self._idle_restart_due(now):
            self._attempt = 0
            self._slow_start_request(now)
            return
        if self._recovering and self._slowstart is None:
            # Before any request of the new piece: its bootstrap packets must come first.
            self._regenerate(now)
        heap = self._cont_heap
        while heap and heap[0] < self.rcv_nxt:
            k = heap[0]
            c, sealed = self._conts[k]
            if c.epoch != self.epoch or c.base < self._e0:
                heapq.heappop(heap)
                del self._conts[k]
                continue
            if c.phase == Phase.SYNACK:
                proof: list[tuple[int, int, int]] | None = []
            else:
                proof = self._proof(c.base, k)
            if proof is None:
                heapq.heappop(heap)
                del self._conts[k]
                continue
            try:
                plan = plan_request(c, [(l, r) for l, r, _ in proof], self.config.burst_limit)
            except TricklesError:
                # Only a forged response can carry such a continuation (we cannot check its MAC).
                heapq.heappop(heap)
                del self._conts[k]
                self.stats.malformed += 1
                continue
            piece = (c.epoch, c.base)
            last_cont = self._last_cont
            if piece not in last_cont and len(last_cont) > 8:
                for old in [p for p in last_cont if p not in self._recovering]:
                    del last_cont[old]  # pieces that finished without a recovery
            last_cont[piece] = (c, sealed)
            if plan.phase == Phase.BOOTSTRAP:
                rec = self._recovering.get(piece)
                if rec is None:
                    rec = self._recovering[piece] = _Recovery(plan.base, plan.start)
                rec.planned.update(range(plan.lo, plan.hi + 1))
            if plan.n_slots == 0:
                heapq.heappop(heap)  # the server would terminate this trickle
                del self._conts[k]
                continue
            if not self._has_work():
                # Nothing to ask for: hold the continuations (in order) until there is, rather
                # than clock packets that would carry nothing (in flight or idle alike).
                break
            if self._max_child - self.rcv_nxt >= self.rwnd_packets:
                break  # receive window: no more packets in flight than our socket buffer holds
            heapq.heappop(heap)
            del self._conts[k]
            self._emit(ReqType.REQUEST, c, sealed, proof, plan, now)
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
            if self.rcv_nxt < b2 or (heap and heap[0] < b2):
                continue  # the old piece is not final yet
            rec.done = True
            del self._recovering[piece]
            last = self._last_cont.pop(piece, None)
            if not set(range(b2, b2 + rec.new_cwnd)) - rec.planned:
                continue
            if last is None:
                continue
            c, sealed = last
            proof = self._proof(c.base, c.seq)
            if proof is None:
                continue
            try:
                plan = plan_request(c, [(l, r) for l, r, _ in proof], self.config.burst_limit, regen=True)
            except TricklesError:
                continue
            if plan.n_slots:
                self._emit(ReqType.REGEN, c, sealed, proof, plan, now)

    def _emit(
        self, rtype: int, c: Cont, sealed: bytes, proof: list[tuple[int, int, int]], plan: Plan, now: float
    ) -> None:
        slots: list[tuple[int, int, bool]] = [(c.epoch, s, True) for s in plan.retransmits]
        slots += [(plan.epoch, s, False) for s in range(plan.lo, plan.hi + 1)]
        segments, assigns = self._fill(len(slots), 8 + SEALED_LEN + 1 + 12 * len(proof) + 1)
        if plan.hi > self._max_child:
            self._max_child = plan.hi
        for ident, a in zip(slots, assigns, strict=True):
            if a:
                self._inflight[ident] = a
                if ident[2]:
                    bound = plan.hi if plan.hi >= plan.lo else self._max_child
                    heapq.heappush(self._retx_deadline, (bound, ident[0], ident[1]))
        self._sent[(plan.epoch, c.seq)] = _Sent(c, plan)
        if len(self._sent) > 4096:
            for key in list(self._sent)[:1024]:
                del self._sent[key]
        attempt = self._attempt if rtype == ReqType.RTO else 0
        self._out.append(wire.encode_request(rtype, self._ts(now), sealed, proof, segments, attempt))
        self._last_emit = now
        self.stats.requests_sent += 1
        if self._record_cwnd:
            self.stats.cwnd_samples.append((now, self.cwnd_estimate))
        if self._timer is None:
            self._arm(now)

    def _fill(self, n_slots: int, used: int) -> tuple[list[wire.Segment], list[list[Assign]]]:
        """Choose what each response slot carries: pending inputs first, then wanted byte ranges."""
        segments: list[wire.Segment] = []
        assigns: list[list[Assign]] = [[] for _ in range(n_slots)]
        budget = wire.MAX_DATAGRAM - used - 1
        slot = 0
        for r in self.regions.values():
            if slot >= n_slots or budget < 200:
                break
            if r.error is None and self._input_pending(r):
                room = budget - wire.SEG_INPUT.size - len(r.input_ucont) - 2
                if room < 64:
                    continue
                data = bytes(r.input[r.input_acked : r.input_acked + max(room, 0)])
                fin = r.input_fin and r.input_acked + len(data) == len(r.input)
                segments.append(InputSeg(r.rid, r.input_acked, fin, r.input_ucont, data))
                budget -= wire.SEG_INPUT.size + len(r.input_ucont) + 2 + len(data)
                r.input_inflight = True
                assigns[slot].append(Assign(r.rid, 0, 0))
                slot += 1
        mss = wire.MSS
        for r in self.regions.values():
            if slot >= n_slots:
                break
            if r.error is not None or not r.ucont or not r.want:
                continue
            seg_cost = wire.SEG_FETCH.size + len(r.ucont) + 1
            if budget < seg_cost + wire.FETCH_RANGE.size:
                break
            budget -= seg_cost
            ranges: list[tuple[int, int]] = []
            limit = r.next_off + self.rcvbuf
            while slot < n_slots and len(ranges) < 255 and budget >= wire.FETCH_RANGE.size:
                first = r.want.first()
                if first is None or first[0] >= limit:
                    break
                a = first[0]
                b = min(first[1], a + mss, limit)
                r.want.remove(a, b)
                ranges.append((a, b - a))
                assigns[slot].append(Assign(r.rid, a, b - a))
                budget -= wire.FETCH_RANGE.size
                slot += 1
            if ranges:
                segments.append(FetchSeg(r.ucont, tuple(ranges)))
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
        for assigned in self._inflight.values():
            self._requeue(assigned)
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
        right = self._contiguous_right(c.base) if c.epoch == self.epoch else c.base - 1
        if self._attempt >= 3:
            # Three timeout requests in a row went unanswered. If a forged packet poisoned our SACK
            # record their proofs can never verify, so now prove nothing (slow start from the
            # piece's base, at the cost of a lower ssthresh): the connection still recovers.
            right = c.base - 1
        proof: list[tuple[int, int, int]] = []
        if right >= c.base:
            proof = [(c.base, right, self._run_xor(c.base, right))]
        plan = plan_timeout(c, [(l, r) for l, r, _ in proof], self._attempt, self.config.rto_cwnd)
        self._slowstart = plan.epoch
        self._max_child = 0
        self._conts.clear()
        self._cont_heap.clear()
        self._emit(ReqType.RTO, c, sealed, proof, plan, now)
        self._arm(now)

    def _contiguous_right(self, base: int) -> int:
        if base < self._e0:
            return base - 1
        i = bisect_left(self._lost_lefts, base)
        for lo, hi in self._lost[max(i - 1, 0) :]:
            if hi >= base:
                return max(lo - 1, base - 1)
        if base > self.rcv_nxt:
            return base - 1
        right = self.rcv_nxt - 1
        while right + 1 in self._ooo:
            right += 1
        return right

    def _run_xor(self, lo: int, hi: int) -> int:
        e0, px = self._e0, self._px
        fin_hi = min(hi, self.rcv_nxt - 1)
        x = px[fin_hi + 1 - e0] ^ px[lo - e0] if fin_hi >= lo else 0
        for s in range(max(lo, self.rcv_nxt), hi + 1):
            x ^= self._ooo[s]
        return x


def _sane(c: Cont) -> bool:
    """Fields no server of ours would seal (we cannot check the MAC, so check the arithmetic)."""
    return c.ack_div in (1, 2) and 1 <= c.start <= MAX_CWND and c.ssthresh >= 1 and c.base <= c.seq + 1


__all__ = ["AckKind", "ClientConnection", "Region", "State", "ack_kind"]
