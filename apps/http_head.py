"""Stateless, incremental HTTP/1.1 request-head parsing.

The Trickles transport keeps nothing between packets, so a request head split over several
packets is parsed piecewise and everything needed to resume travels as a compact bytes blob
(the "input continuation") that the server hands to the client and gets back with the next
piece.  Only the request line, the header fields a static server acts on and the unfinished
last line are kept; other fields are validated and dropped as soon as they are recognised,
so a 16 KB head full of cookies still yields a state of a few hundred bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .varint import VarintReader, put_bytes, put_varint

__all__ = [
    "MAX_FIELD_VALUE",
    "MAX_TARGET",
    "RELEVANT_HEADERS",
    "HeadError",
    "HttpRequest",
    "feed_head",
]

#: Header fields kept (lower-cased); everything else is dropped while parsing.
RELEVANT_HEADERS: tuple[str, ...] = (
    "host",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept",
)
#: Longest request-target accepted (414 beyond); it travels in the state, which must stay small.
MAX_TARGET = 2048
#: Longest value of a kept header field (431 beyond).
MAX_FIELD_VALUE = 512
#: Sum of kept field values (431 beyond), bounding the state whatever the client sends.
MAX_RETAINED = 1024
MAX_METHOD = 32
#: Most kept field lines (431 beyond); empty values would otherwise escape MAX_RETAINED.
MAX_KEPT_FIELDS = 32

_RELEVANT_INDEX = {name.encode(): i for i, name in enumerate(RELEVANT_HEADERS)}
_MAX_RELEVANT_NAME = max(len(name) for name in RELEVANT_HEADERS)
# Bytes of an unfinished request line we are willing to carry: method SP target SP HTTP/x.y CR.
_MAX_REQUEST_LINE = MAX_METHOD + 1 + MAX_TARGET + 1 + 8 + 1
# Bytes of an unfinished kept header line: name ":" OWS value OWS CR.
_MAX_KEPT_LINE = _MAX_RELEVANT_NAME + 1 + MAX_FIELD_VALUE + 16

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_OR_EMPTY = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_BAD_VALUE = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")
_BAD_TARGET = re.compile(rb"[^\x21-\x7e]")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")

_FORMAT = 0xA1  # first byte of every non-empty state: format tag, catches foreign blobs early
# Line modes: what the unfinished last line is.
_KEEP = 0  # buffered verbatim (request line, kept field or not yet classified)
_SKIP_NAME = 1  # inside the name of a field too long to be a kept one
_SKIP_VALUE = 2  # inside the value of a dropped field


class HeadError(ValueError):
    """A malformed or unacceptable request head; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request head reduced to what static serving needs."""

    method: str
    target: str
    version: str  # "1.0" or "1.1"
    # Kept fields in arrival order, lower-cased names; repeated fields appear repeatedly.
    headers: tuple[tuple[str, str], ...] = ()

    def values(self, name: str) -> list[str]:
        """All values of field `name` (lower-case), in arrival order."""
        return [value for key, value in self.headers if key == name]

    def get(self, name: str) -> str | None:
        """Field `name` with repeated occurrences joined by ", " (RFC 9110 5.3), or None."""
        found = self.values(name)
        return ", ".join(found) if found else None


@dataclass(slots=True)
class _State:
    phase: int = 0  # 0: before/inside the request line, 1: header fields
    mode: int = _KEEP
    cr: bool = False  # _SKIP_VALUE only: the piece ended with CR, LF must come next
    seen: int = 0  # head bytes consumed so far (for max_head)
    method: bytes = b""
    target: bytes = b""
    minor: int = 1
    kept: list[tuple[int, bytes]] = field(default_factory=list)
    buf: bytes = b""


def feed_head(state: bytes, data: bytes, *, max_head: int = 16384) -> tuple[bytes, HttpRequest | None, int]:
    """Consume bytes of a request head.

    `state` is b"" at the start, else the blob a previous call returned.  Returns
    (new_state, request_or_None, consumed): the request is set once the head is complete,
    and then new_state is b"" again; `consumed` counts the bytes of `data` used (bytes after
    the blank line belong to the body or the next request).  Raises HeadError for malformed
    input, including a malformed `state`.
    """
    st = _decode(state, max_head)
    pos = 0
    end_of_data = len(data)
    while pos < end_of_data:
        newline = data.find(b"\n", pos)
        end = end_of_data if newline < 0 else newline + 1
        if st.seen + (end - pos) > max_head:
            raise HeadError(413, "request head too large")
        st.seen += end - pos
        line = _advance(st, data[pos:end], complete=newline >= 0)
        pos = end
        if line is not None:
            request = _take_line(st, line)
            if request is not None:
                return b"", request, pos
    return _encode(st), None, pos


def _advance(st: _State, piece: bytes, *, complete: bool) -> bytes | None:
    """Add `piece` (ending in LF iff `complete`) to the current line.

    Returns the finished line (without CR LF) if it must still be interpreted, else None.
    """
    body = piece[:-1] if complete else piece
    if st.mode == _KEEP:
        st.buf += body
        if complete:
            line, st.buf = st.buf, b""
            return line[:-1] if line.endswith(b"\r") else line
        _settle(st)
        return None
    if st.mode == _SKIP_NAME:
        colon = body.find(b":")
        if colon < 0:
            if complete or not _TOKEN_OR_EMPTY.fullmatch(body):
                raise HeadError(400, "malformed header field name")
            return None
        if not _TOKEN_OR_EMPTY.fullmatch(body, 0, colon):
            raise HeadError(400, "malformed header field name")
        st.mode = _SKIP_VALUE
        body = body[colon + 1 :]
    elif st.cr:
        # The previous piece ended in CR: this piece must be exactly the LF.
        if body or not complete:
            raise HeadError(400, "bare CR in header field")
        st.cr = False
        st.mode = _KEEP
        return None
    _skip_value(st, body, complete=complete)
    return None


def _skip_value(st: _State, body: bytes, *, complete: bool) -> None:
    """Validate a fragment of a dropped field's value without keeping it."""
    if body.endswith(b"\r"):
        body = body[:-1]
        st.cr = not complete
    if _BAD_VALUE.search(body):
        raise HeadError(400, "invalid character in header field")
    if complete:
        st.mode = _KEEP


def _settle(st: _State) -> None:
    """Bound the unfinished line: drop it as soon as it is known to be an irrelevant field."""
    buf = st.buf
    if st.phase == 0:
        parts = buf.split(b" ", 2)
        if len(buf) > _MAX_REQUEST_LINE or (len(parts) > 1 and len(parts[1]) > MAX_TARGET):
            raise HeadError(414, "request line too long")
        return
    colon = buf.find(b":")
    if colon < 0:
        if buf in (b"", b"\r"):  # possibly the blank line ending the head
            return
        if not _TOKEN.fullmatch(buf):
            raise HeadError(400, "malformed header field name")
        if len(buf) > _MAX_RELEVANT_NAME:
            st.mode, st.buf = _SKIP_NAME, b""
        return
    name = buf[:colon]
    if not _TOKEN.fullmatch(name):
        raise HeadError(400, "malformed header field name")
    if name.lower() in _RELEVANT_INDEX:
        # The value so far, trimmed, is part of the final value: already too long means 431.
        value = buf[colon + 1 :].strip(b" \t\r")
        if len(buf.removesuffix(b"\r")) > _MAX_KEPT_LINE or len(value) > MAX_FIELD_VALUE:
            raise HeadError(431, "header field too large")
        return
    st.mode, st.buf = _SKIP_VALUE, b""
    _skip_value(st, buf[colon + 1 :], complete=False)


def _take_line(st: _State, line: bytes) -> HttpRequest | None:
    """Interpret a complete line; returns the request when it was the final blank line."""
    if b"\r" in line:
        raise HeadError(400, "bare CR in request head")
    if st.phase == 0:
        # RFC 9112 2.2: ignore empty lines received before the request line.
        if line:
            _request_line(st, line)
        return None
    if not line:
        return _finish(st)
    if line[0] in b" \t":
        raise HeadError(400, "obsolete line folding")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise HeadError(400, "malformed header field")
    if _BAD_VALUE.search(value):
        raise HeadError(400, "invalid character in header field")
    index = _RELEVANT_INDEX.get(name.lower())
    if index is None:
        return None
    value = value.strip(b" \t")
    # Same bound as _settle applies to an unfinished line, so splitting never changes the outcome.
    too_long = len(line) > _MAX_KEPT_LINE or len(value) > MAX_FIELD_VALUE
    too_many = len(st.kept) >= MAX_KEPT_FIELDS
    if too_long or too_many or len(value) + sum(len(v) for _, v in st.kept) > MAX_RETAINED:
        raise HeadError(431, "header field too large")
    st.kept.append((index, value))
    return None


def _request_line(st: _State, line: bytes) -> None:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HeadError(400, "malformed request line")
    method, target, version = parts
    if len(method) > MAX_METHOD or not _TOKEN.fullmatch(method):
        raise HeadError(400, "malformed method")
    if len(target) > MAX_TARGET:
        raise HeadError(414, "request target too long")
    if not target or _BAD_TARGET.search(target):
        raise HeadError(400, "malformed request target")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HeadError(400, "malformed HTTP version")
    if match[1] != b"1":
        raise HeadError(505, "HTTP version not supported")
    st.phase, st.method, st.target = 1, method, target
    # RFC 9110 2.5: a higher minor version is handled as the highest one we implement.
    st.minor = 0 if match[2] == b"0" else 1


def _finish(st: _State) -> HttpRequest:
    headers = tuple((RELEVANT_HEADERS[i], v.decode("latin-1")) for i, v in st.kept)
    request = HttpRequest(
        method=st.method.decode("ascii"),
        target=st.target.decode("ascii"),
        version=f"1.{st.minor}",
        headers=headers,
    )
    hosts = request.values("host")
    if len(hosts) > 1 or (request.version == "1.1" and not hosts):
        raise HeadError(400, "exactly one Host field is required")  # RFC 9112 3.2
    lengths = {part.strip() for value in request.values("content-length") for part in value.split(",")}
    if len(lengths) > 1 or any(not (v.isdigit() and v.isascii()) for v in lengths):
        raise HeadError(400, "invalid Content-Length")
    codings = request.values("transfer-encoding")
    if codings:
        # RFC 9112 6.1/6.3: TE in HTTP/1.0 or together with Content-Length means bad framing.
        if request.version == "1.0" or lengths:
            raise HeadError(400, "ambiguous message framing")
        names = [c.strip().lower() for value in codings for c in value.split(",")]
        if names != ["chunked"]:
            raise HeadError(501, "unsupported transfer coding")
    return request


# -- state blob -------------------------------------------------------------------------------
# Layout: tag, flags (phase | mode << 1 | cr << 3), varint seen, [method, target, minor when
# phase 1], count of kept fields, (index, value)*, unfinished line.  Lengths are varints.


def _encode(st: _State) -> bytes:
    if st.phase == 0 and st.seen == 0 and not st.buf:
        return b""
    out = bytearray((_FORMAT, st.phase | st.mode << 1 | st.cr << 3))
    put_varint(out, st.seen)
    if st.phase:
        put_bytes(out, st.method)
        put_bytes(out, st.target)
        out.append(st.minor)
    out.append(len(st.kept))
    for index, value in st.kept:
        out.append(index)
        put_bytes(out, value)
    put_bytes(out, st.buf)
    return bytes(out)


def _state_reader(blob: bytes) -> VarintReader:
    return VarintReader(blob, lambda what: HeadError(400, f"corrupt parser state ({what})"), max_bits=28)


def _decode(blob: bytes, max_head: int) -> _State:
    st = _State()
    if not blob:
        return st
    bad = HeadError(400, "corrupt parser state")
    r = _state_reader(blob)
    if r.byte() != _FORMAT:
        raise bad
    flags = r.byte()
    st.phase, st.mode, st.cr = flags & 1, flags >> 1 & 3, bool(flags & 8)
    if flags >> 4 or st.mode > _SKIP_VALUE or (st.cr and st.mode != _SKIP_VALUE):
        raise bad
    if st.mode != _KEEP and not st.phase:
        raise bad
    st.seen = r.varint(max_head)
    if st.phase:
        st.method = r.bytes(MAX_METHOD)
        st.target = r.bytes(MAX_TARGET)
        st.minor = r.byte()
        if not _TOKEN.fullmatch(st.method) or not st.target or _BAD_TARGET.search(st.target):
            raise bad
        if st.minor > 1:
            raise bad
    count = r.byte()
    if count > MAX_KEPT_FIELDS:
        raise bad
    kept = st.kept
    for _ in range(count):
        index = r.byte()
        value = r.bytes(MAX_FIELD_VALUE)
        if index >= len(RELEVANT_HEADERS) or _BAD_VALUE.search(value):
            raise bad
        kept.append((index, value))
    if (kept and not st.phase) or sum(len(v) for _, v in kept) > MAX_RETAINED:
        raise bad
    st.buf = r.bytes(_MAX_REQUEST_LINE if st.phase == 0 else _MAX_KEPT_LINE)
    if r.pos != len(blob) or b"\n" in st.buf or (st.buf and st.mode != _KEEP):
        raise bad
    return st
