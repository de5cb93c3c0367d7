"""Running N worker processes of one command (``serve --workers``, ``spray --workers``).

The workers are spawned (not forked: each starts its own trio run and sockets), the supervisor
forwards SIGTERM, SIGINT and SIGHUP (key reload) to every worker, and exits non-zero if any worker
did.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")

__all__ = ["run_command", "run_workers", "worker_entry"]


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


def run_command(
    run_worker: Callable[[T, int], Awaitable[None]],
    worker_main: Callable[[T, int], None],
    opts: T,
    n: int,
    where: str,
) -> int:
    """A command's main: one worker in this process, or ``n`` worker processes; its exit code.
    ``where`` names what could not be bound (``serve on HOST:PORT``)."""
    from .cli import MetricsBindError  # cli is the entry point: already loaded

    try:
        if n == 1:
            trio.run(run_worker, opts, 0)
            return 0
        return run_workers(worker_main, opts, n)
    except MetricsBindError as e:
        print(f"trickles: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"trickles: cannot {where}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def worker_entry(run_worker: Callable[[T, int], Awaitable[None]], opts: T, worker: int, label: str) -> None:
    """The body of a worker process: log with its name, run, and exit 1 on a metrics bind error."""
    from .cli import MetricsBindError

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label}[{worker}] %(message)s")
    try:
        trio.run(run_worker, opts, worker)
    except MetricsBindError as e:
        print(f"trickles: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
