"""``tcurl``'s command line: the options curl has and we support, parsed the way curl parses them.

Short options cluster (``-sSfo out``, ``-ofile``); ``-h``/``-V`` act at once; a mistake raises
:class:`UsageError` (exit code 2).  ``HELP`` lists every option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["HELP", "PROG", "VERSION", "Options", "UsageError", "parse_args"]

VERSION = "0.1"
PROG = "tcurl"
DEFAULT_USER_AGENT = f"{PROG}/{VERSION}"
DEFAULT_PARALLEL_MAX = 50
MAX_PARALLEL = 300  # curl's upper bound for --parallel-max


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
    """Store the value of option ``name`` (shown as ``shown`` in errors), checked as curl does."""
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
