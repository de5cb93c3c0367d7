"""A watermarked response, decided once: what it is made of, its HTTP head, and its token.

The token is the body of the response's output continuation (sealed by the app as an
``APP_OUTPUT`` :mod:`trickles.tokens` token, so it is MAC-protected and fresh). It carries everything
the bytes depend on: the file version, the encoder settings, the client identity, the scan length
and the checkpoints (see ``docs/PROTOCOL.md``, "Watermark continuations"). Its first byte, ``0x57``
("W"), tells it apart from static-file tokens, whose version byte is 1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise

from trickles.apps.http_semantics import REASONS, http_date
from trickles.apps.response_plan import Kind, PlanOrigin, ResponsePlan, TokenError
from trickles.apps.varint import VarintReader, put_bytes, put_varint

from .checkpoints import Checkpoint
from .entropy import BitState
from .jfif import EOI, Geometry, header
from .source import MESSAGE, STATUS, Reason

TOKEN_VERSION = 0x57
MAX_CHECKPOINTS = 256
_MAX_PATH = 4096
_MAX_DATE = 253402300799
REASONS_WM = {**REASONS, 415: "Unsupported Media Type"}


class WmKind(IntEnum):
    IMAGE = 1
    ERROR = 2


@dataclass(frozen=True, slots=True)
class WmOrigin:
    """Everything a watermarked response stream is derived from."""

    kind: WmKind
    head: bool
    date: int
    reason: Reason = Reason.NOT_FOUND  # ERROR
    path: bytes = b""  # IMAGE: relative to the watermark root
    ino: int = 0
    mtime_ns: int = 0
    size: int = 0
    geometry: Geometry = Geometry(1, 1, 1, 1, True)
    quality: int = 90
    restart: int = 0
    identity: bytes = b""
    key_id: int = 0  # the server key whose watermark key marked the copy
    scan_length: int = 0
    checkpoints: tuple[Checkpoint, ...] = ()

    @property
    def status(self) -> int:
        return 200 if self.kind is WmKind.IMAGE else STATUS[self.reason]


@dataclass(frozen=True, slots=True)
class WmPlan(ResponsePlan):
    """A watermarked response; a :class:`ResponsePlan` so the transports handle it unchanged."""

    wm: WmOrigin = WmOrigin(WmKind.ERROR, False, 0)
    jpeg_head: bytes = b""
    key: bytes = b""  # names this exact response in app-wide caches (a digest of its token)

    def to_token(self) -> bytes:
        return encode(self.wm)


def _error_body(reason: Reason) -> bytes:
    return f"{STATUS[reason]} {REASONS_WM[STATUS[reason]]}: {MESSAGE[reason]}\n".encode("ascii")


def make_plan(o: WmOrigin) -> WmPlan:
    """The plan of ``o``; planning and token decoding both end here, hence identical bytes."""
    status = o.status
    lines = [f"HTTP/1.1 {status} {REASONS_WM[status]}", "Server: trickles", f"Date: {http_date(o.date)}"]
    jpeg_head = b""
    if o.kind is WmKind.IMAGE:
        jpeg_head = header(o.geometry, o.quality, o.restart)
        length = len(jpeg_head) + o.scan_length + len(EOI)
        # Every client's copy differs: shared caches must not hand one client's copy to another,
        # and a proxy that recompresses images would damage the mark.
        lines += ["Content-Type: image/jpeg", f"Content-Length: {length}"]
        lines += ["Cache-Control: private, no-transform", "Vary: *"]
    else:
        length = len(_error_body(o.reason))
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {length}"]
        if o.reason is Reason.METHOD:
            lines.append("Allow: GET, HEAD")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    origin = PlanOrigin(Kind.FIXED, status, o.head, o.date)  # unused by this app: see WmPlan.wm
    key = hashlib.sha256(encode(o)).digest()[:16]
    return WmPlan(status, head_bytes, 0 if o.head else length, origin, o, jpeg_head, key)


def body_part(plan: WmPlan) -> bytes:
    """The fixed body of an error response."""
    return _error_body(plan.wm.reason)


# -- token ----------------------------------------------------------------------------------------


def _zz(v: int) -> int:
    return v * 2 if v >= 0 else -v * 2 - 1


def _unzz(v: int) -> int:
    return v >> 1 if not v & 1 else -(v >> 1) - 1


def encode(o: WmOrigin) -> bytes:
    out = bytearray((TOKEN_VERSION, o.kind, o.head))
    put_varint(out, o.date)
    if o.kind is WmKind.ERROR:
        out.append(o.reason)
        return bytes(out)
    put_bytes(out, o.path)
    for v in (o.ino, _zz(o.mtime_ns), o.size, o.geometry.width, o.geometry.height):
        put_varint(out, v)
    g = o.geometry
    out += bytes((g.h << 4 | g.v, g.gray, o.quality))
    put_varint(out, o.restart)
    put_bytes(out, o.identity)
    out.append(o.key_id)
    put_varint(out, o.scan_length)
    put_varint(out, len(o.checkpoints))
    mcu = off = 0
    for cp in o.checkpoints:
        put_varint(out, cp.mcu - mcu)
        put_varint(out, cp.offset - off)
        out.append((1 << cp.state.nbits) | cp.state.bits)  # a leading 1 marks how many bits pend
        for p in cp.state.preds:
            put_varint(out, _zz(p))
        out += cp.check.to_bytes(2, "big")
        mcu, off = cp.mcu, cp.offset
    return bytes(out)


def decode(token: bytes) -> WmOrigin:
    """The origin of a token; raises TokenError for anything :func:`encode` could not produce."""
    r = VarintReader(bytes(token), lambda what: TokenError(f"{what} watermark token"))
    if r.byte() != TOKEN_VERSION:
        raise TokenError("not a watermark token")
    try:
        kind = WmKind(r.byte())
    except ValueError:
        raise TokenError("bad watermark token kind") from None
    head = r.byte()
    date = r.varint(_MAX_DATE)
    if head > 1:
        raise TokenError("bad watermark token flags")
    if kind is WmKind.ERROR:
        try:
            reason = Reason(r.byte())
        except ValueError:
            raise TokenError("bad watermark error reason") from None
        o = WmOrigin(kind, bool(head), date, reason)
    else:
        o = _decode_image(r, bool(head), date)
    if r.pos != len(r.blob):
        raise TokenError("trailing bytes in watermark token")
    return o


def _decode_image(r: VarintReader, head: bool, date: int) -> WmOrigin:
    path = r.bytes(_MAX_PATH)
    ino, mtime, size = r.varint(2**64 - 1), _unzz(r.varint(2**65)), r.varint(2**63 - 1)
    width, height = r.varint(65535), r.varint(65535)
    hv, gray, quality = r.byte(), r.byte(), r.byte()
    geo = Geometry(width, height, hv >> 4, hv & 15, bool(gray))
    if not (width and height and gray < 2 and 1 <= quality <= 100 and {geo.h, geo.v} <= {1, 2}):
        raise TokenError("bad watermark geometry")
    restart = r.varint(65535)
    identity = r.bytes(16)
    key_id = r.byte()
    scan_length = r.varint(2**40)
    cps: list[Checkpoint] = []
    mcu = off = 0
    n_mcu = geo.mcus[0] * geo.mcus[1]
    for _ in range(r.varint(MAX_CHECKPOINTS)):
        mcu += r.varint(n_mcu)
        off += r.varint(scan_length)
        code = r.byte()
        nbits = code.bit_length() - 1
        preds = tuple(_unzz(r.varint(8191)) for _ in range(geo.n_comp))
        check = r.byte() << 8 | r.byte()
        state = BitState(nbits, code & ((1 << nbits) - 1) if nbits >= 0 else 0, preds)
        cps.append(Checkpoint(mcu, off, state, check))
    ok = bool(cps) and cps[0].mcu == 0 and cps[0].offset == 0 and len(identity) in (4, 16)
    ok = ok and all(a.mcu < b.mcu and a.offset < b.offset for a, b in pairwise(cps))
    ok = ok and cps[-1].mcu < n_mcu and cps[-1].offset < max(scan_length, 1)
    if not ok or any(cp.state.nbits < 0 for cp in cps):
        raise TokenError("bad watermark checkpoints")
    return WmOrigin(WmKind.IMAGE, head, date, Reason.NOT_FOUND, path, ino, mtime, size, geo, quality,
                    restart, identity, key_id, scan_length, tuple(cps))  # fmt: skip
