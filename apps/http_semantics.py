"""HTTP semantics a static server needs (RFC 9110/9112), as pure functions of strings and numbers.

Status reasons, media types by extension, IMF-fixdate dates, entity-tag and If-Range comparison,
Range parsing, and the decoding of a request-target into path segments.  Nothing here touches the
file system or a clock; the site (`static.py`) and the response layout (`response_plan.py`) use it.
"""

from __future__ import annotations

import re
import time
from calendar import timegm
from email.utils import parsedate_tz
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "FIXED_STATUSES",
    "HTML",
    "MAX_DATE",
    "REASONS",
    "SERVER",
    "BadTarget",
    "clamp_date",
    "content_type",
    "etag_matches",
    "http_date",
    "if_range_allows",
    "parse_http_date",
    "parse_ranges",
    "mtime_s",
    "quote_segment",
    "split_target",
]

SERVER = "trickles"

REASONS: dict[int, str] = {
    200: "OK",
    206: "Partial Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
#: Statuses answered with a fixed HTML body (`StaticSite.error_plan`).
FIXED_STATUSES = frozenset({400, 403, 404, 405, 408, 413, 414, 431, 500, 501, 503, 505})

HTML = "text/html; charset=utf-8"
_TYPES: dict[str, str] = {
    "html": HTML,
    "htm": HTML,
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "mjs": "text/javascript; charset=utf-8",
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "xml": "application/xml",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "svg": "image/svg+xml",
    "webp": "image/webp",
    "avif": "image/avif",
    "ico": "image/x-icon",
    "pdf": "application/pdf",
    "wasm": "application/wasm",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "woff": "font/woff",
    "woff2": "font/woff2",
    "zip": "application/zip",
    "gz": "application/gzip",
    "tar": "application/x-tar",
}
_DEFAULT_TYPE = "application/octet-stream"

MAX_DATE = 253402300799  # 9999-12-31T23:59:59Z: IMF-fixdate has room for four year digits
_PATH_SAFE = "!$&'()*+,;=:@"  # sub-delims and ":@" may stay literal in a path segment

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TARGET_CHARS = re.compile(r"[\x21-\x7e]+")
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")


class BadTarget(ValueError):
    """A request-target that cannot name a file below the root (answered with 400)."""


def clamp_date(ts: float | int) -> int:
    """Unix seconds clamped to what an IMF-fixdate can express."""
    return min(max(int(ts), 0), MAX_DATE)


def mtime_s(mtime_ns: int) -> int:
    """Last-Modified seconds of a file mtime in nanoseconds."""
    return clamp_date(mtime_ns // 1_000_000_000)


def http_date(ts: int) -> str:
    """IMF-fixdate (RFC 9110 5.6.7) of unix time `ts`."""
    t = time.gmtime(ts)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str) -> int | None:
    """Unix seconds of an HTTP date in any of the three RFC 9110 forms; None if unparseable."""
    try:
        parts = parsedate_tz(value)
        if parts is None:
            return None
        return timegm(parts[:6]) - (parts[9] or 0)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None


def content_type(path: bytes) -> str:
    """Media type for a file path, by case-insensitive extension."""
    base = path.rpartition(b"/")[2]
    dot = base.rfind(b".")
    ext = base[dot + 1 :].decode("ascii", "replace").lower() if dot > 0 else ""
    return _TYPES.get(ext, _DEFAULT_TYPE)


def quote_segment(name: bytes) -> str:
    """One path segment percent-encoded for a Location field or a link."""
    return quote(name, safe=_PATH_SAFE)


def split_target(target: str) -> tuple[list[bytes], bool, str]:
    """Decode a request-target into normalised path segments, trailing-slash flag and query.

    Raises BadTarget for bytes outside the target grammar, bad percent-escapes, NUL, or a path
    that climbs above the root.
    """
    if not _TARGET_CHARS.fullmatch(target):
        raise BadTarget("bad characters")
    if not target.startswith("/"):
        match = _ABSOLUTE_FORM.match(target)  # RFC 9112 3.2.2: servers must accept it
        if match is None:
            raise BadTarget("not origin-form or absolute-form")
        rest = target[match.end() :]
        target = rest if rest.startswith("/") else "/" + rest
    path, _, query = target.partition("#")[0].partition("?")
    if _BAD_PERCENT.search(path):
        raise BadTarget("bad percent-escape")
    raw = unquote_to_bytes(path)
    if b"\0" in raw:
        raise BadTarget("NUL in path")
    segments: list[bytes] = []
    last = b""
    for last in raw.split(b"/"):
        if last == b"..":
            if not segments:
                raise BadTarget("climbs above the root")  # never a valid request
            segments.pop()
        elif last not in (b"", b"."):
            segments.append(last)
    return segments, last in (b"", b".", b".."), query


def etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2) of our ETag against an If-None-Match list."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/").strip('"')
    return any(match[2] == opaque for match in _ENTITY_TAG.finditer(header))


def if_range_allows(values: list[str], etag: str, mtime_s: int) -> bool:
    """If-Range (RFC 9110 13.1.5): the validator must match exactly, else send everything."""
    if not values:
        return True
    if len(values) > 1:
        return False
    value = values[0].strip()
    if value.startswith(('"', "W/")):
        return value == etag  # strong comparison: a weak tag never matches
    return parse_http_date(value) == mtime_s


def _number(digits: str) -> int:
    # Past 20 digits every value is beyond any file; avoids int() on huge digit strings.
    return int(digits) if len(digits) <= 20 else 10**20


def parse_ranges(value: str, size: int, max_ranges: int) -> list[tuple[int, int]] | None:
    """Satisfiable ranges of a Range field for a file of `size` > 0 bytes.

    None means "ignore the field, send 200" (bad syntax, unknown unit, too many ranges or more
    bytes than the file holds); an empty list means 416.
    """
    unit, eq, rest = value.partition("=")
    if not eq or unit.strip(" \t").lower() != "bytes":
        return None
    specs = [spec for spec in (s.strip(" \t") for s in rest.split(",")) if spec]
    if not specs or len(specs) > max_ranges:
        return None
    out: list[tuple[int, int]] = []
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first_s, last_s, suffix_s = match.groups()
        if suffix_s is not None:
            suffix = _number(suffix_s)
            if suffix:
                out.append((max(0, size - suffix), size - 1))
            continue
        first = _number(first_s)
        last = _number(last_s) if last_s else None
        if last is not None and last < first:
            return None  # invalid range-spec (RFC 9110 14.1.1)
        if first < size:
            out.append((first, size - 1 if last is None else min(last, size - 1)))
    if sum(last - first + 1 for first, last in out) > size:
        return None  # overlapping ranges used to amplify the response
    return out
