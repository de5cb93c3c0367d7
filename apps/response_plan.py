"""The response plan: a decided HTTP response as one byte stream, and the token that rebuilds it.

A response is one byte stream: status line, header fields, blank line, body.  `PlanOrigin` holds
everything that stream is derived from (kind, status, date, file identity, ranges, listing digest,
redirect location); `make_plan` turns an origin into the exact head bytes and the body layout, a
pure function, so a plan rebuilt from its token on any replica is byte-identical to the original.
`ResponsePlan.to_token` and `decode_token` are the compact, deterministic encoding of an origin;
`decode_token` also rejects origins that planning could never have produced.

Tokens come back from clients (inside MAC'd app continuations, but decoded defensively anyway):
every field is bounds-checked and only `TokenError` escapes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from .http_semantics import (
    FIXED_STATUSES,
    HTML,
    MAX_DATE,
    REASONS,
    SERVER,
    content_type,
    http_date,
    mtime_s,
)
from .varint import VarintReader, put_bytes, put_varint

__all__ = [
    "DIGEST_SIZE",
    "Kind",
    "PlanOrigin",
    "ResponsePlan",
    "Segment",
    "TokenError",
    "decode_token",
    "file_etag",
    "listing_etag",
    "make_plan",
    "segment_length",
    "segments",
]

DIGEST_SIZE = 16  # bytes of SHA-256 kept as a listing's identity
_MAX_PATH = 4096
_MAX_LOCATION = 8192
_LOCATION = re.compile(rb"/[\x21-\x7e]*")


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


# -- the stream layout: header bytes and body segments, a pure function of PlanOrigin ----------

Segment = bytes | tuple[int, int]  # literal bytes, or (file offset, length)


def file_etag(o: PlanOrigin) -> str:
    """The strong ETag of the file version `o` was planned for."""
    return f'"{o.ino:x}-{o.mtime_ns:x}-{o.size:x}"'


def listing_etag(digest: bytes) -> str:
    """The ETag of a listing body with this digest."""
    return f'"L-{digest.hex()}"'


def _boundary(o: PlanOrigin) -> str:
    # Derived from the ETag so that every replica regenerates the same multipart body.
    return "trickles-" + hashlib.sha256(file_etag(o).encode()).hexdigest()[:24]


def _error_body(status: int) -> bytes:
    title = f"{status} {REASONS[status]}"
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
        f"<body><h1>{title}</h1><hr><p>{SERVER}</p></body></html>\n"
    ).encode("ascii")


def segments(o: PlanOrigin) -> list[Segment]:
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


def segment_length(segment: Segment) -> int:
    """Bytes a body segment contributes to the stream."""
    return len(segment) if isinstance(segment, bytes) else segment[1]


def make_plan(o: PlanOrigin) -> ResponsePlan:
    """Build the plan for `o`; planning and `decode_token` both end here, hence identical bytes."""
    lines = [f"HTTP/1.1 {o.status} {REASONS[o.status]}", f"Server: {SERVER}"]
    lines.append(f"Date: {http_date(o.date)}")
    length = o.size if o.kind is Kind.LISTING else sum(map(segment_length, segments(o)))
    if o.kind is Kind.FILE:
        if o.status == 416:
            lines += [f"Content-Type: {HTML}", f"Content-Length: {length}"]
            lines.append(f"Content-Range: bytes */{o.size}")
        elif o.status != 304:
            ctype = content_type(o.path)
            if len(o.ranges) > 1:
                ctype = f"multipart/byteranges; boundary={_boundary(o)}"
            lines += [f"Content-Type: {ctype}", f"Content-Length: {length}"]
            if len(o.ranges) == 1:
                lines.append(f"Content-Range: bytes {o.ranges[0][0]}-{o.ranges[0][1]}/{o.size}")
        lines.append(f"Last-Modified: {http_date(mtime_s(o.mtime_ns))}")
        lines.append(f"ETag: {file_etag(o)}")
        if o.status in (200, 206):
            lines.append("Accept-Ranges: bytes")
    elif o.kind is Kind.LISTING:
        if o.status == 200:
            lines += [f"Content-Type: {HTML}", f"Content-Length: {length}"]
        lines.append(f"ETag: {listing_etag(o.digest)}")
    else:
        if o.kind is Kind.REDIRECT:
            lines.append(f"Location: {o.location.decode('ascii')}")
        lines += [f"Content-Type: {HTML}", f"Content-Length: {length}"]
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


def decode_token(token: bytes, max_ranges: int) -> PlanOrigin:
    """The origin a token encodes; TokenError unless planning could have produced it."""
    origin = _decode_origin(token)
    _check_origin(origin, max_ranges)
    return origin


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
    date = r.varint(MAX_DATE)
    path = r.bytes(_MAX_PATH)
    ino = r.varint(2**64 - 1)
    zigzag = r.varint(2**64 - 1)
    size = r.varint(2**63 - 1)
    ranges: list[tuple[int, int]] = []
    for _ in range(r.varint(64)):
        first = r.varint(2**63 - 1)
        ranges.append((first, first + r.varint(2**63 - 1)))
    digest = r.bytes(DIGEST_SIZE)
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
    """Reject decoded origins that planning could never have produced."""
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
        ok = ok and len(o.digest) == DIGEST_SIZE and not o.location
    elif o.kind is Kind.FIXED:
        ok = o.status in FIXED_STATUSES and blank_file and not (o.path or o.size or o.digest)
        ok = ok and not o.location
    else:
        ok = o.status == 301 and blank_file and not (o.path or o.size or o.digest)
        ok = ok and _LOCATION.fullmatch(o.location) is not None
    if not ok:
        raise TokenError("token does not describe a valid response")


MAX_SPAN = 4 * 1024 * 1024
"""Ranges of one request further apart than this are read one by one, not as one span."""


def read_ranges(
    read: Callable[[ResponsePlan, int, int], bytes], plan: ResponsePlan, ranges: list[tuple[int, int]]
) -> list[bytes]:
    """``read`` for several ``(offset, length)`` ranges of one response with one read over their
    span: the packet path asks for the consecutive slots of one request together (one stat, one
    pread and one fstat for a file; one regeneration for a watermarked image)."""
    if len(ranges) < 2:
        return [read(plan, o, n) for o, n in ranges]
    lo = max(0, min(o for o, _ in ranges))
    hi = min(plan.total_length, max(o + n for o, n in ranges))
    if hi - lo > MAX_SPAN:
        return [read(plan, o, n) for o, n in ranges]
    span = read(plan, lo, hi - lo)
    return [span[max(0, o - lo) : max(0, o + n - lo)] for o, n in ranges]
