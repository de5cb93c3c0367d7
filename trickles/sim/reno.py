"""A plain TCP Reno sender and receiver on the simulator: the reference Trickles is compared with.

Theory of operation
-------------------
Trickles claims to reproduce TCP Reno's congestion control without keeping a TCB. To check that
claim we need a Reno that runs on the same :class:`~trickles.sim.network.Link` objects, counts
windows in the same unit (packets, not bytes) and starts from the same constants
(:class:`~trickles.congestion.ProtocolConfig`: initial window 3, initial ssthresh 16383, window 2
after a timeout). Data packets are as long as a full Trickles datagram (``wire.MAX_DATAGRAM`` =
1452 bytes) and carry ``wire.MSS`` = 1372 payload bytes, so goodput and link occupancy compare one
to one; ACKs are 60 bytes.

*Sender* (the server side, which owns the data):

* growth per ACK event (an ACK that advances the cumulative point), exactly the rule
  :func:`~trickles.reno.tcp_cwnd` models: +1 while ``cwnd < ssthresh`` (slow start), else +1 after
  ``cwnd`` events (congestion avoidance). No byte counting;
* outside recovery the sender keeps ``snd_nxt - snd_una <= cwnd``: duplicate ACKs clock nothing
  (no limited transmit), as a Trickles client holds back the requests above a hole;
* loss detection from an RFC 6675-style SACK scoreboard: a packet is lost once ``DUPTHRESH`` (3)
  packets above it are SACKed. Then fast retransmit: ``ssthresh = max(FlightSize // 2, 2)``,
  ``cwnd = ssthresh``, the first lost packet is resent at once, and until the cumulative ACK passes
  the recovery point the sender transmits while ``pipe < cwnd``, lost packets first. ``pipe`` =
  packets outstanding - SACKed - marked lost + retransmissions in flight. The window is halved once
  per window of data and does not grow during recovery;
* retransmit timeout (RFC 6298: initial 1 s, minimum 0.2 s, doubling backoff, Karn's rule):
  ``ssthresh = max(pipe // 2, 2)`` (not again for a repeated timeout of the same packet),
  ``cwnd = 2``, every un-SACKed outstanding packet is marked lost and resent in slow start.

*Receiver* (the client): cumulative ACK plus up to 3 SACK blocks (as with TCP timestamps on), the
block holding the newest out-of-order packet first. Delayed ACKs: one ACK per ``ack_div`` in-order
packets, at once for an out-of-order, duplicate or hole-filling packet, else after 40 ms.

*Connection setup* mirrors what a Trickles client goes through before its first data: SYN up,
SYN-ACK down, request up, then data. The receiver drives retries (1 s, doubling), so the sender has
nothing to remember before the request arrives.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from heapq import nlargest

from trickles.congestion import ProtocolConfig
from trickles.reno import MAX_CWND
from trickles.rtt import RttEstimator
from trickles.sim.network import Link, Sim
from trickles.wire import MAX_DATAGRAM, MSS

DATA_WIRE = MAX_DATAGRAM
"""Length of a full data packet as handed to the link (1452 bytes, like a full Trickles datagram)."""
HEADER = DATA_WIRE - MSS
"""Per-packet overhead so that a full packet carries ``wire.MSS`` payload bytes."""
ACK_WIRE = 60
DUPTHRESH = 3
MAX_SACK_BLOCKS = 3
DELACK_S = 0.040
INITIAL_RTO = 1.0
MIN_RTO = 0.2
MAX_RTO = 60.0

_SYN, _SYNACK, _REQ, _DATA, _ACK = 1, 2, 3, 4, 5
_DATA_HEAD = struct.Struct(">BI")
_ACK_HEAD = struct.Struct(">BIB")
_BLOCK = struct.Struct(">II")
_ZEROS = bytes(DATA_WIRE)
_CONTROL = {k: bytes((k,)) + _ZEROS[: ACK_WIRE - 1] for k in (_SYN, _SYNACK, _REQ)}

Deliver = Callable[[bytes], None]


class RenoSender:
    """The data side: Reno congestion control over a SACK scoreboard, in packets numbered from 0."""

    def __init__(
        self,
        sim: Sim,
        down: Link,
        n_pkts: int | None,
        last_len: int,
        record_cwnd: bool,
        config: ProtocolConfig,
    ) -> None:
        self.sim = sim
        self.down = down
        self.deliver: Deliver = _unset
        self.n_pkts = n_pkts
        self.last_len = last_len
        self.record_cwnd = record_cwnd
        self.rto_cwnd = config.rto_cwnd
        self.started = False
        self.una = 0
        self.nxt = 0
        self.cwnd = config.initial_cwnd
        self.ssthresh = config.initial_ssthresh
        self._acc = 0  # ACK events counted towards the next congestion-avoidance increase
        self.cwnd_log: list[tuple[float, int]] = []
        self.retransmits = 0
        self.timeouts = 0
        self.recoveries = 0
        # scoreboard: SACKed packets, packets marked lost (the un-SACKed ones in [una, high_lost)),
        # retransmissions still in flight
        self._sacked: set[int] = set()
        self._high_lost = 0
        self._n_lost = 0
        self._retx: set[int] = set()
        self._rescan = 0  # no lost packet below this still awaits its retransmission
        self._in_recovery = False
        self._recover = -1
        self._in_loss = False  # after a timeout, until everything then outstanding is acknowledged
        self._loss_recover = -1
        self._rto_una = -1  # snd_una at the last timeout: a repeated timeout does not halve again
        # RTT and timer (RFC 6298); first-transmission times only, so retransmissions give no sample
        self._sent_at: dict[int, float] = {}
        self.rtt = RttEstimator(INITIAL_RTO, MIN_RTO, MAX_RTO)
        self._deadline: float | None = None
        self._timer_at: float | None = None
        self._timer_tok = 0

    # -- input -----------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        kind = data[0]
        if kind == _SYN:
            if not self.started:
                self.down.send(_CONTROL[_SYNACK], self.deliver)
        elif kind == _REQ:
            if not self.started:
                self.started = True
                self._log()
                self._send()
        elif kind == _ACK:
            _, cum, n = _ACK_HEAD.unpack_from(data, 0)
            blocks = [_BLOCK.unpack_from(data, _ACK_HEAD.size + _BLOCK.size * j) for j in range(n)]
            self._on_ack(cum, blocks)

    def _on_ack(self, cum: int, blocks: list[tuple[int, int]]) -> None:
        now = self.sim.now
        cum = min(cum, self.nxt)
        sacked, retx = self._sacked, self._retx
        advanced = cum > self.una
        if advanced:
            t = self._sent_at.get(cum - 1)
            if t is not None:
                self._rtt_sample(now - t)
            for s in range(self.una, cum):
                if s in sacked:
                    sacked.remove(s)
                elif s < self._high_lost:
                    self._n_lost -= 1
                retx.discard(s)
                self._sent_at.pop(s, None)
            self.una = cum
            if self._high_lost < cum:
                self._high_lost = cum
            if self._rescan < cum:
                self._rescan = cum
        new_sack = False
        for lo, hi in blocks:
            for s in range(max(lo, self.una), min(hi, self.nxt)):
                if s not in sacked:
                    sacked.add(s)
                    new_sack = True
                    if s < self._high_lost:
                        self._n_lost -= 1
                    retx.discard(s)
        if new_sack and len(sacked) >= DUPTHRESH:
            thr = nlargest(DUPTHRESH, sacked)[-1]
            if thr > self._high_lost:
                self._n_lost += sum(1 for s in range(self._high_lost, thr) if s not in sacked)
                self._high_lost = thr

        if advanced:
            if self._in_recovery:
                if self.una > self._recover:
                    self._in_recovery = False  # window stays at ssthresh: congestion avoidance
            else:
                self._grow()
            if self._in_loss and self.una > self._loss_recover:
                self._in_loss = False
            self._set_timer(now + self.rtt.rto if self.una < self.nxt else None)
        if not self._in_recovery and not self._in_loss and self._n_lost > 0:
            self._enter_recovery()
        self._send()

    # -- congestion control ------------------------------------------------------------------------------

    def _grow(self) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += 1
        else:
            self._acc += 1
            if self._acc >= self.cwnd:
                self.cwnd += 1
                self._acc = 0
        if self.cwnd > MAX_CWND:
            self.cwnd = MAX_CWND
        self._log()

    def _enter_recovery(self) -> None:
        self.recoveries += 1
        self.ssthresh = max((self.nxt - self.una) // 2, 2)
        self.cwnd = self.ssthresh
        self._acc = 0
        self._in_recovery = True
        self._recover = self.nxt - 1
        self._log()
        # RFC 6675 (4.3): the first lost packet goes out now, whatever the pipe.
        s = self._next_lost()
        if s is not None:
            self._retransmit(s)

    def _timeout(self) -> None:
        if self.una >= self.nxt:
            return
        self.timeouts += 1
        if self.una != self._rto_una:
            # The packets in the network (RFC 6675's pipe), like Trickles' W(right): snd_nxt - snd_una
            # would also count every SACKed packet above a stalled hole.
            self.ssthresh = max(self._pipe() // 2, 2)
        self._rto_una = self.una
        self.cwnd = self.rto_cwnd
        self._acc = 0
        self._in_recovery = False
        self._in_loss = True
        self._loss_recover = self.nxt - 1
        # Everything outstanding and not SACKed is presumed lost, retransmissions included.
        self._retx.clear()
        self._high_lost = self.nxt
        self._n_lost = (self.nxt - self.una) - len(self._sacked)
        self._rescan = self.una
        self.rtt.backoff()
        self._log()
        self._send()

    def _pipe(self) -> int:
        return (self.nxt - self.una) - len(self._sacked) - self._n_lost + len(self._retx)

    # -- output ----------------------------------------------------------------------------------------

    def _send(self) -> None:
        if not self.started:
            return
        if self._in_recovery or self._in_loss:
            while self._pipe() < self.cwnd:
                s = self._next_lost()
                if s is not None:
                    self._retransmit(s)
                elif self._has_new():
                    self._send_new()
                else:
                    break
        else:
            while self.nxt - self.una < self.cwnd and self._has_new():
                self._send_new()

    def _has_new(self) -> bool:
        return self.n_pkts is None or self.nxt < self.n_pkts

    def _next_lost(self) -> int | None:
        s = max(self._rescan, self.una)
        sacked, retx = self._sacked, self._retx
        while s < self._high_lost and (s in sacked or s in retx):
            s += 1
        self._rescan = s
        return s if s < self._high_lost else None

    def _packet(self, seq: int) -> bytes:
        plen = self.last_len if self.n_pkts is not None and seq == self.n_pkts - 1 else MSS
        head = _DATA_HEAD.pack(_DATA, seq)
        return head + _ZEROS[: HEADER + plen - len(head)]

    def _send_new(self) -> None:
        seq = self.nxt
        self.nxt += 1
        self._sent_at[seq] = self.sim.now
        self.down.send(self._packet(seq), self.deliver)
        if self._deadline is None:
            self._set_timer(self.sim.now + self.rtt.rto)

    def _retransmit(self, seq: int) -> None:
        self._retx.add(seq)
        self._sent_at.pop(seq, None)  # Karn: no RTT sample from a retransmitted packet
        self.retransmits += 1
        self.down.send(self._packet(seq), self.deliver)
        if self._deadline is None:
            self._set_timer(self.sim.now + self.rtt.rto)

    def _log(self) -> None:
        log = self.cwnd_log
        if self.record_cwnd and (not log or log[-1][1] != self.cwnd):
            log.append((self.sim.now, self.cwnd))

    # -- timer -----------------------------------------------------------------------------------------

    def _rtt_sample(self, r: float) -> None:
        self.rtt.sample(r)

    def _set_timer(self, deadline: float | None) -> None:
        # Lazy timer: restarting on every ACK only moves the deadline; one event per expiry period.
        self._deadline = deadline
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            self._schedule(deadline)

    def _schedule(self, t: float) -> None:
        self._timer_tok += 1
        self._timer_at = t
        self.sim.at(t, self._on_timer, self._timer_tok)

    def _on_timer(self, tok: int) -> None:
        if tok != self._timer_tok:
            return
        self._timer_at = None
        d = self._deadline
        if d is None:
            return
        if d > self.sim.now:
            self._schedule(d)
            return
        self._deadline = None
        self._timeout()


class RenoReceiver:
    """The client side: in-order delivery, delayed cumulative ACKs with SACK blocks, setup retries."""

    def __init__(self, sim: Sim, up: Link, n_pkts: int | None, ack_div: int) -> None:
        self.sim = sim
        self.up = up
        self.deliver: Deliver = _unset
        self.n_pkts = n_pkts
        self.ack_div = ack_div
        self.rcv_nxt = 0
        self._ooo: dict[int, int] = {}  # seq -> payload length, received above rcv_nxt
        self._newest = -1  # the most recent out-of-order arrival (its block is reported first)
        self._pending = 0  # in-order packets not yet acknowledged
        self._delack_tok = 0
        self._delack_armed = False
        self.bytes_delivered = 0
        self.delivered_log: list[tuple[float, int]] = []
        self.done_at: float | None = None
        self.acks_sent = 0
        self._got_synack = False
        self._got_data = False
        self._hs_rto = INITIAL_RTO
        self._hs_tok = 0

    # -- connection setup ------------------------------------------------------------------------------

    def connect(self) -> None:
        self.up.send(_CONTROL[_SYN], self.deliver)
        self._arm_handshake()

    def _arm_handshake(self) -> None:
        self._hs_tok += 1
        self.sim.at(self.sim.now + self._hs_rto, self._handshake_timer, self._hs_tok)

    def _handshake_timer(self, tok: int) -> None:
        if tok != self._hs_tok or self._got_data:
            return
        self._hs_rto = min(self._hs_rto * 2, MAX_RTO)
        self.up.send(_CONTROL[_REQ if self._got_synack else _SYN], self.deliver)
        self._arm_handshake()

    # -- data ------------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        kind = data[0]
        if kind == _SYNACK:
            if not self._got_synack:
                self._got_synack = True
                self.up.send(_CONTROL[_REQ], self.deliver)
                self._arm_handshake()
            return
        if kind != _DATA:
            return
        self._got_data = True
        _, seq = _DATA_HEAD.unpack_from(data, 0)
        plen = len(data) - HEADER
        if seq < self.rcv_nxt or seq in self._ooo:
            self._ack()  # duplicate: tell the sender at once
            return
        if seq > self.rcv_nxt:
            self._ooo[seq] = plen
            self._newest = seq
            self._ack()
            return
        filled_hole = bool(self._ooo)
        got = plen
        self.rcv_nxt += 1
        ooo = self._ooo
        while self.rcv_nxt in ooo:
            got += ooo.pop(self.rcv_nxt)
            self.rcv_nxt += 1
        self.bytes_delivered += got
        now = self.sim.now
        self.delivered_log.append((now, got))
        if self.done_at is None and self.n_pkts is not None and self.rcv_nxt >= self.n_pkts:
            self.done_at = now
        if filled_hole:
            self._ack()
            return
        self._pending += 1
        if self._pending >= self.ack_div:
            self._ack()
        elif not self._delack_armed:
            self._delack_armed = True
            self.sim.at(now + DELACK_S, self._delack, self._delack_tok)

    def _delack(self, tok: int) -> None:
        if tok == self._delack_tok:
            self._delack_armed = False
            if self._pending:
                self._ack()

    def _blocks(self) -> list[tuple[int, int]]:
        """SACK blocks ``[lo, hi)``: the one holding the newest arrival first, then the highest."""
        if not self._ooo:
            return []
        runs: list[tuple[int, int]] = []
        seqs = sorted(self._ooo)
        lo = prev = seqs[0]
        for s in seqs[1:]:
            if s != prev + 1:
                runs.append((lo, prev + 1))
                lo = s
            prev = s
        runs.append((lo, prev + 1))
        runs.reverse()
        first = [r for r in runs if r[0] <= self._newest < r[1]]
        rest = [r for r in runs if not r[0] <= self._newest < r[1]]
        return (first + rest)[:MAX_SACK_BLOCKS]

    def _ack(self) -> None:
        self._pending = 0
        self._delack_tok += 1
        self._delack_armed = False
        blocks = self._blocks()
        head = _ACK_HEAD.pack(_ACK, self.rcv_nxt, len(blocks))
        body = b"".join(_BLOCK.pack(lo, hi) for lo, hi in blocks)
        self.acks_sent += 1
        self.up.send(head + body + _ZEROS[: ACK_WIRE - len(head) - len(body)], self.deliver)


def _unset(data: bytes) -> None:
    raise RuntimeError("endpoint not wired")


class RenoFlow:
    """One Reno transfer from a sender behind ``down`` to a receiver behind ``up``.

    ``size_bytes=None`` is a bulk source that never runs dry. The receiver starts the connection at
    ``start``. Results: ``bytes_delivered`` (in order, to the application), ``delivered_log``
    ``[(time, bytes)]``, ``done_at``; the sender's ``cwnd_log`` ``[(time, cwnd)]`` (the first window
    and every change, when ``record_cwnd``), ``ssthresh``, ``retransmits``, ``timeouts`` and
    ``recoveries``.
    """

    def __init__(
        self,
        sim: Sim,
        down: Link,
        up: Link,
        size_bytes: int | None,
        start: float = 0.0,
        ack_div: int = 2,
        record_cwnd: bool = False,
        config: ProtocolConfig | None = None,
    ) -> None:
        if size_bytes is not None and size_bytes <= 0:
            raise ValueError("size_bytes must be positive (or None for a bulk source)")
        if ack_div < 1:
            raise ValueError("ack_div must be at least 1")
        n_pkts: int | None = None
        last_len = MSS
        if size_bytes is not None:
            n_pkts = -(-size_bytes // MSS)
            last_len = size_bytes - (n_pkts - 1) * MSS
        self.sender = RenoSender(sim, down, n_pkts, last_len, record_cwnd, config or ProtocolConfig())
        self.receiver = RenoReceiver(sim, up, n_pkts, ack_div)
        self.sender.deliver = self.receiver.receive
        self.receiver.deliver = self.sender.receive
        sim.at(start, self.receiver.connect)

    @property
    def bytes_delivered(self) -> int:
        return self.receiver.bytes_delivered

    @property
    def delivered_log(self) -> list[tuple[float, int]]:
        return self.receiver.delivered_log

    @property
    def done_at(self) -> float | None:
        return self.receiver.done_at

    @property
    def finished(self) -> bool:
        return self.receiver.done_at is not None

    @property
    def cwnd_log(self) -> list[tuple[float, int]]:
        return self.sender.cwnd_log

    @property
    def cwnd(self) -> int:
        return self.sender.cwnd

    @property
    def ssthresh(self) -> int:
        return self.sender.ssthresh

    @property
    def retransmits(self) -> int:
        return self.sender.retransmits

    @property
    def timeouts(self) -> int:
        return self.sender.timeouts

    @property
    def recoveries(self) -> int:
        return self.sender.recoveries


__all__ = ["ACK_WIRE", "DATA_WIRE", "RenoFlow", "RenoReceiver", "RenoSender"]
