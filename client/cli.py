"""``tcurl``: a curl-compatible HTTP client that speaks Trickles over UDP, falling back to TCP.

Only ``http://`` URLs are supported.  Options, messages and exit codes follow curl (see
:mod:`trickles.client.exit_codes`).  This module is the entry point only: it parses the command
line (:mod:`.options`), wires the transports and the output together and runs the transfers
(:mod:`.transfer`); URLs are in :mod:`.urls` and everything written besides requests in
:mod:`.output`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import BinaryIO, TextIO

import trio

from .api import Transport
from .exit_codes import EXIT_INTERNAL, EXIT_USAGE
from .fallback import Dialer
from .options import HELP, PROG, VERSION, Options, UsageError, parse_args
from .output import Reporter, load_write_out
from .tcp_transport import TcpTransport
from .transfer import Connector, Context, make_jobs, run_parallel, run_sequential
from .trickles_transport import TricklesTransport

__all__ = ["load_trickles_transport", "main", "run"]


def load_trickles_transport(reporter: Reporter) -> Transport | None:
    """The transport tcurl tries first (a seam where tests put a stand-in; None means TCP only)."""
    return TricklesTransport()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tcurl`` console script; returns curl's exit code."""
    return run(sys.argv[1:] if argv is None else argv, sys.stdout.buffer, sys.stderr)


def run(argv: Sequence[str], stdout: BinaryIO, stderr: TextIO) -> int:
    """Run tcurl with explicit streams (for embedding and tests); returns the exit code.

    Never raises: a tcurl bug becomes one ``tcurl: (43) internal error: ...`` line.
    """
    try:
        return _run_command(list(argv), stdout, stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last line of defence: one line, never a traceback
        _print_stderr(f"{PROG}: ({EXIT_INTERNAL}) internal error: {type(exc).__name__}: {exc}\n", stderr)
        return EXIT_INTERNAL


def _run_command(argv: list[str], stdout: BinaryIO, stderr: TextIO) -> int:
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        _print_stderr(f"{PROG}: {exc}\n{PROG}: try '{PROG} --help' for more information\n", stderr)
        return EXIT_USAGE
    if opts.help:
        stdout.write(HELP.encode())
        return 0
    if opts.version:
        stdout.write(f"{PROG} {VERSION} (trickles)\nProtocols: http\nFeatures: trickles tcp\n".encode())
        return 0
    if not opts.urls:
        _print_stderr(
            f"{PROG}: no URL specified!\n{PROG}: try '{PROG} --help' for more information\n",
            stderr,
        )
        return EXIT_USAGE
    exit_code = trio.run(_transfer_all, opts, stdout, stderr)
    _flush_stdout(stdout)
    return exit_code


async def _transfer_all(opts: Options, stdout: BinaryIO, stderr: TextIO) -> int:
    """Wire the pipeline (reporter, transports, dialer, ``-w`` format, jobs) and run every URL;
    the exit code is the last failure's, like curl's."""
    reporter = Reporter(stderr, opts)
    trickles = None if opts.tcp else load_trickles_transport(reporter)
    connector = Connector(Dialer(trickles, TcpTransport()))
    ctx = Context(
        opts=opts,
        reporter=reporter,
        connector=connector,
        write_out=load_write_out(opts.write_out, reporter) if opts.write_out else None,
        stderr=stderr,
        show_progress=_progress_wanted(opts, stdout, stderr),
    )
    jobs = make_jobs(opts, stdout, reporter)
    try:
        if opts.parallel:
            outcomes = await run_parallel(ctx, jobs, stdout)
        else:
            outcomes = await run_sequential(ctx, jobs)
    finally:
        await connector.aclose()
    failures = [outcome.exit_code for outcome in outcomes if outcome.exit_code]
    return failures[-1] if failures else 0


def _progress_wanted(opts: Options, stdout: BinaryIO, stderr: TextIO) -> bool:
    """curl shows progress only on a terminal, and not when the body goes to that terminal."""
    if opts.silent or opts.no_progress_meter or opts.verbose or opts.parallel:
        return False
    if not _isatty(stderr):
        return False
    body_to_stdout = len(opts.outputs) < len(opts.urls)
    return not (body_to_stdout and _isatty(stdout))


def _isatty(stream: BinaryIO | TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _flush_stdout(stdout: BinaryIO) -> None:
    try:
        stdout.flush()
    except (OSError, ValueError):
        # The reader went away; point the descriptor at /dev/null so that the interpreter's
        # own flush at exit does not print a BrokenPipeError traceback.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def _print_stderr(text: str, stderr: TextIO) -> None:
    try:
        stderr.write(text)
        stderr.flush()
    except (OSError, ValueError):
        pass
