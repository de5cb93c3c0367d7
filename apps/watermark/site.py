"""The watermarking site: ``GET /wm/NAME.jpg`` answers a copy of ``NAME.jpg`` marked for the client.

:class:`WatermarkSite` has the interface of :class:`~trickles.apps.static.StaticSite` (``plan``,
``from_token``, ``read``), so the Trickles app and the TCP fallback serve it unchanged;
:class:`MountedSite` puts it under a URL prefix of a static site. ``plan`` runs the marked encoder
once and keeps only checkpoints; ``read`` regenerates any byte range from the covering checkpoint.

App-wide, bounded, droppable caches: decoded and quantised sources (by bytes), and recently coded
scan pieces between two checkpoints (by bytes; consecutive packets of a response then cost one
coding of a checkpoint interval instead of one each). Neither holds anything a response needs.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from trickles.apps.file_cache import ContentChanged
from trickles.apps.http_head import HttpRequest
from trickles.apps.http_semantics import BadTarget, clamp_date, split_target
from trickles.apps.response_plan import ResponsePlan, read_ranges
from trickles.apps.static import StaticSite
from trickles.errors import UnknownKeyId
from trickles.keys import KeyRing, ServerKey

from .cache import ByteLRU
from .checkpoints import Marker, between, cover, interval_check, scan
from .dct import Coefs
from .embed import MarkKey, embed, identity_of
from .entropy import ScanLayout
from .jfif import EOI
from .plan import TOKEN_VERSION, WmKind, WmOrigin, WmPlan, body_part, decode, make_plan
from .source import Identity, Reason, Source, SourceError, load


@dataclass(frozen=True, slots=True)
class WatermarkConfig:
    quality: int = 90
    restart: int = 0  # restart interval of the output in MCUs (0: none)
    max_pixels: int = 40_000_000
    max_file_bytes: int = 64 * 1024 * 1024
    source_cache_bytes: int = 512 * 1024 * 1024
    span_cache_bytes: int = 32 * 1024 * 1024
    max_checkpoints: int = 32  # bounds the continuation (about 13 bytes per checkpoint)
    min_interval: int = 4096  # output bytes between checkpoints, at least


class WatermarkSite:
    """Serve ``root``'s JPEGs, each client its own marked copy (see the module docstring)."""

    def __init__(
        self, root: str | os.PathLike[str], ring: KeyRing | ServerKey, config: WatermarkConfig | None = None
    ) -> None:
        real = os.path.realpath(os.fsencode(root))
        if not os.path.isdir(real):
            raise NotADirectoryError(f"watermark root is not a directory: {root!r}")
        self.root = real
        self._prefix = real.rstrip(b"/") + b"/"
        self.config = config or WatermarkConfig()
        # The ring, not a key: a key-file reload (SIGHUP) is seen at once. Copies are marked with the
        # current key and regenerated with the key they were marked with, while the ring holds it.
        self.ring = ring if isinstance(ring, KeyRing) else KeyRing(ring)
        self._marks: dict[ServerKey, MarkKey] = {}
        self.sources: ByteLRU[Source] = ByteLRU(self.config.source_cache_bytes, lambda s: s.nbytes)
        self.spans: ByteLRU[bytes] = ByteLRU(self.config.span_cache_bytes, len)
        self.planned = 0
        self.regenerated_bytes = 0

    # -- the site interface ---------------------------------------------------------------------

    def plan(self, req: HttpRequest, now: float, client: bytes = b"", rel: str = "") -> WmPlan:
        """Decide the response to ``req`` (``rel``: the path below the mount) for ``client``."""
        date, head = clamp_date(now), req.method == "HEAD"
        try:
            if req.method not in ("GET", "HEAD"):
                raise SourceError(Reason.METHOD)
            ident = identity_of(client)
            if not ident:
                raise SourceError(Reason.NO_IDENTITY)
            path, src = self._source_for(rel)
            return self._plan_image(path, src, ident, date, head)
        except SourceError as e:
            return make_plan(WmOrigin(WmKind.ERROR, head, date, e.reason))

    def from_token(self, token: bytes) -> WmPlan:
        return make_plan(decode(token))

    def read(self, plan: ResponsePlan, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the response stream, clipped to its length."""
        assert isinstance(plan, WmPlan)
        start, stop = max(0, offset), min(plan.total_length, max(0, offset) + max(0, length))
        if start >= stop:
            return b""
        head = plan.header_bytes
        out = head[start:stop]
        if stop > len(head):
            out += self._body(plan, max(0, start - len(head)), stop - len(head))
        return out

    def read_many(self, plan: ResponsePlan, ranges: list[tuple[int, int]]) -> list[bytes]:
        """``read`` for several ranges of one response, with one read over their span."""
        return read_ranges(self.read, plan, ranges)

    def drop_caches(self) -> None:
        self.sources.clear()
        self.spans.clear()

    # -- planning -------------------------------------------------------------------------------

    def _source_for(self, rel: str) -> tuple[bytes, Source]:
        try:
            segments, trailing, _ = split_target("/" + rel)
        except BadTarget:
            raise SourceError(Reason.NOT_FOUND) from None
        path = b"/".join(segments)
        if trailing or not path or not path.lower().endswith((b".jpg", b".jpeg")):
            raise SourceError(Reason.NOT_FOUND)
        try:
            st = os.stat(self._prefix + path)
        except OSError:
            raise SourceError(Reason.NOT_FOUND) from None
        if not os.path.realpath(self._prefix + path).startswith(self._prefix):
            raise SourceError(Reason.NOT_FOUND)  # a symlink out of the root
        return path, self._source(path, st)

    def _source(self, path: bytes, st: os.stat_result) -> Source:
        c = self.config
        key = (path, Identity.of(st), c.quality)
        src = self.sources.get(key)
        if src is None:
            src = load(self._prefix + path, st, c.quality, c.max_pixels, c.max_file_bytes)
            self.sources.put(key, src)
        return src

    def _plan_image(self, path: bytes, src: Source, ident: bytes, date: int, head: bool) -> WmPlan:
        c, key = self.config, self.ring.current
        layout = self._layout(src)
        mark = self._marker(src, ident, key)
        length, cps = scan(src.coefs, layout, mark, c.max_checkpoints, c.min_interval)
        self.planned += 1
        i = src.identity
        origin = WmOrigin(WmKind.IMAGE, head, date, Reason.NOT_FOUND, path, i.ino, i.mtime_ns, i.size,
                          src.geometry, c.quality, c.restart, ident, key.key_id, length, cps)  # fmt: skip
        return make_plan(origin)

    def _layout(self, src: Source) -> ScanLayout:
        return ScanLayout(src.geometry.slot_comp, src.coefs.shape[0], self.config.restart)

    def mark_key(self, key: ServerKey) -> MarkKey:
        mk = self._marks.get(key)
        if mk is None:
            if len(self._marks) > 8:
                self._marks.clear()  # keys come and go with reloads: keep only recent ones
            mk = self._marks[key] = MarkKey(key)
        return mk

    def _marker(self, src: Source, ident: bytes, server_key: ServerKey) -> Marker:
        n_luma = 1 if src.geometry.gray else src.geometry.h * src.geometry.v
        key = self.mark_key(server_key)

        def mark(blocks: Coefs, m0: int) -> None:
            embed(blocks[:, :n_luma], m0 * n_luma, key, ident)

        return mark

    # -- reading --------------------------------------------------------------------------------

    def _body(self, plan: WmPlan, start: int, stop: int) -> bytes:
        o = plan.wm
        if o.kind is WmKind.ERROR:
            return body_part(plan)[start:stop]
        jh = plan.jpeg_head
        out = jh[start:stop]
        scan_lo, scan_hi = max(start - len(jh), 0), min(stop - len(jh), o.scan_length)
        if scan_lo < scan_hi:
            out += self._scan_bytes(plan, scan_lo, scan_hi)
        tail = len(jh) + o.scan_length
        if stop > tail:
            out += EOI[max(start - tail, 0) : stop - tail]
        return out

    def _scan_bytes(self, plan: WmPlan, lo: int, hi: int) -> bytes:
        o = plan.wm
        src = self._current_source(o)
        i, j = cover(o.checkpoints, o.scan_length, lo, hi)
        pieces = [self._interval(plan, src, k) for k in range(i, j)]
        base = o.checkpoints[i].offset
        return b"".join(pieces)[lo - base : hi - base]

    def _interval(self, plan: WmPlan, src: Source, k: int) -> bytes:
        """The scan bytes between checkpoints ``k`` and ``k + 1``: cached, or coded from ``k``."""
        o = plan.wm
        piece = self.spans.get((plan.key, k))
        if piece is None:
            cps = o.checkpoints
            mark = self._marker(src, o.identity, self._key_of(o))
            piece = between(src.coefs, self._layout(src), mark, cps, k, k + 1)
            end = cps[k + 1].offset if k + 1 < len(cps) else o.scan_length
            if len(piece) != end - cps[k].offset or interval_check(piece) != cps[k].check:
                raise ContentChanged("regenerated scan does not match its checkpoints")
            self.regenerated_bytes += len(piece)
            self.spans.put((plan.key, k), piece)
        return piece

    def _key_of(self, o: WmOrigin) -> ServerKey:
        try:
            return self.ring.get(o.key_id)
        except UnknownKeyId as e:
            raise ContentChanged(f"key {o.key_id} that marked this copy has been retired") from e

    def _current_source(self, o: WmOrigin) -> Source:
        """The source the plan was made from, or ContentChanged if the file is another version now."""
        try:
            st = os.stat(self._prefix + o.path)
        except OSError as e:
            raise ContentChanged(f"{o.path!r} is gone") from e
        if not stat.S_ISREG(st.st_mode) or Identity.of(st) != Identity(o.ino, o.mtime_ns, o.size):
            raise ContentChanged(f"{o.path!r} changed since the plan was made")
        try:
            src = self._source(o.path, st)
        except SourceError as e:
            raise ContentChanged(f"{o.path!r} no longer decodes") from e
        if src.geometry != o.geometry:
            raise ContentChanged(f"{o.path!r} decodes differently")
        return src


class MountedSite(StaticSite):
    """A static site with the watermarking site mounted at ``prefix`` (e.g. ``/wm/``).

    A subclass rather than a wrapper so that both transports, typed for a StaticSite, take it as is.
    """

    def __init__(
        self, root: str | os.PathLike[str], wm: WatermarkSite, prefix: str = "/wm/", **kw: object
    ) -> None:
        super().__init__(root, **kw)  # type: ignore[arg-type]
        self.wm = wm
        self.prefix = "/" + prefix.strip("/") + "/"

    def _mounted(self, req: HttpRequest) -> str | None:
        """The path below the prefix if ``req`` is for the watermark site."""
        path = req.target.partition("?")[0]
        if path.startswith(self.prefix) and req.version in ("1.0", "1.1"):
            return path[len(self.prefix) :]
        return None

    def plan(self, req: HttpRequest, now: float, client: bytes = b"") -> ResponsePlan:
        rel = self._mounted(req)
        return super().plan(req, now, client) if rel is None else self.wm.plan(req, now, client, rel)

    def expensive(self, req: HttpRequest) -> bool:
        return self._mounted(req) is not None

    def from_token(self, token: bytes) -> ResponsePlan:
        if token[:1] == bytes([TOKEN_VERSION]):
            return self.wm.from_token(token)
        return super().from_token(token)

    def read(self, plan: ResponsePlan, offset: int, length: int) -> bytes:
        if isinstance(plan, WmPlan):
            return self.wm.read(plan, offset, length)
        return super().read(plan, offset, length)

    def read_many(self, plan: ResponsePlan, ranges: list[tuple[int, int]]) -> list[bytes]:
        if isinstance(plan, WmPlan):
            return self.wm.read_many(plan, ranges)
        return super().read_many(plan, ranges)

    def drop_caches(self) -> None:
        super().drop_caches()
        self.wm.drop_caches()

    close = drop_caches
