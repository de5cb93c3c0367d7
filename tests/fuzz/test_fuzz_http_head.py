"""Fuzzing the stateless HTTP head parser: only :class:`HeadError` escapes, the state blob stays
bounded, and a head fed in pieces gets the same outcome as fed at once."""

from __future__ import annotations

import random

from trickles.apps.http_head import HeadError, HttpRequest, feed_head

from .corpus import HEADS
from .mutate import Mutator, fuzz_count, run_flat

N = fuzz_count(4000)
STATE_MAX = 4096
"""Bytes of parser state whatever the input: the request line (2 KiB target) or the kept fields
(1 KiB) plus one unfinished kept line; the module's limits add up to about 3.8 KB."""
MEMORY_GROWTH_MAX = 4 << 20
CORPUS = [
    *HEADS,
    b'GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1,5-\r\nIf-Range: "e"\r\n'
    b"Accept: */*\r\nConnection: close\r\nX-Long: " + b"v" * 600 + b"\r\n\r\n",
    b"\r\nHEAD /dir/ HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\nbody",
    b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
]

Outcome = HttpRequest | int | None  # the request, a HeadError status, or None (incomplete)


def feed(pieces: list[bytes], mutate_state: Mutator | None = None) -> Outcome:
    state = b""
    for piece in pieces:
        if mutate_state is not None and state:
            state = mutate_state.mutate(state)
        try:
            state, req, used = feed_head(state, piece)
        except HeadError as e:
            return e.status
        assert len(state) <= STATE_MAX, len(state)
        assert 0 <= used <= len(piece)
        if req is not None:
            assert state == b""
            return req
    return None


def test_feed_head() -> None:
    mut, rng = Mutator(21), random.Random(21)
    counts = {"request": 0, "error": 0, "incomplete": 0}

    def one(i: int) -> None:
        data = mut.mutate(rng.choice(CORPUS), corpus=CORPUS)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(5)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        try:
            whole = feed([data])
            split = feed(pieces)
            feed(pieces, mut if i % 4 == 0 else None)  # a corrupt state blob: HeadError only
        except Exception as e:
            raise AssertionError(f"{type(e).__name__}: {e} on pieces {pieces!r}") from e
        # Splitting never changes whether a head is accepted, nor the request it yields.
        assert isinstance(whole, HttpRequest) == isinstance(split, HttpRequest), (pieces, whole, split)
        if isinstance(whole, HttpRequest):
            assert whole == split, pieces
        counts["request" if isinstance(whole, HttpRequest) else "error" if whole else "incomplete"] += 1

    st = run_flat(N, one)
    print(f"\n{st.line('feed_head')}; outcomes {counts}")
    assert counts["request"] > N // 20 and counts["error"] > N // 20
    assert st.peak_growth < MEMORY_GROWTH_MAX
