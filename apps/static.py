"""Static file serving in which every byte of every response can be regenerated.

`StaticSite.plan` decides the response to a request once and captures the decision in a
`ResponsePlan` (`response_plan.py`); the plan's token holds everything that decision depends on
(file identity, ranges, date, ...), so that any replica sharing the directory can later rebuild the
identical plan with `StaticSite.from_token` and produce any byte range of the stream with
`StaticSite.read`, without per-connection state.  If the file (or directory listing) behind a plan
has changed, `read` raises `ContentChanged` instead of splicing bytes of two versions into one
response.

The site is the policy (nginx-like: index.html, listings, redirects, what is refused); the HTTP
rules are in `http_semantics.py`, the open files in `file_cache.py`, the listings in `listing.py`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace

from .file_cache import NOT_FOUND_ERRNOS, OPEN_FLAGS, ContentChanged, FdCache
from .http_head import MAX_TARGET, HttpRequest
from .http_semantics import (
    FIXED_STATUSES,
    REASONS,
    BadTarget,
    clamp_date,
    content_type,
    etag_matches,
    http_date,
    if_range_allows,
    mtime_s,
    parse_http_date,
    parse_ranges,
    quote_segment,
    split_target,
)
from .listing import DEFAULT_CACHE_BYTES, DEFAULT_LIMIT, Listings
from .response_plan import (
    MAX_SPAN,
    Kind,
    PlanOrigin,
    ResponsePlan,
    Segment,
    TokenError,
    decode_token,
    file_etag,
    listing_etag,
    make_plan,
    read_ranges,
    segment_length,
    segments,
)

# The site's interface, plus the names this module exported before it was split (kept so that
# code importing them from here keeps working).
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


class _Refuse(Exception):
    """Internal: answer with a fixed error page."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _one_span_base(o: PlanOrigin) -> int | None:
    """Where in the file a response's body starts, for a body that is one span of one file (200,
    or a 206 of one range); None for anything else."""
    if o.kind is not Kind.FILE:
        return None
    if o.status == 200:
        return 0
    if o.status == 206 and len(o.ranges) == 1:
        return o.ranges[0][0]
    return None


class StaticSite:
    """Serve the files below `root` with nginx-like semantics, regenerably."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        listing: bool = True,
        max_ranges: int = 16,
        open_file_cache: int = 256,
        listing_limit: int = DEFAULT_LIMIT,
        listing_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        real = os.path.realpath(os.fsencode(root))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"static root is not a directory: {root!r}")
        self.root = real
        self._prefix = real if real.endswith(b"/") else real + b"/"
        self.listing = listing
        self.max_ranges = max(1, min(max_ranges, 64))
        self.fds = FdCache(open_file_cache)
        self.listings = Listings(self._inside, limit=listing_limit, cache_bytes=listing_cache_bytes)

    # -- public API ---------------------------------------------------------------------------

    def plan(self, req: HttpRequest, now: float, client: bytes = b"") -> ResponsePlan:
        """Decide the response to `req`; `now` (unix seconds) is the only clock used.

        `client` is the client's address (packed IP, optional port); static files are the same for
        everyone, but a subclass may mount per-client content (the watermarking site).
        """
        date = clamp_date(now)
        head = req.method == "HEAD"
        try:
            if req.version not in ("1.0", "1.1"):
                raise _Refuse(505)
            if req.method not in ("GET", "HEAD"):
                raise _Refuse(405)
            if len(req.target) > MAX_TARGET:
                raise _Refuse(414)  # as feed_head would, for requests built elsewhere
            segments, trailing, query = split_target(req.target)
            return self._plan_path(req, segments, trailing, query, date, head)
        except BadTarget:
            return self._fixed(400, date, head)
        except _Refuse as refusal:
            return self._fixed(refusal.status, date, head)
        except PermissionError:
            return self._fixed(403, date, head)
        except OSError as exc:
            return self._fixed(404 if exc.errno in NOT_FOUND_ERRNOS else 500, date, head)

    def expensive(self, req: HttpRequest) -> bool:
        """Whether planning `req` costs far more than a static file (not for SYN data, then)."""
        return False

    def error_plan(self, status: int, now: float, method: str = "GET") -> ResponsePlan:
        """A fixed error page, e.g. for a HeadError; `status` must be in FIXED_STATUSES."""
        if status not in FIXED_STATUSES:
            raise ValueError(f"no fixed error page for status {status}")
        return self._fixed(status, clamp_date(now), method.upper() == "HEAD")

    def from_token(self, token: bytes) -> ResponsePlan:
        """Rebuild the plan a token was made from; raises TokenError for anything else."""
        return make_plan(decode_token(token, self.max_ranges))

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
        """``read`` for several ranges of one response, with one read over their span."""
        base = _one_span_base(plan.origin)
        head = len(plan.header_bytes)
        if base is not None and len(ranges) > 1:
            # The per-packet path (the slots of one request, all in the body of a file response):
            # one stat, pread and fstat, without going through ``read`` once per range.
            lo, hi = ranges[0][0], 0
            for off, n in ranges:  # a loop: cheaper than min() and max() over generators
                lo = off if off < lo else lo
                hi = off + n if off + n > hi else hi
            hi = min(plan.total_length, hi)
            if head <= lo < hi and hi - lo <= MAX_SPAN:
                span = self._read_spans(plan.origin, [(base + lo - head, hi - lo)])[0]
                return [span[off - lo : max(0, off + n - lo)] for off, n in ranges]
        return read_ranges(self.read, plan, ranges)

    def drop_caches(self) -> None:
        """Close cached fds and forget cached listings (e.g. under memory or fd pressure)."""
        self.fds.clear()
        self.listings.clear()

    close = drop_caches

    # -- planning -----------------------------------------------------------------------------

    def _abs(self, rel: bytes) -> bytes:
        return self._prefix + rel if rel else self.root

    def _inside(self, real: bytes) -> bool:
        return real == self.root or real.startswith(self._prefix)

    def _fixed(self, status: int, date: int, head: bool) -> ResponsePlan:
        return make_plan(PlanOrigin(Kind.FIXED, status, head, date))

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
                location = "/" + "/".join(quote_segment(s) for s in segments) + "/"
                location += f"?{query}" if query else ""
                origin = PlanOrigin(Kind.REDIRECT, 301, head, date, location=location.encode())
                return make_plan(origin)
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
        etag = file_etag(origin)
        modified = mtime_s(st.st_mtime_ns)
        if self._not_modified(req, etag, modified):
            return make_plan(replace(origin, status=304))
        ranges = req.values("range")
        # RFC 9110 14.2: Range is defined for GET only; empty files have no satisfiable range.
        if (
            len(ranges) == 1
            and req.method == "GET"
            and origin.size > 0
            and if_range_allows(req.values("if-range"), etag, modified)
        ):
            chosen = parse_ranges(ranges[0], origin.size, self.max_ranges)
            if chosen == []:
                return make_plan(replace(origin, status=416))
            if chosen:
                return make_plan(replace(origin, status=206, ranges=tuple(chosen)))
        return make_plan(origin)

    @staticmethod
    def _not_modified(req: HttpRequest, etag: str, modified: int | None) -> bool:
        # RFC 9110 13.2.2: If-None-Match takes precedence; If-Modified-Since is then ignored.
        if_none_match = req.get("if-none-match")
        if if_none_match is not None:
            return etag_matches(if_none_match, etag)
        since = req.values("if-modified-since")
        if modified is None or len(since) != 1:
            return False
        limit = parse_http_date(since[0])
        return limit is not None and modified <= limit

    def _plan_listing(self, req: HttpRequest, rel: bytes, date: int, head: bool) -> ResponsePlan:
        digest, body = self.listings.get(rel, self._abs(rel))
        status = 304 if self._not_modified(req, listing_etag(digest), None) else 200
        origin = PlanOrigin(Kind.LISTING, status, head, date, rel, size=len(body), digest=digest)
        return make_plan(origin)

    # -- reading ------------------------------------------------------------------------------

    def _open_file(self, full: bytes) -> int:
        real = os.path.realpath(full)
        if not self._inside(real):
            raise ContentChanged("path now leads outside the root")
        return os.open(real, OPEN_FLAGS)

    def _read_body(self, o: PlanOrigin, start: int, stop: int) -> bytes:
        if o.kind is Kind.LISTING:
            return self._listing_body(o)[start:stop]
        base = _one_span_base(o)
        if base is not None:  # one span of the file, no segment bookkeeping
            return self._read_spans(o, [(base + start, stop - start)])[0]
        wanted: list[Segment] = []
        pos = 0
        for segment in segments(o):
            size = segment_length(segment)
            lo, hi = max(start, pos), min(stop, pos + size)
            if lo < hi:
                if isinstance(segment, bytes):
                    wanted.append(segment[lo - pos : hi - pos])
                else:
                    wanted.append((segment[0] + lo - pos, hi - lo))
            pos += size
        spans = [segment for segment in wanted if not isinstance(segment, bytes)]
        if not spans:
            return b"".join(s for s in wanted if isinstance(s, bytes))
        data = iter(self._read_spans(o, spans))
        return b"".join(s if isinstance(s, bytes) else next(data) for s in wanted)

    def _read_spans(self, o: PlanOrigin, spans: list[tuple[int, int]]) -> list[bytes]:
        identity = (o.ino, o.mtime_ns, o.size)
        return self.fds.read(self._abs(o.path), identity, spans, self._open_file)

    def _listing_body(self, o: PlanOrigin) -> bytes:
        try:
            digest, body = self.listings.get(o.path, self._abs(o.path))
        except OSError as exc:
            raise ContentChanged(f"listing of {o.path!r} unavailable") from exc
        if digest != o.digest:
            raise ContentChanged(f"listing of {o.path!r} changed")
        return body
