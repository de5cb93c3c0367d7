"""Static file serving in which every byte of every response can be regenerated.

A response is one byte stream: status line, header fields, blank line, body.  `StaticSite.plan`
decides the response once and captures the decision in a `ResponsePlan`; `ResponsePlan.to_token`
packs everything that decision depends on (file identity, ranges, date, ...) into a compact
token, so that any replica sharing the directory can later rebuild the identical plan with
`StaticSite.from_token` and produce any byte range of the stream with `StaticSite.read`, without
per-connection state.  If the file (or directory listing) behind a token has changed, `read`
raises `ContentChanged` instead of splicing bytes of two versions into one response.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import threading
import time
from calendar import timegm
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.utils import parsedate_tz
from enum import IntEnum
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import jinja2

from .http_head import MAX_TARGET, HttpRequest
from .varint import VarintReader, put_bytes, put_varint

__all__ = [
    "FIXED_STATUSES",
    "REASONS",
    "ContentChanged",
    "FdCache",
    "Kind",
    "PlanOrigin",
    "ResponsePlan",
    "StaticSite",
    "TokenError",
    "content_type",
    "http_date",
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

_TYPES: dict[str, str] = {
    "html": "text/html; charset=utf-8",
    "htm": "text/html; charset=utf-8",
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
_HTML = "text/html; charset=utf-8"

_MAX_DATE = 253402300799  # 9999-12-31T23:59:59Z: IMF-fixdate has room for four year digits
_MAX_PATH = 4096
_MAX_LOCATION = 8192
_DIGEST_SIZE = 16
_LISTING_TTL = 1.0  # seconds a rendered listing is reused before being regenerated to verify it
_LISTING_CACHE = 32
_PATH_SAFE = "!$&'()*+,;=:@"  # sub-delims and ":@" may stay literal in a path segment
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    # A FIFO swapped in after the stat must not block the server.
    | getattr(os, "O_NONBLOCK", 0)
)
_NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TARGET_CHARS = re.compile(r"[\x21-\x7e]+")
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")
_LOCATION = re.compile(rb"/[\x21-\x7e]*")


class ContentChanged(Exception):
    """The file or listing behind a plan no longer matches its ETag: refuse, never splice."""


class TokenError(ValueError):
    """A token that does not decode to a valid plan for this site."""


class Kind(IntEnum):
    """What the body of a response stream is made of."""

    FILE = 1  # a regular file (200, 206, 304, 416)
    LISTING = 2  # a generated directory listing (200, 304)
    FIXED = 3  # a fixed error page
    REDIRECT = 4  # a 301 to the directory with its trailing slash


@dataclass(frozen=True, slots=True)
class PlanOrigin:
    """Everything a response stream is derived from; this is what a token encodes."""

    kind: Kind
    status: int
    head: bool
    date: int  # unix seconds of the Date field
    path: bytes = b""  # normalised request path relative to the root, no leading slash
    ino: int = 0  # FILE: identity of the file version the plan was made for
    mtime_ns: int = 0
    size: int = 0  # FILE: file size; LISTING: body length
    ranges: tuple[tuple[int, int], ...] = ()  # FILE 206: inclusive byte ranges
    digest: bytes = b""  # LISTING: truncated SHA-256 of the body
    location: bytes = b""  # REDIRECT


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """A decided response: the exact head bytes and how long the body is."""

    status: int
    header_bytes: bytes  # status line + header fields + CRLF
    body_length: int  # body bytes following the head in the stream (0 for HEAD, 304)
    origin: PlanOrigin = field(repr=False)

    @property
    def total_length(self) -> int:
        """Length of the whole response stream."""
        return len(self.header_bytes) + self.body_length

    def to_token(self) -> bytes:
        """Compact deterministic encoding from which `StaticSite.from_token` rebuilds this plan."""
        return _encode_origin(self.origin)


def http_date(ts: int) -> str:
    """IMF-fixdate (RFC 9110 5.6.7) of unix time `ts`."""
    t = time.gmtime(ts)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def content_type(path: bytes) -> str:
    """Media type for a file path, by case-insensitive extension."""
    base = path.rpartition(b"/")[2]
    dot = base.rfind(b".")
    ext = base[dot + 1 :].decode("ascii", "replace").lower() if dot > 0 else ""
    return _TYPES.get(ext, _DEFAULT_TYPE)


# -- the stream layout: header bytes and body segments, a pure function of PlanOrigin ----------

Segment = bytes | tuple[int, int]  # literal bytes, or (file offset, length)


def _clamp_date(ts: float | int) -> int:
    return min(max(int(ts), 0), _MAX_DATE)


def _file_etag(o: PlanOrigin) -> str:
    return f'"{o.ino:x}-{o.mtime_ns:x}-{o.size:x}"'


def _listing_etag(digest: bytes) -> str:
    return f'"L-{digest.hex()}"'


def _mtime_s(mtime_ns: int) -> int:
    return _clamp_date(mtime_ns // 1_000_000_000)


def _boundary(o: PlanOrigin) -> str:
    # Derived from the ETag so that every replica regenerates the same multipart body.
    return "trickles-" + hashlib.sha256(_file_etag(o).encode()).hexdigest()[:24]


def _error_body(status: int) -> bytes:
    title = f"{status} {REASONS[status]}"
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
        f"<body><h1>{title}</h1><hr><p>{SERVER}</p></body></html>\n"
    ).encode("ascii")


def _segments(o: PlanOrigin) -> list[Segment]:
    """Body of the GET response for `o` (HEAD sends none), except for listings."""
    if o.kind is not Kind.FILE:
        return [] if o.status == 304 else [_error_body(o.status)]
    if o.status == 304:
        return []
    if o.status == 416:
        return [_error_body(416)]
    if o.status == 200:
        return [(0, o.size)]
    if len(o.ranges) == 1:
        first, last = o.ranges[0]
        return [(first, last - first + 1)]
    boundary, ctype = _boundary(o), content_type(o.path)
    out: list[Segment] = []
    for first, last in o.ranges:
        part_head = (
            f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n"
            f"Content-Range: bytes {first}-{last}/{o.size}\r\n\r\n"
        )
        out += [part_head.encode("ascii"), (first, last - first + 1)]
    out.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return out


def _segment_length(segment: Segment) -> int:
    return len(segment) if isinstance(segment, bytes) else segment[1]


def _make_plan(o: PlanOrigin) -> ResponsePlan:
    """Build the plan for `o`; plan() and from_token() both end here, hence identical bytes."""
    lines = [f"HTTP/1.1 {o.status} {REASONS[o.status]}", f"Server: {SERVER}"]
    lines.append(f"Date: {http_date(o.date)}")
    length = o.size if o.kind is Kind.LISTING else sum(map(_segment_length, _segments(o)))
    if o.kind is Kind.FILE:
        if o.status == 416:
            lines += [f"Content-Type: {_HTML}", f"Content-Length: {length}"]
            lines.append(f"Content-Range: bytes */{o.size}")
        elif o.status != 304:
            ctype = content_type(o.path)
            if len(o.ranges) > 1:
                ctype = f"multipart/byteranges; boundary={_boundary(o)}"
            lines += [f"Content-Type: {ctype}", f"Content-Length: {length}"]
            if len(o.ranges) == 1:
                lines.append(f"Content-Range: bytes {o.ranges[0][0]}-{o.ranges[0][1]}/{o.size}")
        lines.append(f"Last-Modified: {http_date(_mtime_s(o.mtime_ns))}")
        lines.append(f"ETag: {_file_etag(o)}")
        if o.status in (200, 206):
            lines.append("Accept-Ranges: bytes")
    elif o.kind is Kind.LISTING:
        if o.status == 200:
            lines += [f"Content-Type: {_HTML}", f"Content-Length: {length}"]
        lines.append(f"ETag: {_listing_etag(o.digest)}")
    else:
        if o.kind is Kind.REDIRECT:
            lines.append(f"Location: {o.location.decode('ascii')}")
        lines += [f"Content-Type: {_HTML}", f"Content-Length: {length}"]
        if o.status == 405:
            lines.append("Allow: GET, HEAD")
    header_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    body_length = 0 if o.head or o.status == 304 else length
    return ResponsePlan(o.status, header_bytes, body_length, o)


# -- tokens -------------------------------------------------------------------------------------
# Layout: version, kind, head, then varints status, date, path, ino, zigzag(mtime_ns), size,
# range count, (first, last - first)*, then length-prefixed digest and location.

_TOKEN_VERSION = 1


def _encode_origin(o: PlanOrigin) -> bytes:
    out = bytearray((_TOKEN_VERSION, o.kind, o.head))
    put_varint(out, o.status)
    put_varint(out, o.date)
    put_bytes(out, o.path)
    put_varint(out, o.ino)
    put_varint(out, o.mtime_ns * 2 if o.mtime_ns >= 0 else -o.mtime_ns * 2 - 1)
    put_varint(out, o.size)
    put_varint(out, len(o.ranges))
    for first, last in o.ranges:
        put_varint(out, first)
        put_varint(out, last - first)
    put_bytes(out, o.digest)
    put_bytes(out, o.location)
    return bytes(out)


def _token_reader(token: bytes) -> VarintReader:
    return VarintReader(token, lambda what: TokenError(f"{what} token"))


def _decode_origin(token: bytes) -> PlanOrigin:
    if not isinstance(token, bytes | bytearray | memoryview):
        raise TokenError("token must be bytes")
    r = _token_reader(bytes(token))
    if r.byte() != _TOKEN_VERSION:
        raise TokenError("unknown token version")
    try:
        kind = Kind(r.byte())
    except ValueError:
        raise TokenError("bad token kind") from None
    head = r.byte()
    if head > 1:
        raise TokenError("bad token flags")
    status = r.varint(999)
    date = r.varint(_MAX_DATE)
    path = r.bytes(_MAX_PATH)
    ino = r.varint(2**64 - 1)
    zigzag = r.varint(2**64 - 1)
    size = r.varint(2**63 - 1)
    ranges: list[tuple[int, int]] = []
    for _ in range(r.varint(64)):
        first = r.varint(2**63 - 1)
        ranges.append((first, first + r.varint(2**63 - 1)))
    digest = r.bytes(_DIGEST_SIZE)
    location = r.bytes(_MAX_LOCATION)
    if r.pos != len(r.blob):
        raise TokenError("trailing bytes in token")
    mtime_ns = zigzag >> 1 if not zigzag & 1 else -(zigzag >> 1) - 1
    return PlanOrigin(
        kind, status, bool(head), date, path, ino, mtime_ns, size, tuple(ranges),
        digest, location,
    )  # fmt: skip


def _valid_path(path: bytes, *, allow_root: bool) -> bool:
    if not path:
        return allow_root
    return b"\0" not in path and all(seg not in (b"", b".", b"..") for seg in path.split(b"/"))


def _check_origin(o: PlanOrigin, max_ranges: int) -> None:
    """Reject decoded origins that plan() could never have produced."""
    blank_file = not (o.ino or o.mtime_ns or o.ranges)
    if o.kind is Kind.FILE:
        ok = o.status in (200, 206, 304, 416) and _valid_path(o.path, allow_root=False)
        ok = ok and not o.digest and not o.location
        if o.status == 206:
            spans = [last - first + 1 for first, last in o.ranges]
            ok = ok and not o.head and 1 <= len(o.ranges) <= max_ranges
            ok = ok and all(last < o.size for _, last in o.ranges) and sum(spans) <= o.size
        else:
            ok = ok and not o.ranges
    elif o.kind is Kind.LISTING:
        ok = o.status in (200, 304) and _valid_path(o.path, allow_root=True) and blank_file
        ok = ok and len(o.digest) == _DIGEST_SIZE and not o.location
    elif o.kind is Kind.FIXED:
        ok = o.status in FIXED_STATUSES and blank_file and not (o.path or o.size or o.digest)
        ok = ok and not o.location
    else:
        ok = o.status == 301 and blank_file and not (o.path or o.size or o.digest)
        ok = ok and _LOCATION.fullmatch(o.location) is not None
    if not ok:
        raise TokenError("token does not describe a valid response")


# -- request interpretation -----------------------------------------------------------------------


class _Refuse(Exception):
    """Internal: answer with a fixed error page."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _split_target(target: str) -> tuple[list[bytes], bool, str]:
    """Decode a request-target into normalised path segments, trailing-slash flag and query."""
    if not _TARGET_CHARS.fullmatch(target):
        raise _Refuse(400)
    if not target.startswith("/"):
        match = _ABSOLUTE_FORM.match(target)  # RFC 9112 3.2.2: servers must accept it
        if match is None:
            raise _Refuse(400)
        rest = target[match.end() :]
        target = rest if rest.startswith("/") else "/" + rest
    path, _, query = target.partition("#")[0].partition("?")
    if _BAD_PERCENT.search(path):
        raise _Refuse(400)
    raw = unquote_to_bytes(path)
    if b"\0" in raw:
        raise _Refuse(400)
    segments: list[bytes] = []
    last = b""
    for last in raw.split(b"/"):
        if last == b"..":
            if not segments:
                raise _Refuse(400)  # climbs above the root: never a valid request
            segments.pop()
        elif last not in (b"", b"."):
            segments.append(last)
    return segments, last in (b"", b".", b".."), query


def _parse_http_date(value: str) -> int | None:
    try:
        parts = parsedate_tz(value)
        if parts is None:
            return None
        return timegm(parts[:6]) - (parts[9] or 0)
    except (ValueError, IndexError, TypeError, OverflowError):
        return None


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2) of our ETag against an If-None-Match list."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/").strip('"')
    return any(match[2] == opaque for match in _ENTITY_TAG.finditer(header))


def _if_range_allows(values: list[str], etag: str, mtime_s: int) -> bool:
    """If-Range (RFC 9110 13.1.5): the validator must match exactly, else send everything."""
    if not values:
        return True
    if len(values) > 1:
        return False
    value = values[0].strip()
    if value.startswith(('"', "W/")):
        return value == etag  # strong comparison: a weak tag never matches
    return _parse_http_date(value) == mtime_s


def _number(digits: str) -> int:
    # Past 20 digits every value is beyond any file; avoids int() on huge digit strings.
    return int(digits) if len(digits) <= 20 else 10**20


def _parse_ranges(value: str, size: int, max_ranges: int) -> list[tuple[int, int]] | None:
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


# -- file descriptors -----------------------------------------------------------------------------


@dataclass(slots=True)
class _OpenFile:
    fd: int
    dev: int
    ino: int
    users: int = 0
    retired: bool = False


class FdCache:
    """Bounded LRU of read-only fds keyed by absolute path, shared by all readers of a site.

    An entry is used only while the path still stats to the same (dev, inode); an fd evicted
    while a reader holds it is closed when that reader is done, so it is never reused under it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _OpenFile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def borrow(self, path: bytes, st: os.stat_result, opener: Callable[[bytes], int]) -> Iterator[int]:
        """An fd for `path` whose file is the one `st` describes (ContentChanged otherwise)."""
        entry = self._acquire(path, st)
        if entry is None:
            entry = self._open(path, st, opener)
        try:
            yield entry.fd
        finally:
            with self._lock:
                entry.users -= 1
                if entry.retired and not entry.users:
                    os.close(entry.fd)

    def peek(self, path: bytes, st: os.stat_result) -> int | None:
        """The cached fd for `path` if it names the file `st` describes, for a synchronous read
        that finishes before anything else can touch the cache (the single-threaded packet path)."""
        entry = self._entries.get(path)
        if entry is None or entry.ino != st.st_ino or entry.dev != st.st_dev or entry.retired:
            return None
        return entry.fd

    def clear(self) -> None:
        """Close every cached fd (those in use are closed when released)."""
        with self._lock:
            for entry in self._entries.values():
                self._retire(entry)
            self._entries.clear()

    def _acquire(self, path: bytes, st: os.stat_result) -> _OpenFile | None:
        with self._lock:
            entry = self._entries.get(path)
            if entry is None or (entry.dev, entry.ino) != (st.st_dev, st.st_ino):
                return None
            self._entries.move_to_end(path)
            entry.users += 1
            return entry

    def _open(self, path: bytes, st: os.stat_result, opener: Callable[[bytes], int]) -> _OpenFile:
        fd = opener(path)  # outside the lock: open() may block on slow storage
        try:
            fst = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
            os.close(fd)
            raise ContentChanged("file replaced while opening it")
        entry = _OpenFile(fd, fst.st_dev, fst.st_ino, users=1)
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None:
                self._retire(old)
            if self.capacity > 0:
                self._entries[path] = entry
                while len(self._entries) > self.capacity:
                    self._retire(self._entries.popitem(last=False)[1])
            else:
                entry.retired = True
        return entry

    @staticmethod
    def _retire(entry: _OpenFile) -> None:
        entry.retired = True
        if not entry.users:
            os.close(entry.fd)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True, slots=True)
class _Entry:
    key: tuple[bool, bytes]  # (not a directory, raw name): directories first, then by name
    name: str
    href: str
    size: str
    mtime: str


_TEMPLATES = Path(__file__).resolve().parent / "templates"


class StaticSite:
    """Serve the files below `root` with nginx-like semantics, regenerably."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        listing: bool = True,
        max_ranges: int = 16,
        open_file_cache: int = 256,
    ) -> None:
        real = os.path.realpath(os.fsencode(root))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"static root is not a directory: {root!r}")
        self.root = real
        self._prefix = real if real.endswith(b"/") else real + b"/"
        self.listing = listing
        self.max_ranges = max(1, min(max_ranges, 64))
        self.fds = FdCache(open_file_cache)
        self._listings: OrderedDict[bytes, tuple[float, bytes, bytes]] = OrderedDict()
        self._listings_lock = threading.Lock()
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        self._template = env.get_template("listing.html")

    # -- public API ---------------------------------------------------------------------------

    def plan(self, req: HttpRequest, now: float) -> ResponsePlan:
        """Decide the response to `req`; `now` (unix seconds) is the only clock used."""
        date = _clamp_date(now)
        head = req.method == "HEAD"
        try:
            if req.version not in ("1.0", "1.1"):
                raise _Refuse(505)
            if req.method not in ("GET", "HEAD"):
                raise _Refuse(405)
            if len(req.target) > MAX_TARGET:
                raise _Refuse(414)  # as feed_head would, for requests built elsewhere
            segments, trailing, query = _split_target(req.target)
            return self._plan_path(req, segments, trailing, query, date, head)
        except _Refuse as refusal:
            return self._fixed(refusal.status, date, head)
        except PermissionError:
            return self._fixed(403, date, head)
        except OSError as exc:
            return self._fixed(404 if exc.errno in _NOT_FOUND_ERRNOS else 500, date, head)

    def error_plan(self, status: int, now: float, method: str = "GET") -> ResponsePlan:
        """A fixed error page, e.g. for a HeadError; `status` must be in FIXED_STATUSES."""
        if status not in FIXED_STATUSES:
            raise ValueError(f"no fixed error page for status {status}")
        return self._fixed(status, _clamp_date(now), method.upper() == "HEAD")

    def from_token(self, token: bytes) -> ResponsePlan:
        """Rebuild the plan a token was made from; raises TokenError for anything else."""
        origin = _decode_origin(token)
        _check_origin(origin, self.max_ranges)
        return _make_plan(origin)

    def read(self, plan: ResponsePlan, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the response stream, clipped to its length.

        Raises ContentChanged if the body would come from a different file version or listing
        than the one the plan was made for.
        """
        start = max(0, offset)
        stop = min(plan.total_length, start + max(0, length))
        if start >= stop:
            return b""
        head_len = len(plan.header_bytes)
        out = plan.header_bytes[start:stop] if start < head_len else b""
        if stop > head_len:
            out += self._read_body(plan.origin, max(0, start - head_len), stop - head_len)
        return out

    def read_many(self, plan: ResponsePlan, ranges: list[tuple[int, int]]) -> list[bytes]:
        """``read`` for several ranges of one response, with one file read for all of them.

        The packet path asks for the consecutive slots of one request together: one stat, one
        pread over their span and one fstat, instead of three system calls per packet.
        """
        if len(ranges) < 2:
            return [self.read(plan, o, n) for o, n in ranges]
        lo = max(0, min(o for o, _ in ranges))
        hi = min(plan.total_length, max(o + n for o, n in ranges))
        if hi - lo > 4 * 1024 * 1024:
            return [self.read(plan, o, n) for o, n in ranges]
        span = self.read(plan, lo, hi - lo)
        return [span[max(0, o - lo) : max(0, o + n - lo)] for o, n in ranges]

    def drop_caches(self) -> None:
        """Close cached fds and forget cached listings (e.g. under memory or fd pressure)."""
        self.fds.clear()
        with self._listings_lock:
            self._listings.clear()

    close = drop_caches

    # -- planning -----------------------------------------------------------------------------

    def _abs(self, rel: bytes) -> bytes:
        return self._prefix + rel if rel else self.root

    def _inside(self, real: bytes) -> bool:
        return real == self.root or real.startswith(self._prefix)

    def _fixed(self, status: int, date: int, head: bool) -> ResponsePlan:
        return _make_plan(PlanOrigin(Kind.FIXED, status, head, date))

    def _plan_path(
        self,
        req: HttpRequest,
        segments: list[bytes],
        trailing: bool,
        query: str,
        date: int,
        head: bool,
    ) -> ResponsePlan:
        rel = b"/".join(segments)
        full = self._abs(rel)
        st = os.stat(full)
        if not self._inside(os.path.realpath(full)):
            raise _Refuse(404)  # a symlink out of the root: do not reveal what is there
        if stat.S_ISDIR(st.st_mode):
            if not trailing:
                location = "/" + "/".join(quote(s, safe=_PATH_SAFE) for s in segments) + "/"
                location += f"?{query}" if query else ""
                origin = PlanOrigin(Kind.REDIRECT, 301, head, date, location=location.encode())
                return _make_plan(origin)
            index = rel + b"/index.html" if rel else b"index.html"
            try:
                is_file = stat.S_ISREG(os.stat(self._abs(index)).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                is_file = False
            if is_file:
                return self._plan_file(req, index, date, head)
            if not self.listing:
                raise _Refuse(403)
            return self._plan_listing(req, rel, date, head)
        if trailing:
            raise _Refuse(404)  # "/file.txt/" names a directory that does not exist
        if not stat.S_ISREG(st.st_mode):
            raise _Refuse(403)  # FIFOs, devices and sockets are never served
        return self._plan_file(req, rel, date, head)

    def _plan_file(self, req: HttpRequest, rel: bytes, date: int, head: bool) -> ResponsePlan:
        full = self._abs(rel)
        st = os.stat(full)
        if not stat.S_ISREG(st.st_mode):
            raise _Refuse(403)
        try:
            # Opening now turns EACCES into a 403 and warms the fd cache for the reads to come.
            with self.fds.borrow(full, st, self._open_file) as fd:
                st = os.fstat(fd)
        except ContentChanged:
            raise _Refuse(404)
        origin = PlanOrigin(Kind.FILE, 200, head, date, rel, st.st_ino, st.st_mtime_ns, st.st_size)
        etag = _file_etag(origin)
        mtime_s = _mtime_s(st.st_mtime_ns)
        if self._not_modified(req, etag, mtime_s):
            return _make_plan(replace(origin, status=304))
        ranges = req.values("range")
        # RFC 9110 14.2: Range is defined for GET only; empty files have no satisfiable range.
        if (
            len(ranges) == 1
            and req.method == "GET"
            and origin.size > 0
            and _if_range_allows(req.values("if-range"), etag, mtime_s)
        ):
            chosen = _parse_ranges(ranges[0], origin.size, self.max_ranges)
            if chosen == []:
                return _make_plan(replace(origin, status=416))
            if chosen:
                return _make_plan(replace(origin, status=206, ranges=tuple(chosen)))
        return _make_plan(origin)

    @staticmethod
    def _not_modified(req: HttpRequest, etag: str, mtime_s: int | None) -> bool:
        # RFC 9110 13.2.2: If-None-Match takes precedence; If-Modified-Since is then ignored.
        if_none_match = req.get("if-none-match")
        if if_none_match is not None:
            return _etag_matches(if_none_match, etag)
        since = req.values("if-modified-since")
        if mtime_s is None or len(since) != 1:
            return False
        limit = _parse_http_date(since[0])
        return limit is not None and mtime_s <= limit

    def _plan_listing(self, req: HttpRequest, rel: bytes, date: int, head: bool) -> ResponsePlan:
        body = self._render_listing(rel)
        digest = hashlib.sha256(body).digest()[:_DIGEST_SIZE]
        self._remember_listing(rel, digest, body)
        status = 304 if self._not_modified(req, _listing_etag(digest), None) else 200
        origin = PlanOrigin(Kind.LISTING, status, head, date, rel, size=len(body), digest=digest)
        return _make_plan(origin)

    def _render_listing(self, rel: bytes) -> bytes:
        full = self._abs(rel)
        if not self._inside(os.path.realpath(full)):
            raise _Refuse(404)
        entries: list[_Entry] = []
        with os.scandir(full) as it:
            for item in it:
                if item.name.startswith(b"."):
                    continue  # hidden, as in nginx's autoindex
                try:
                    st = item.stat()
                    if item.is_symlink() and not self._inside(os.path.realpath(item.path)):
                        continue  # never advertise a way out of the root
                except OSError:
                    continue  # dangling symlink or vanished meanwhile
                is_dir = stat.S_ISDIR(st.st_mode)
                slash = "/" if is_dir else ""
                entries.append(
                    _Entry(
                        key=(not is_dir, item.name),
                        name=item.name.decode("utf-8", "replace") + slash,
                        href=quote(item.name, safe=_PATH_SAFE) + slash,
                        size="-" if is_dir else str(st.st_size),
                        mtime=time.strftime("%Y-%m-%d %H:%M", time.gmtime(_mtime_s(st.st_mtime_ns))),
                    )
                )
        entries.sort(key=lambda entry: entry.key)
        title = "/" + (rel.decode("utf-8", "replace") + "/" if rel else "")
        return self._template.render(path=title, parent=bool(rel), entries=entries).encode()

    def _remember_listing(self, rel: bytes, digest: bytes, body: bytes) -> None:
        with self._listings_lock:
            self._listings[rel] = (time.monotonic(), digest, body)
            self._listings.move_to_end(rel)
            while len(self._listings) > _LISTING_CACHE:
                self._listings.popitem(last=False)

    # -- reading ------------------------------------------------------------------------------

    def _open_file(self, full: bytes) -> int:
        real = os.path.realpath(full)
        if not self._inside(real):
            raise ContentChanged("path now leads outside the root")
        return os.open(real, _OPEN_FLAGS)

    def _read_body(self, o: PlanOrigin, start: int, stop: int) -> bytes:
        if o.kind is Kind.FILE and (o.status == 200 or (o.status == 206 and len(o.ranges) == 1)):
            base = o.ranges[0][0] if o.status == 206 else 0
            return self._read_plain(o, base + start, stop - start)
        if o.kind is Kind.LISTING:
            return self._listing_body(o)[start:stop]
        wanted: list[Segment] = []
        pos = 0
        for segment in _segments(o):
            size = _segment_length(segment)
            lo, hi = max(start, pos), min(stop, pos + size)
            if lo < hi:
                if isinstance(segment, bytes):
                    wanted.append(segment[lo - pos : hi - pos])
                else:
                    wanted.append((segment[0] + lo - pos, hi - lo))
            pos += size
        if all(isinstance(segment, bytes) for segment in wanted):
            return b"".join(s for s in wanted if isinstance(s, bytes))
        return self._read_file(o, wanted)

    def _read_plain(self, o: PlanOrigin, offset: int, length: int) -> bytes:
        """The per-packet path for a file body: stat, cached fd, pread, fstat (no locks, no copies)."""
        expected = (o.ino, o.mtime_ns, o.size)
        full = self._abs(o.path)
        try:
            st = os.stat(full)
            if (st.st_ino, st.st_mtime_ns, st.st_size) != expected or not stat.S_ISREG(st.st_mode):
                raise ContentChanged(f"{full!r} changed since the plan was made")
            entry = self.fds.peek(full, st)
            if entry is None:
                with self.fds.borrow(full, st, self._open_file) as fd:
                    data = os.pread(fd, length, offset)
                    after = os.fstat(fd)
            else:
                data = os.pread(entry, length, offset)
                after = os.fstat(entry)
        except OSError as exc:
            if exc.errno in _NOT_FOUND_ERRNOS or isinstance(exc, PermissionError):
                raise ContentChanged(f"{full!r} is gone: {exc}") from exc
            raise
        # Rewritten in place while we read: the bytes may mix two versions.
        if _identity(after) != expected or len(data) != length:
            raise ContentChanged(f"{full!r} changed while being read")
        return data

    def _read_file(self, o: PlanOrigin, wanted: list[Segment]) -> bytes:
        full = self._abs(o.path)
        expected = (o.ino, o.mtime_ns, o.size)
        try:
            st = os.stat(full)
            if not stat.S_ISREG(st.st_mode) or _identity(st) != expected:
                raise ContentChanged(f"{full!r} changed since the plan was made")
            out = bytearray()
            with self.fds.borrow(full, st, self._open_file) as fd:
                for segment in wanted:
                    if isinstance(segment, bytes):
                        out += segment
                        continue
                    data = os.pread(fd, segment[1], segment[0])
                    if len(data) != segment[1]:
                        raise ContentChanged(f"{full!r} shrank while being read")
                    out += data
                after = os.fstat(fd)
        except OSError as exc:
            if exc.errno in _NOT_FOUND_ERRNOS or isinstance(exc, PermissionError):
                raise ContentChanged(f"{full!r} is gone: {exc}") from exc
            raise
        # Rewritten in place while we read: the bytes may mix two versions.
        if _identity(after) != expected:
            raise ContentChanged(f"{full!r} changed while being read")
        return bytes(out)

    def _listing_body(self, o: PlanOrigin) -> bytes:
        with self._listings_lock:
            cached = self._listings.get(o.path)
        # Within the TTL the cached body stands in for a regeneration, so a long listing read
        # piece by piece is rendered once rather than once per piece.
        fresh = cached is not None and time.monotonic() - cached[0] < _LISTING_TTL
        if cached is not None and fresh and cached[1] == o.digest:
            return cached[2]
        try:
            body = self._render_listing(o.path)
        except (OSError, _Refuse) as exc:
            raise ContentChanged(f"listing of {o.path!r} unavailable") from exc
        digest = hashlib.sha256(body).digest()[:_DIGEST_SIZE]
        self._remember_listing(o.path, digest, body)
        if digest != o.digest:
            raise ContentChanged(f"listing of {o.path!r} changed")
        return body
