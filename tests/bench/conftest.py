"""The harness starts ``python -m bench.NAME`` subprocesses. Make ``bench`` importable for them
without putting the repository root on their path: under ``make test-compiled`` (PYTHONSAFEPATH)
the root would shadow the compiled ``trickles`` with its sources."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="session")
def bench_importable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    shim = tmp_path_factory.mktemp("bench-path")
    (shim / "bench").symlink_to(ROOT / "bench", target_is_directory=True)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), old) if p)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
