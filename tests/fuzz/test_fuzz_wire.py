"""Fuzzing the datagram decoders: only :class:`TricklesError` may escape them, whatever the bytes."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from trickles import wire
from trickles.errors import TricklesError

from .corpus import build
from .mutate import Mutator, fuzz_count, run_flat

N = fuzz_count(4000)
MEMORY_GROWTH_MAX = 4 << 20


def fuzz_decoder(decode: Callable[[bytes], object], corpus: list[bytes], seed: int) -> tuple[int, str]:
    mut, rng = Mutator(seed), random.Random(seed)
    parsed = [0]

    def one(i: int) -> None:
        data = mut.mutate(rng.choice(corpus), corpus=corpus) if i % 16 else rng.randbytes(rng.randrange(80))
        try:
            decode(data)
            parsed[0] += 1
        except TricklesError:
            pass
        except Exception as e:  # the finding: report the input that raised it
            raise AssertionError(f"{type(e).__name__}: {e} on input {data.hex()}") from e

    st = run_flat(N, one)
    assert st.peak_growth < MEMORY_GROWTH_MAX, st.line(decode.__name__)
    return parsed[0], st.line(decode.__name__)


def test_decode_request_untrusted(tmp_path: Path) -> None:
    _, corpus = build(tmp_path)
    parsed, line = fuzz_decoder(wire.decode_request_untrusted, [q for q, _ in corpus.requests], 11)
    print(f"\n{line}; {parsed} still parsed")
    assert parsed > N // 20  # mutations near the genuine shape, not only noise


def test_decode_response_untrusted(tmp_path: Path) -> None:
    _, corpus = build(tmp_path)
    parsed, line = fuzz_decoder(wire.decode_response_untrusted, corpus.responses, 12)
    print(f"\n{line}; {parsed} still parsed")
    assert parsed > N // 20
