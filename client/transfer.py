"""``tcurl``: a curl-compatible HTTP client that speaks Trickles over UDP, falling back to TCP.

Only ``http://`` URLs are supported.  Options, messages and exit codes follow curl:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     unsupported protocol (``https://``, ``ftp://``...)
2     command-line usage error (unknown option, missing or bad argument, no URL)
3     malformed URL
6/7   could not resolve host / could not connect
8     weird server reply
18    partial transfer
22    HTTP status >= 400 with ``-f``
23    write error (``-o`` file cannot be created or written, stdout closed)
28    timeout (``-m``, ``--connect-timeout``)
43    internal error: a tcurl bug.  curl's code for "bad function argument"; used
      instead of 2 so that scripts can tell a tcurl bug from a usage mistake.
52    empty reply from server;  55 send failure;  56 receive failure
====  ==========================================================================

With several URLs the exit code is that of the last failed transfer, like curl.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO, cast

import trio

from trickles.client.tcp_transport import TcpTransport
from trickles.client.transport import (
    Connection,
    NotTrickles,
    Response,
    TransferStats,
    Transport,
    TransportError,
    header_value,
)

__all__ = [
    "Options",
    "ParsedUrl",
    "UrlError",
    "UsageError",
    "main",
    "parse_args",
    "parse_url",
    "render_write_out",
    "run",
]

VERSION = "0.1"
PROG = "tcurl"
DEFAULT_USER_AGENT = f"{PROG}/{VERSION}"
# curl >= 8.10 saves "-O" downloads whose URL has no file name under this name.
DEFAULT_REMOTE_NAME = "curl_response"
DEFAULT_CONNECT_TIMEOUT = 300.0  # curl's built-in connect timeout
DEFAULT_PARALLEL_MAX = 50
MAX_PARALLEL = 300  # curl's upper bound for --parallel-max
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 600.0  # curl caps the exponential backoff at ten minutes
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TRICKLES_MODULE = "trickles.client.trickles_transport"

EXIT_UNSUPPORTED_PROTOCOL = 1
EXIT_USAGE = 2
EXIT_MALFORMED_URL = 3
EXIT_HTTP_ERROR = 22
EXIT_WRITE_ERROR = 23
EXIT_TIMEOUT = 28
EXIT_INTERNAL = 43


# --------------------------------------------------------------------------- options


class UsageError(Exception):
    """A command-line mistake (curl exit code 2)."""


@dataclass
class Options:
    """The parsed command line.

    ``outputs`` holds one entry per ``-o``/``-O`` in order; ``None`` stands for ``-O``.
    ``headers`` holds ``-H`` values as (name, value), value ``None`` meaning "remove".
    """

    urls: list[str] = field(default_factory=list)
    outputs: list[str | None] = field(default_factory=list)
    headers: list[tuple[str, str | None]] = field(default_factory=list)
    silent: bool = False
    show_error: bool = False
    verbose: bool = False
    include: bool = False
    head: bool = False
    fail: bool = False
    byte_range: str | None = None
    write_out: str | None = None
    parallel: bool = False
    parallel_max: int = DEFAULT_PARALLEL_MAX
    max_time: float | None = None
    connect_timeout: float | None = None
    retry: int = 0
    retry_delay: float | None = None
    retry_max_time: float | None = None
    limit_rate: float | None = None
    user_agent: str = DEFAULT_USER_AGENT
    progress_bar: bool = False
    no_progress_meter: bool = False
    tcp: bool = False
    path_as_is: bool = False
    help: bool = False
    version: bool = False


_SHORT_OPTIONS = {
    "#": "progress-bar",
    "A": "user-agent",
    "H": "header",
    "I": "head",
    "O": "remote-name",
    "S": "show-error",
    "V": "version",
    "Z": "parallel",
    "f": "fail",
    "h": "help",
    "i": "include",
    "m": "max-time",
    "o": "output",
    "r": "range",
    "s": "silent",
    "v": "verbose",
    "w": "write-out",
}
_VALUE_OPTIONS = frozenset(
    {
        "connect-timeout",
        "header",
        "limit-rate",
        "max-time",
        "output",
        "parallel-max",
        "range",
        "retry",
        "retry-delay",
        "retry-max-time",
        "url",
        "user-agent",
        "write-out",
    }
)
_FLAG_OPTIONS = frozenset(
    {
        "fail",
        "head",
        "help",
        "include",
        "no-progress-meter",
        "parallel",
        "path-as-is",
        "progress-bar",
        "remote-name",
        "show-error",
        "silent",
        "tcp",
        "verbose",
        "version",
    }
)
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RATE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_args(argv: Sequence[str]) -> Options:
    """Parse a curl-style command line (short options cluster: ``-sSfo out``, ``-ofile``)."""
    opts = Options()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.urls.extend(args[i:])
            break
        if arg.startswith("--"):
            name = arg[2:]
            if name in _FLAG_OPTIONS:
                _apply_flag(opts, name)
            elif name in _VALUE_OPTIONS:
                if i >= len(args):
                    raise UsageError(f"option {arg}: requires parameter")
                _apply_value(opts, name, arg, args[i])
                i += 1
            else:
                raise UsageError(f"option {arg}: is unknown")
        elif arg.startswith("-") and len(arg) > 1:
            i = _parse_short_cluster(opts, arg, args, i)
        else:
            opts.urls.append(arg)
        if opts.help or opts.version:
            break  # like curl, -h and -V act at once and ignore the rest
    return opts


def _parse_short_cluster(opts: Options, arg: str, args: list[str], i: int) -> int:
    """Apply every letter of ``-abc``; return the index of the next unread argument."""
    for pos in range(1, len(arg)):
        name = _SHORT_OPTIONS.get(arg[pos])
        if name is None:
            raise UsageError(f"option {arg}: is unknown")
        if name not in _VALUE_OPTIONS:
            _apply_flag(opts, name)
            continue
        # A value option ends the cluster: the rest of it is the value, else the next arg.
        if pos + 1 < len(arg):
            _apply_value(opts, name, arg, arg[pos + 1 :])
            return i
        if i >= len(args):
            raise UsageError(f"option {arg}: requires parameter")
        _apply_value(opts, name, arg, args[i])
        return i + 1
    return i


def _apply_flag(opts: Options, name: str) -> None:
    if name == "remote-name":
        opts.outputs.append(None)
    else:
        setattr(opts, name.replace("-", "_"), True)


def _apply_value(opts: Options, name: str, shown: str, value: str) -> None:
    match name:
        case "output":
            opts.outputs.append(value)
        case "header":
            parsed = _parse_header(value)
            if parsed is not None:
                opts.headers.append(parsed)
        case "range":
            opts.byte_range = value
        case "write-out":
            opts.write_out = value
        case "user-agent":
            if "\r" in value or "\n" in value:
                raise UsageError(f"option {shown}: bad user agent")
            opts.user_agent = value
        case "url":
            opts.urls.append(value)
        case "max-time":
            opts.max_time = _parse_seconds(shown, value)
        case "connect-timeout":
            opts.connect_timeout = _parse_seconds(shown, value)
        case "retry-delay":
            opts.retry_delay = _parse_seconds(shown, value)
        case "retry-max-time":
            opts.retry_max_time = _parse_seconds(shown, value)
        case "retry":
            opts.retry = _parse_count(shown, value)
        case "parallel-max":
            count = _parse_count(shown, value)
            opts.parallel_max = min(count, MAX_PARALLEL) if count >= 1 else DEFAULT_PARALLEL_MAX
        case "limit-rate":
            opts.limit_rate = _parse_rate(shown, value)
        case _:  # pragma: no cover - the option tables and this match are kept in sync
            raise AssertionError(name)


def _parse_seconds(shown: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"option {shown}: expected a proper numerical parameter")
    if seconds < 0 or not math.isfinite(seconds):
        raise UsageError(f"option {shown}: expected a positive numerical parameter")
    return seconds


def _parse_count(shown: str, value: str) -> int:
    if not value.strip().lstrip("-").isdigit():
        raise UsageError(f"option {shown}: expected a proper numerical parameter")
    count = int(value)
    if count < 0:
        raise UsageError(f"option {shown}: expected a positive numerical parameter")
    return count


def _parse_rate(shown: str, value: str) -> float:
    """``200k`` -> 204800 bytes/s (curl's units are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]?)\s*", value)
    if match is None:
        raise UsageError(f"option {shown}: expected a proper numerical parameter")
    unit = match.group(2).lower()
    if unit not in _RATE_UNITS:
        raise UsageError(f"option {shown}: unsupported rate unit. Use G, M, K or B!")
    return float(match.group(1)) * _RATE_UNITS[unit]


def _parse_header(value: str) -> tuple[str, str | None] | None:
    """curl's -H forms: ``Name: v`` sets, ``Name:`` removes, ``Name;`` sends it empty."""
    if "\r" in value or "\n" in value or "\0" in value:
        # curl would send these bytes as they are; h11 refuses to, so reject them up front.
        raise UsageError(f"option -H: bad header '{value}'")
    colon, semicolon = value.find(":"), value.find(";")
    if colon > 0 and (semicolon < 0 or colon < semicolon):
        name, rest = value[:colon], value[colon + 1 :].strip()
        header: tuple[str, str | None] = (name, rest or None)
    elif semicolon > 0 and not value[semicolon + 1 :].strip():
        name = value[:semicolon]
        header = (name, "")
    else:
        return None  # curl silently ignores a header without a colon
    if not _TOKEN_RE.match(name):
        raise UsageError(f"option -H: bad header name '{name}'")
    return header


# --------------------------------------------------------------------------- URLs


class UrlError(Exception):
    """A URL tcurl cannot use: exit code 1 (unsupported protocol) or 3 (malformed)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


@dataclass(frozen=True)
class ParsedUrl:
    """An ``http://`` URL split for the transport and the request line."""

    text: str
    host: str  # as passed to the transport (IPv6 without brackets)
    port: int
    target: str  # path and query, percent-encoded where needed
    host_header: str
    userinfo: str | None = None

    @property
    def file_name(self) -> str:
        """The name ``-O`` saves to: the last path segment, or curl's fallback name."""
        name = self.target.split("?", 1)[0].rsplit("/", 1)[-1]
        return DEFAULT_REMOTE_NAME if name in ("", ".", "..") else name


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9._~\-%]+$")
_BAD_URL = "URL rejected: Malformed input to a URL function"


def parse_url(text: str, *, path_as_is: bool = False) -> ParsedUrl:
    """Parse ``[http://]HOST[:PORT][/PATH][?QUERY]`` like curl (no scheme means http)."""
    if not text or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise UrlError(EXIT_MALFORMED_URL, _BAD_URL)
    rest = text
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match is not None:
        scheme = scheme_match.group(1).lower()
        if scheme != "http":
            raise UrlError(EXIT_UNSUPPORTED_PROTOCOL, f'Protocol "{scheme}" not supported')
        rest = text[scheme_match.end() :]
    end = len(rest)
    for separator in "/?#":
        found = rest.find(separator)
        if found >= 0:
            end = min(end, found)
    authority, target = rest[:end], rest[end:].split("#", 1)[0]
    userinfo, _, hostport = authority.rpartition("@")
    host, port = _split_host_port(hostport)
    if not target.startswith("/"):
        target = "/" + target
    path, question, query = target.partition("?")
    if not path_as_is:
        path = _remove_dot_segments(path)
    target = _percent_encode_non_ascii(path + question + query)
    bracketed = f"[{host}]" if ":" in host else host
    return ParsedUrl(
        text=text,
        host=host,
        port=port,
        target=target,
        host_header=bracketed if port == 80 else f"{bracketed}:{port}",
        userinfo=userinfo or None,
    )


def _split_host_port(hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad IPv6 address")
        host, after = hostport[1:close], hostport[close + 1 :]
        if after and not after.startswith(":"):
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad IPv6 address")
        port_text = after[1:]
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad IPv6 address")
    else:
        host, _, port_text = hostport.partition(":")
        if not host:
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: No host part in the URL")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad hostname")
        if not _HOSTNAME_RE.match(host):
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad hostname")
    if not port_text:
        return host, 80
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UrlError(
            EXIT_MALFORMED_URL,
            "URL rejected: Port number was not a decimal number between 0 and 65535",
        )
    return host, int(port_text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, which curl applies unless --path-as-is."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    result = "/" + "/".join(kept)
    if segments and segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"
    return result


def _percent_encode_non_ascii(target: str) -> str:
    return "".join(
        ch if ch.isascii() else "".join(f"%{byte:02X}" for byte in ch.encode("utf-8"))
        for ch in target
    )


def build_request_headers(url: ParsedUrl, opts: Options) -> list[tuple[str, str]]:
    """curl's default request headers; a -H of the same name replaces or removes one."""
    defaults: list[tuple[str, str]] = [("Host", url.host_header)]
    if url.userinfo is not None:
        token = base64.b64encode(url.userinfo.encode("utf-8")).decode("ascii")
        defaults.append(("Authorization", f"Basic {token}"))
    if opts.byte_range is not None:
        defaults.append(("Range", f"bytes={opts.byte_range}"))
    if opts.user_agent:
        defaults.append(("User-Agent", opts.user_agent))
    defaults.append(("Accept", "*/*"))
    # h11 cannot send a request without Host, so "-H Host:" keeps the default one.
    overridden = {
        name.lower() for name, value in opts.headers if value is not None or name.lower() != "host"
    }
    headers = [(name, value) for name, value in defaults if name.lower() not in overridden]
    headers += [(name, value) for name, value in opts.headers if value is not None]
    return headers


# --------------------------------------------------------------------------- reporting


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
        line = self._bar_line(received, total) if self._bar else self._meter_line(
            received, total, spent
        )
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


# --------------------------------------------------------------------------- output


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


# --------------------------------------------------------------------------- write-out


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


# --------------------------------------------------------------------------- transports


def load_trickles_transport(reporter: Reporter) -> Transport | None:
    """Instantiate the Trickles transport, or None if it is not available (TCP then)."""
    try:
        module = importlib.import_module(TRICKLES_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != TRICKLES_MODULE:
            reporter.warn(f"Trickles transport unusable ({exc}); using TCP")
        else:
            reporter.info("Trickles transport not installed; using TCP")
        return None
    except ImportError as exc:
        reporter.warn(f"Trickles transport unusable ({exc}); using TCP")
        return None
    return cast(Transport, module.TricklesTransport())


class Connector:
    """Opens connections (Trickles first, TCP fallback) and keeps idle ones for reuse."""

    def __init__(self, trickles: Transport | None, tcp: Transport) -> None:
        self._trickles = trickles
        self._tcp = tcp
        self._tcp_only: set[tuple[str, int]] = set()  # hosts that answered NotTrickles
        self._idle: dict[tuple[str, int], list[Connection]] = {}

    async def acquire(self, url: ParsedUrl, timeout: float, reporter: Reporter) -> Connection:
        key = (url.host, url.port)
        idle = self._idle.get(key)
        if idle:
            reporter.info(f"Re-using existing connection with host {url.host}")
            return idle.pop()
        deadline = trio.current_time() + timeout
        if self._trickles is not None and key not in self._tcp_only:
            reporter.info(f"  Trying {url.host}:{url.port} ({self._trickles.name})...")
            try:
                connection = await self._trickles.connect(url.host, url.port, timeout=timeout)
            except NotTrickles as exc:
                self._tcp_only.add(key)
                reporter.info(f"{exc.message}; falling back to TCP")
            else:
                reporter.info(f"Connected to {url.host} port {url.port} ({self._trickles.name})")
                return connection
        reporter.info(f"  Trying {url.host}:{url.port} ({self._tcp.name})...")
        remaining = max(deadline - trio.current_time(), 0.0)
        connection = await self._tcp.connect(url.host, url.port, timeout=remaining)
        reporter.info(f"Connected to {url.host} port {url.port} ({self._tcp.name})")
        return connection

    def release(self, url: ParsedUrl, connection: Connection) -> None:
        self._idle.setdefault((url.host, url.port), []).append(connection)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await _close_quietly(connection)


async def _close_quietly(connection: Connection) -> None:
    """Close even while cancelled (after a timeout), but never hang or raise doing so."""
    with trio.move_on_after(1.0) as scope:
        scope.shield = True
        with contextlib.suppress(TransportError, OSError, trio.BrokenResourceError):
            await connection.aclose()


# --------------------------------------------------------------------------- transfers


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
    """Run one URL to completion: attempts, retries, error line, file creation, ``-w``."""
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
    """Attempt the transfer, retrying transient failures as ``--retry*`` allow."""
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
    if exit_code in (6, EXIT_TIMEOUT):
        return "timeout"
    if exit_code == 7:
        return "connection failure"
    return None


async def _attempt(
    ctx: Context, url: ParsedUrl, sink: Sink, outcome: Outcome, budget: RetryBudget
) -> None:
    """One try at the transfer; results (and failures) are recorded in ``outcome``."""
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
                await _close_quietly(connection)


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
    """Send the request and copy the response to ``sink``; True if the connection is reusable."""
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


# --------------------------------------------------------------------------- entry point


HELP = f"""Usage: {PROG} [options...] <url>...
 -#, --progress-bar         Display transfer progress as a bar
 -A, --user-agent <name>    Send User-Agent <name> to server (default {DEFAULT_USER_AGENT})
     --connect-timeout <s>  Maximum time allowed to connect
 -f, --fail                 Fail fast with no output on HTTP errors
 -H, --header <header>      Pass custom header to server
 -h, --help                 Get help for commands
 -I, --head                 Show document info only
 -i, --include              Include response headers in output
     --limit-rate <speed>   Limit transfer speed to RATE (k, M, G suffixes)
 -m, --max-time <seconds>   Maximum time allowed for each transfer
     --no-progress-meter    Do not show the progress meter
 -o, --output <file>        Write to file instead of stdout
 -O, --remote-name          Write output to a file named as the remote file
 -Z, --parallel             Perform transfers in parallel
     --parallel-max <num>   Maximum concurrency for parallel transfers (default 50)
     --path-as-is           Do not squash .. sequences in URL path
 -r, --range <range>        Retrieve only the bytes within RANGE
     --retry <num>          Retry request if transient problems occur
     --retry-delay <s>      Wait time between retries (disables backoff)
     --retry-max-time <s>   Retry only within this period
 -S, --show-error           Show error even when -s is used
 -s, --silent               Silent mode
     --tcp                  Use plain TCP instead of Trickles over UDP
     --url <url>            URL to work with
 -v, --verbose              Make the operation more talkative
 -V, --version              Show version number and quit
 -w, --write-out <format>   Output FORMAT after completion
"""


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
        _print_stderr(
            f"{PROG}: ({EXIT_INTERNAL}) internal error: {type(exc).__name__}: {exc}\n", stderr
        )
        return EXIT_INTERNAL


def _run_command(argv: list[str], stdout: BinaryIO, stderr: TextIO) -> int:
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        _print_stderr(
            f"{PROG}: {exc}\n{PROG}: try '{PROG} --help' for more information\n", stderr
        )
        return EXIT_USAGE
    if opts.help:
        stdout.write(HELP.encode())
        return 0
    if opts.version:
        stdout.write(f"{PROG} {VERSION} (trickles)\nProtocols: http\nFeatures: trickles tcp\n"
                     .encode())
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
    reporter = Reporter(stderr, opts)
    trickles = None if opts.tcp else load_trickles_transport(reporter)
    connector = Connector(trickles, TcpTransport())
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
