"""``tcurl``'s transfer engine: each URL from connection to ``-w`` line, with retries.

The pipeline of one URL, driven by :func:`run_job`:

1. *URL*: parse it and choose its :class:`Sink` (``-o``, ``-O`` or stdout);
2. *retry loop* (:func:`_attempt_with_retries`): repeat step 3 while ``--retry*`` allow;
3. *attempt* (:func:`_attempt`): under ``--max-time``, *connect* (:class:`Connector`: an idle
   kept-alive connection, or a new one through the shared Trickles-then-TCP :class:`Dialer`),
   then *exchange* (:func:`_exchange`: request, response head, the retry and ``-f`` decisions),
   then *body* (:func:`_copy_body`: to the sink, paced by ``--limit-rate``, with progress);
4. *report*: close the sink, print the error line, the transport figures and the ``-w`` output.

:func:`run_sequential` and :func:`run_parallel` (``-Z``) run the jobs of a command line.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import BinaryIO, TextIO, cast

import trio

from .api import Connection, Response, TransportError
from .exit_codes import EXIT_CONNECT, EXIT_HTTP_ERROR, EXIT_RESOLVE, EXIT_TIMEOUT, EXIT_WRITE_ERROR
from .fallback import Dialer, close_quietly
from .options import PROG, Options
from .output import Outcome, OutputError, Progress, Reporter, Sink, render_write_out
from .urls import ParsedUrl, UrlError, build_request_headers, parse_url

__all__ = ["Connector", "Context", "Job", "make_jobs", "run_job", "run_parallel", "run_sequential"]

DEFAULT_CONNECT_TIMEOUT = 300.0  # curl's built-in connect timeout
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 600.0  # curl caps the exponential backoff at ten minutes
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class Connector:
    """tcurl's connections: idle kept-alive ones are reused, new ones come from the dialer."""

    def __init__(self, dialer: Dialer) -> None:
        self._dialer = dialer
        self._idle: dict[tuple[str, int], list[Connection]] = {}

    async def acquire(self, url: ParsedUrl, timeout: float, reporter: Reporter) -> Connection:
        idle = self._idle.get((url.host, url.port))
        if idle:
            reporter.info(f"Re-using existing connection with host {url.host}")
            return idle.pop()
        connection, _ = await self._dialer.connect(url.host, url.port, timeout=timeout, note=reporter.info)
        return connection

    def release(self, url: ParsedUrl, connection: Connection) -> None:
        self._idle.setdefault((url.host, url.port), []).append(connection)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await close_quietly(connection)


@dataclass
class Job:
    """One URL of the command line with its output destination."""

    url_text: str
    output: str | None  # file name, or None for stdout
    remote_name: bool  # -O: output derived from the URL
    stdout: BinaryIO  # real stdout, or a buffer in parallel mode


@dataclass
class Context:
    opts: Options
    reporter: Reporter
    connector: Connector
    write_out: str | None
    stderr: TextIO
    show_progress: bool


class RateLimiter:
    """Paces reading so that the average rate never exceeds ``--limit-rate``."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._start = trio.current_time()

    async def pace(self, received: int) -> None:
        if self._rate:
            delay = self._start + received / self._rate - trio.current_time()
            if delay > 0:
                await trio.sleep(delay)


async def run_job(ctx: Context, job: Job) -> Outcome:
    """The whole pipeline for one URL: step 1 (URL, sink), step 2 (attempts with retries) and
    step 4 (close the sink, error line, transport figures, ``-w``)."""
    sink: Sink | None = None
    try:
        url = parse_url(job.url_text, path_as_is=ctx.opts.path_as_is)
    except UrlError as exc:
        outcome = Outcome(url_text=job.url_text)
        outcome.fail(exc.exit_code, exc.message)
    else:
        path = url.file_name if job.remote_name else job.output
        sink = Sink(stream=job.stdout if path is None else None, path=path)
        outcome = await _attempt_with_retries(ctx, job, url, sink)
    if sink is not None:
        try:
            sink.close(create=outcome.exit_code == 0)
        except OutputError as exc:
            outcome.fail(EXIT_WRITE_ERROR, str(exc))
    if outcome.exit_code:
        ctx.reporter.error(outcome.exit_code, outcome.error)
    if outcome.stats is not None:
        ctx.reporter.transport_stats(outcome.stats)
    if ctx.write_out:
        _emit_write_out(ctx, job, outcome)
    return outcome


class RetryBudget:
    """``--retry``, ``--retry-delay`` and ``--retry-max-time``: may we retry, and when?"""

    def __init__(self, opts: Options) -> None:
        self.left = opts.retry
        self._fixed_delay = opts.retry_delay is not None
        self._delay = opts.retry_delay if opts.retry_delay is not None else FIRST_RETRY_DELAY
        self._max_time = opts.retry_max_time
        self._start = trio.current_time()

    def wait_for(self, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None if no retry is allowed."""
        if self.left <= 0:
            return None
        wait = retry_after if retry_after is not None else self._delay
        if self._max_time and trio.current_time() - self._start + wait > self._max_time:
            return None
        return wait

    def spend(self) -> None:
        self.left -= 1
        if not self._fixed_delay:  # curl doubles the delay unless --retry-delay fixes it
            self._delay = min(self._delay * 2, MAX_RETRY_DELAY)


async def _attempt_with_retries(ctx: Context, job: Job, url: ParsedUrl, sink: Sink) -> Outcome:
    """Pipeline step 2, the retry loop: attempt the transfer, retrying transient failures (and
    retryable HTTP statuses) as ``--retry*`` allow; the abandoned attempt's output is discarded."""
    budget = RetryBudget(ctx.opts)
    while True:
        outcome = Outcome(url_text=job.url_text, filename=sink.path or "")
        outcome.retries = ctx.opts.retry - budget.left
        await _attempt(ctx, url, sink, outcome, budget)
        reason: str | None = outcome.retry_reason
        if reason is not None:  # an HTTP status; _exchange already consulted the budget
            wait = outcome.retry_wait
        else:
            reason, wait = _retry_reason(outcome.exit_code), budget.wait_for()
        if reason is None or wait is None:
            return outcome
        ctx.reporter.warn(
            f"Problem : {reason}. Will retry in {wait:g} second{'' if wait == 1 else 's'}. "
            f"{budget.left} retr{'ies' if budget.left > 1 else 'y'} left."
        )
        await trio.sleep(wait)
        budget.spend()
        sink.restart()


def _retry_reason(exit_code: int) -> str | None:
    """curl's transient errors: timeouts (resolving included) and connection failures."""
    if exit_code in (EXIT_RESOLVE, EXIT_TIMEOUT):
        return "timeout"
    if exit_code == EXIT_CONNECT:
        return "connection failure"
    return None


async def _attempt(ctx: Context, url: ParsedUrl, sink: Sink, outcome: Outcome, budget: RetryBudget) -> None:
    """Pipeline step 3, one attempt: connect, exchange, body, under ``--max-time``.

    Results and failures are recorded in ``outcome``; the connection is kept for reuse only if
    the exchange succeeded and left it reusable, and closed otherwise.
    """
    opts = ctx.opts
    start = trio.current_time()
    connection: Connection | None = None
    reusable = False
    try:
        with trio.fail_after(opts.max_time or math.inf):
            connect_timeout = opts.connect_timeout or DEFAULT_CONNECT_TIMEOUT
            connection = await ctx.connector.acquire(url, connect_timeout, ctx.reporter)
            reusable = await _exchange(ctx, url, connection, sink, outcome, budget)
    except trio.TooSlowError:
        outcome.fail(EXIT_TIMEOUT, _timeout_message(outcome, trio.current_time() - start))
    except TransportError as exc:
        outcome.fail(exc.exit_code, exc.message)
    except OutputError as exc:
        outcome.fail(EXIT_WRITE_ERROR, str(exc))
    finally:
        outcome.elapsed = trio.current_time() - start
        if connection is not None:
            outcome.stats = connection.stats()
            if reusable and outcome.exit_code == 0:
                ctx.reporter.info(f"Connection to host {url.host} left intact")
                ctx.connector.release(url, connection)
            else:
                ctx.reporter.info("Closing connection")
                await close_quietly(connection)


def _timeout_message(outcome: Outcome, elapsed: float) -> str:
    ms = int(elapsed * 1000)
    if outcome.expected_size is not None:
        received = f"{outcome.size_download} out of {outcome.expected_size} bytes"
    else:
        received = f"{outcome.size_download} bytes"
    return f"Operation timed out after {ms} milliseconds with {received} received"


async def _exchange(
    ctx: Context,
    url: ParsedUrl,
    connection: Connection,
    sink: Sink,
    outcome: Outcome,
    budget: RetryBudget,
) -> bool:
    """Pipeline step 3, exchange: send the request, take the head, decide retry (retryable status)
    or ``-f`` failure before anything is written, then copy the body; True if reusable."""
    opts = ctx.opts
    method = "HEAD" if opts.head else "GET"
    headers = build_request_headers(url, opts)
    ctx.reporter.request(method, url.target, headers)
    response = await connection.request(method, url.target, headers)
    _record_response(outcome, response)
    ctx.reporter.response(response.raw_headers)
    if response.status in RETRYABLE_STATUSES:
        # Decide before writing anything, so a retried error page never reaches the output.
        outcome.retry_wait = budget.wait_for(_parse_retry_after(response.header("retry-after")))
        if outcome.retry_wait is not None:
            outcome.retry_reason = "HTTP error"
            return False
    if opts.fail and response.status >= 400:
        outcome.fail(EXIT_HTTP_ERROR, f"The requested URL returned error: {response.status}")
        return False
    if opts.include or opts.head:
        sink.write(response.raw_headers)
    await _copy_body(ctx, response, sink, outcome)
    return True


def _record_response(outcome: Outcome, response: Response) -> None:
    outcome.status = response.status
    outcome.http_version = response.http_version
    outcome.headers = response.headers
    outcome.expected_size = None if response.status == 304 else response.content_length


async def _copy_body(ctx: Context, response: Response, sink: Sink, outcome: Outcome) -> None:
    """Pipeline step 3, body: stream it into the sink at ``--limit-rate``, drawing progress."""
    limiter = RateLimiter(ctx.opts.limit_rate)
    progress = Progress(ctx.stderr, ctx.opts.progress_bar) if ctx.show_progress else None
    total = None if ctx.opts.head else outcome.expected_size
    async for chunk in response.body:
        sink.write(chunk)
        outcome.size_download += len(chunk)
        if progress is not None:
            progress.update(outcome.size_download, total)
        await limiter.pace(outcome.size_download)
    if progress is not None:
        progress.update(outcome.size_download, total, final=True)


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (curl ignores the HTTP-date form too)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _emit_write_out(ctx: Context, job: Job, outcome: Outcome) -> None:
    assert ctx.write_out is not None
    pieces, unknown = render_write_out(ctx.write_out, outcome)
    for name in unknown:
        ctx.reporter.write(f"{PROG}: unknown --write-out variable: '{name}'\n")
    for stream, text in pieces:
        if stream == "stderr":
            ctx.reporter.write(text)
            continue
        try:
            job.stdout.write(text.encode("utf-8"))
            job.stdout.flush()
        except OSError:
            pass  # like curl, a failing -w write does not fail the transfer


async def run_sequential(ctx: Context, jobs: list[Job]) -> list[Outcome]:
    return [await run_job(ctx, job) for job in jobs]


async def run_parallel(ctx: Context, jobs: list[Job], stdout: BinaryIO) -> list[Outcome]:
    """Run up to ``--parallel-max`` jobs at once; buffered stdout output is written in URL
    order as soon as every earlier URL has finished."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    limiter = trio.CapacityLimiter(ctx.opts.parallel_max)
    flushed = 0

    def flush_finished_prefix() -> None:
        nonlocal flushed
        while flushed < len(jobs) and (done := outcomes[flushed]) is not None:
            buffer = cast(io.BytesIO, jobs[flushed].stdout)
            try:
                stdout.write(buffer.getvalue())
                stdout.flush()
            except OSError:
                done.fail(EXIT_WRITE_ERROR, "Failure writing output to destination")
                ctx.reporter.error(done.exit_code, done.error)
            buffer.close()
            flushed += 1

    async def run_one(index: int) -> None:
        async with limiter:
            outcomes[index] = await run_job(ctx, jobs[index])
        flush_finished_prefix()

    async with trio.open_nursery() as nursery:
        for index in range(len(jobs)):
            nursery.start_soon(run_one, index)
    return [outcome for outcome in outcomes if outcome is not None]


def make_jobs(opts: Options, stdout: BinaryIO, reporter: Reporter) -> list[Job]:
    """Pair URLs with -o/-O outputs in order; the rest go to stdout."""
    if len(opts.outputs) > len(opts.urls):
        reporter.warn("Got more output options than URLs")
    jobs = []
    for index, url in enumerate(opts.urls):
        spec = opts.outputs[index] if index < len(opts.outputs) else "-"
        output = None if spec == "-" else spec
        job_stdout = io.BytesIO() if opts.parallel else stdout
        jobs.append(Job(url, output, remote_name=spec is None, stdout=job_stdout))
    return jobs
