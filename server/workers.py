"""Running N worker processes of one command (``serve --workers``, ``spray --workers``).

The workers are spawned (not forked: each starts its own trio run and sockets), the supervisor
forwards SIGTERM, SIGINT and SIGHUP (key reload) to every worker, and exits non-zero if any worker
did.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["run_workers"]


def run_workers(target: Callable[[T, int], None], opts: T, n: int) -> int:
    """Run ``target(opts, i)`` for ``i`` in ``0..n-1``, each in its own process; wait for all."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(opts, i), daemon=False) for i in range(n)]
    for pr in procs:
        pr.start()

    def forward(sig: int, _frame: object) -> None:
        for pr in procs:
            if pr.pid is not None:
                os.kill(pr.pid, sig)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    for pr in procs:
        pr.join()
    return 0 if all(pr.exitcode == 0 for pr in procs) else 1
