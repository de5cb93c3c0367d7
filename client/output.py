"""Everything ``tcurl`` writes besides requests: the body sink, diagnostics, progress, ``-w``.

:class:`Sink` writes one transfer's body (a file created on the first write, or stdout);
:class:`Reporter` prints curl-style errors, warnings and the ``-v`` trace; :class:`Progress` draws
the meter or the ``-#`` bar; :func:`render_write_out` expands a ``-w`` format over an
:class:`Outcome`, the record of one transfer.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import trio

from .api import TransferStats, header_value
from .options import PROG, Options

__all__ = [
    "Outcome",
    "OutputError",
    "Progress",
    "Reporter",
    "Sink",
    "format_stats",
    "load_write_out",
    "render_write_out",
]


class Reporter:
    """curl-style diagnostics on stderr: errors, warnings and the ``-v`` trace."""

    def __init__(self, stderr: TextIO, opts: Options) -> None:
        self._stderr = stderr
        self._verbose = opts.verbose
        self._warnings = not opts.silent
        self._errors = not opts.silent or opts.show_error

    def write(self, text: str) -> None:
        try:
            self._stderr.write(text)
            self._stderr.flush()
        except (OSError, ValueError):
            pass  # nowhere left to report to

    def error(self, exit_code: int, message: str) -> None:
        if self._errors:
            self.write(f"{PROG}: ({exit_code}) {message}\n")

    def warn(self, message: str) -> None:
        if self._warnings:
            self.write(f"Warning: {message}\n")

    def info(self, message: str) -> None:
        if self._verbose:
            self.write(f"* {message}\n")

    def request(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        if self._verbose:
            lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), ""]
            self.write("".join(f"> {line}\n" for line in lines))

    def response(self, raw_headers: bytes) -> None:
        if self._verbose:
            lines = raw_headers.decode("latin-1").split("\r\n")[:-1]
            self.write("".join(f"< {line}\n" for line in lines))

    def transport_stats(self, stats: TransferStats) -> None:
        self.info(format_stats(stats))


def format_stats(stats: TransferStats) -> str:
    """``Transport: trickles, RTT 1.2 ms, window 40, retransmissions 0, continuations ...``."""
    if stats.rtt_s is None:
        rtt = "-"
    else:
        # Loopback RTTs are tens of microseconds; keep them visible instead of "0.0 ms".
        ms = stats.rtt_s * 1000
        rtt = f"{ms:.1f} ms" if ms >= 1 else f"{ms:.3f} ms"
    window = "-" if stats.cwnd is None else str(stats.cwnd)
    return (
        f"Transport: {stats.transport}, RTT {rtt}, window {window}, "
        f"retransmissions {stats.retransmissions}, "
        f"continuations received {stats.continuations}"
    )


class Progress:
    """curl's progress meter (or the ``-#`` bar), redrawn at most four times a second."""

    _HEADER = (
        "  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current\n"
        "                                 Dload  Upload   Total   Spent    Left  Speed\n"
    )

    def __init__(self, stderr: TextIO, bar: bool) -> None:
        self._stderr = stderr
        self._bar = bar
        self._start = trio.current_time()
        self._last_draw = -math.inf
        if not bar:
            self._emit(self._HEADER)

    def update(self, received: int, total: int | None, *, final: bool = False) -> None:
        now = trio.current_time()
        if not final and now - self._last_draw < 0.25:
            return
        self._last_draw = now
        spent = now - self._start
        line = self._bar_line(received, total) if self._bar else self._meter_line(received, total, spent)
        self._emit("\r" + line + ("\n" if final else ""))

    def _bar_line(self, received: int, total: int | None) -> str:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        if not total:
            return f"{'#' * min(received // 65536, width - 20)} {received} bytes"
        fraction = min(received / total, 1.0)
        hashes = int((width - 7) * fraction)
        return "#" * hashes + " " * (width - 7 - hashes) + f"{fraction * 100:6.1f}%"

    @staticmethod
    def _meter_line(received: int, total: int | None, spent: float) -> str:
        speed = int(received / spent) if spent > 0 else 0
        percent = int(received * 100 / total) if total else 0
        size = total if total else received
        left = (total - received) / speed if total and speed else None
        return (
            f"{percent:3d} {_size5(size)}  {percent:3d} {_size5(received)}    0     0  "
            f"{_size5(speed)}      0 {_hms(spent + left if left is not None else None)} "
            f"{_hms(spent)} {_hms(left)} {_size5(speed)}"
        )

    def _emit(self, text: str) -> None:
        try:
            self._stderr.write(text)
            self._stderr.flush()
        except (OSError, ValueError):
            pass


def _size5(value: int) -> str:
    """curl's five-character size column: 12345, 1234k, 12.3M, 1234M, 12.3G..."""
    if value < 100_000:
        return f"{value:5d}"
    for unit, power in (("k", 1), ("M", 2), ("G", 3), ("T", 4)):
        scaled = value / 1024**power
        if scaled < 100 and unit != "k":
            return f"{scaled:4.1f}{unit}"
        if scaled < 10_000:
            return f"{int(scaled):4d}{unit}"
    return f"{value // 1024**5:4d}P"


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class OutputError(Exception):
    """Writing the body failed (curl exit code 23)."""


class Sink:
    """One transfer's body output: a stream, or a file created on the first write (as curl
    does, so a failed ``-f`` transfer leaves no file behind)."""

    def __init__(self, stream: BinaryIO | None = None, path: str | None = None) -> None:
        self.path = path
        self._stream = stream
        self._file: BinaryIO | None = None

    @property
    def is_stdout(self) -> bool:
        return self.path is None

    def write(self, data: bytes) -> None:
        if not data:
            return
        target = self._stream if self.path is None else self._open()
        assert target is not None
        try:
            target.write(data)
        except OSError:
            raise OutputError("Failure writing output to destination")

    def restart(self) -> None:
        """Discard what an abandoned attempt wrote (files only; stdout cannot be undone)."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def close(self, *, create: bool) -> None:
        """Flush and close; with ``create``, make sure even an empty download exists."""
        try:
            if create and self.path is not None:
                self._open()
            if self._file is not None:
                self._file.close()
            elif self._stream is not None:
                self._stream.flush()
        except OSError:
            raise OutputError("Failure writing output to destination")
        finally:
            self._file = None

    def _open(self) -> BinaryIO:
        if self._file is None:
            assert self.path is not None
            try:
                self._file = open(self.path, "wb")  # noqa: SIM115 - kept open across writes
            except OSError as exc:
                raise OutputError(f"Failed to open the file {self.path}: {exc.strerror}")
        return self._file


@dataclass
class Outcome:
    """Everything known about one transfer, for error reporting and ``-w``."""

    url_text: str
    exit_code: int = 0
    error: str = ""
    status: int = 0
    http_version: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    size_download: int = 0
    expected_size: int | None = None
    elapsed: float = 0.0
    retries: int = 0
    filename: str = ""
    stats: TransferStats | None = None
    retry_reason: str | None = None  # set when an HTTP status asks for a retry
    retry_wait: float | None = None

    def fail(self, exit_code: int, message: str) -> None:
        self.exit_code, self.error = exit_code, message


_WRITE_OUT_TOKEN = re.compile(r"%%|%\{([A-Za-z_]+)\}|%header\{([^}]*)\}|\\([rnt])")
_ESCAPES = {"r": "\r", "n": "\n", "t": "\t"}


def render_write_out(fmt: str, outcome: Outcome) -> tuple[list[tuple[str, str]], list[str]]:
    """Expand a ``-w`` format into (stream, text) pieces, stream ``stdout``/``stderr``.

    Returns the pieces and the names of unknown variables (curl warns about those).
    """
    variables = _write_out_variables(outcome)
    pieces: list[tuple[str, str]] = []
    unknown: list[str] = []
    stream = "stdout"
    position = 0
    for token in _WRITE_OUT_TOKEN.finditer(fmt):
        pieces.append((stream, fmt[position : token.start()]))
        position = token.end()
        variable, header, escape = token.groups()
        if escape is not None:
            pieces.append((stream, _ESCAPES[escape]))
        elif header is not None:
            pieces.append((stream, header_value(outcome.headers, header) or ""))
        elif variable in ("stdout", "stderr"):
            stream = variable
        elif variable is not None:
            if variable in variables:
                pieces.append((stream, variables[variable]))
            else:
                unknown.append(variable)
        else:
            pieces.append((stream, "%"))
    pieces.append((stream, fmt[position:]))
    return [piece for piece in pieces if piece[1]], unknown


def _write_out_variables(outcome: Outcome) -> dict[str, str]:
    speed = int(outcome.size_download / outcome.elapsed) if outcome.elapsed > 0 else 0
    stats = outcome.stats
    return {
        "content_type": header_value(outcome.headers, "content-type") or "",
        "errormsg": outcome.error,
        "exitcode": str(outcome.exit_code),
        "filename_effective": outcome.filename,
        "http_code": f"{outcome.status:03d}",
        "http_version": outcome.http_version or "0",
        "num_retransmits": str(stats.retransmissions if stats else 0),
        "num_retries": str(outcome.retries),
        "response_code": f"{outcome.status:03d}",
        "size_download": str(outcome.size_download),
        "speed_download": str(speed),
        "time_total": f"{outcome.elapsed:.6f}",
        "transport": stats.transport if stats else "",
        "url": outcome.url_text,
        "url_effective": outcome.url_text,
    }


def load_write_out(value: str, reporter: Reporter) -> str:
    """Resolve ``-w @file`` / ``-w @-``; like curl, an unreadable file only warns."""
    if not value.startswith("@"):
        return value
    source = value[1:]
    try:
        if source == "-":
            return sys.stdin.read()
        with open(source, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        reporter.warn(f"Failed to read {source}")
        return ""
