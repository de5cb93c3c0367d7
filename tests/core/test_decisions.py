"""The decision table (``congestion.DECISIONS``, PROTOCOL.md section 7.8) against the real engine.

Every (request type x continuation phase x ack kind x proof shape) cell: a genuine continuation of
that shape (sealed under the engine's key, old enough for any timeout) and a proof with correct
nonce summaries go through ``ServerEngine.step``; what the engine does must be the table's outcome.
Where the outcome verifies a proof, the same request with one summary bit flipped is a forged proof.
"""

from __future__ import annotations

import itertools

import pytest

from trickles import wire
from trickles.congestion import DECISIONS, AckKind, Outcome, ProofShape, ack_kind, decide
from trickles.continuation import Continuation, Phase, seal
from trickles.engine import ServerConfig, ServerEngine
from trickles.errors import DropReason
from trickles.keys import KeyRing, ServerKey
from trickles.minisocket import EventKind, Minisocket
from trickles.nonces import packet_nonces, piece_id, range_summary
from trickles.wire import ReqType

from .helpers import ADDR, MASTER, T0

REQUEST_TYPES = (ReqType.REQUEST, ReqType.REGEN, ReqType.RTO, ReqType.CLOSE)
SEQ_OF_KIND = {AckKind.FULL1: 5, AckKind.FULL2: 9, AckKind.MINIMAL: 10}  # base 1, ack_div 2
SHAPES = (ProofShape.NONE, ProofShape.LOSS_FREE, ProofShape.HOLES)
CELLS = list(itertools.product(REQUEST_TYPES, list(Phase), list(SEQ_OF_KIND), SHAPES))


class Recorder:
    """An app that only records the events it sees."""

    def __init__(self) -> None:
        self.events: list[tuple[EventKind, int | None]] = []

    def handle(self, msk: Minisocket) -> None:
        self.events.append((msk.kind, msk.plan.phase if msk.plan is not None else None))


KEY = ServerKey(1, MASTER)
APP = Recorder()
ENGINE = ServerEngine(KeyRing(KEY), APP, ServerConfig(replay_capacity=4096, cache_size=0))


def _request(rtype: int, phase: int, kind: int, shape: str, conn_id: int, forge: bool = False) -> bytes:
    seq = SEQ_OF_KIND[kind]
    now_ms = int(T0 * 1000) & 0xFFFFFFFF
    c = Continuation(1, phase, 2, conn_id, seq, 5, 1, 3, 16383, now_ms - 1000, 0)
    assert ack_kind(seq - c.base, c.ack_div) == kind
    runs = {
        ProofShape.NONE: [],
        ProofShape.LOSS_FREE: [(1, seq)],
        ProofShape.HOLES: [(1, seq - 2), (seq, seq)],
    }
    piece = piece_id(conn_id, c.epoch, c.base, c.start, c.ssthresh)
    proof = [(lo, hi, range_summary(packet_nonces(KEY, piece, range(lo, hi + 1)))) for lo, hi in runs[shape]]
    if forge:
        lo, hi, summary = proof[-1]
        proof[-1] = (lo, hi, summary ^ 1)
    return wire.encode_request(rtype, 0, seal(c, KEY, ADDR), proof, [])


def _observed(data: bytes) -> str:
    """What the engine did with one request, in the table's words."""
    before = len(APP.events)
    res = ENGINE.step(data, ADDR, T0)
    if res.drop is not None:
        return {DropReason.FORGED_PROOF: Outcome.FORGED_PROOF, DropReason.PROTOCOL: Outcome.PROTOCOL}.get(
            res.drop, f"drop {res.drop}"
        )
    assert len(APP.events) == before + 1, "answered without an event, or terminated"
    kind, plan_phase = APP.events[-1]
    if kind == EventKind.CLOSE:
        assert res.datagrams == []
        return Outcome.CLOSE
    assert res.datagrams, "an event with slots sends packets"
    outcomes: dict[int | None, str] = {
        Phase.NORMAL: Outcome.NORMAL,
        Phase.BOOTSTRAP: Outcome.RECOVERY,
        Phase.SLOWSTART: Outcome.TIMEOUT,
    }
    return outcomes[plan_phase]


def test_the_table_covers_every_cell_and_every_row_is_reachable() -> None:
    used = set()
    for cell in CELLS:
        decide(*cell)  # every cell has a row
        used.add(next(i for i, row in enumerate(DECISIONS) if _matches(row, cell)))
    assert used == set(range(len(DECISIONS))), "a row no cell reaches (shadowed by an earlier one)"
    with pytest.raises(ValueError):
        decide(ReqType.SYN, Phase.NORMAL, AckKind.FULL1, ProofShape.NONE)


def _matches(row: tuple[object, ...], cell: tuple[object, ...]) -> bool:
    return all(want is None or want == have for want, have in zip(row[:4], cell, strict=True))


@pytest.mark.parametrize(
    "rtype,phase,kind,shape",
    CELLS,
    ids=[f"{ReqType(t).name}-{Phase(p).name}-{k}-{s}" for t, p, k, s in CELLS],
)
def test_engine_follows_the_decision_table(rtype: int, phase: int, kind: int, shape: str) -> None:
    conn_id = 1000 + [tuple(c) for c in CELLS].index((rtype, phase, kind, shape))  # own replay keys
    expected = decide(rtype, phase, kind, shape)
    if expected == Outcome.FIRST_WINDOW:
        expected = Outcome.NORMAL  # the first window is a NORMAL-phase plan from base
    if (
        expected in (Outcome.NORMAL, Outcome.RECOVERY, Outcome.TIMEOUT, Outcome.CLOSE)
        and shape != ProofShape.NONE
    ):
        forged = _request(rtype, phase, kind, shape, conn_id, forge=True)
        assert _observed(forged) == Outcome.FORGED_PROOF
    assert _observed(_request(rtype, phase, kind, shape, conn_id)) == expected
