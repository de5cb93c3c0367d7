"""Static files over Trickles: the HTTP app behind the minisocket API, stateless per connection.

An HTTP request head arrives as INPUT segments. While it is incomplete the app answers with an
*input continuation* (paper section 4.2): the compact parser state of :func:`feed_head` plus the
input offset it expects next, MAC-protected. When the head is complete the app plans the response
(:meth:`StaticSite.plan`) and answers with an *output continuation* (section 4.3): the plan's token,
MAC-protected, valid for the bytes ``[region start, region start + response length)``. Every later
FETCH carries that continuation back, and the app regenerates exactly the requested bytes from it.
Nothing is remembered between packets except bounded, droppable caches (open files in the site,
decoded plans here).

The continuations are :mod:`trickles.tokens` of their own purposes (each carries its key id, so a
rotation does not break responses in flight, and its issue time): every replica that shares the
ring accepts them, for ``max_age`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict

from trickles import tokens
from trickles.apps.http_head import HeadError, feed_head
from trickles.apps.static import ContentChanged, ResponsePlan, StaticSite, TokenError
from trickles.errors import TricklesError
from trickles.keys import KeyRing
from trickles.minisocket import EventKind, Minisocket
from trickles.wire import CHUNK_DATA, REGION_SHIFT, FetchSeg, UcontKind

ERR_CONTENT_CHANGED = 409
ERR_BAD_CONTINUATION = 400
SKEW_MS = 60_000
"""How far ahead of this server's clock another replica's issue time may lie."""


class StaticHttpApp:
    """Serve a directory over Trickles (GET/HEAD, ranges, conditionals, listings)."""

    def __init__(
        self, site: StaticSite, ring: KeyRing, plan_cache: int = 4096, max_age: float = 86400.0
    ) -> None:
        self.site = site
        self.ring = ring
        self.max_age = max_age
        self._max_age_ms = int(max_age * 1000)
        self._plans: OrderedDict[tuple[bytes, bytes], ResponsePlan] = OrderedDict()
        self._plan_cache = plan_cache
        self.requests = 0
        self.errors = 0
        self.content_changed = 0

    # -- sealing ------------------------------------------------------------------------------------

    def _seal(self, purpose: bytes, body: bytes, now: float, bind: bytes = b"") -> bytes:
        return tokens.seal(self.ring.current, purpose, tokens.now_ms(now), body, bind)

    def _open(self, purpose: bytes, blob: bytes, now: float, bind: bytes = b"") -> bytes | None:
        try:
            return tokens.open_untrusted(
                self.ring, purpose, blob, tokens.now_ms(now), self._max_age_ms, SKEW_MS, bind
            ).body
        except TricklesError:
            return None

    def _plan_of(self, blob: bytes, now: float, peer: bytes) -> ResponsePlan | None:
        # Output continuations are bound to the client's address: a response planned for one client
        # (a watermarked copy names it) cannot be fetched with its continuation from elsewhere.
        cache_key = (blob, peer)
        plan = self._plans.get(cache_key)
        if plan is not None:
            # A cached plan skips the MAC (it verified when cached), never the freshness check.
            issued = tokens.HEAD.unpack_from(blob)[1]
            if -SKEW_MS <= tokens.age_ms(issued, tokens.now_ms(now)) <= self._max_age_ms:
                return plan
        token = self._open(tokens.APP_OUTPUT, blob, now, peer)
        if token is None:
            return None
        try:
            plan = self.site.from_token(token)
        except TokenError:
            return None
        self._plans[cache_key] = plan
        if len(self._plans) > self._plan_cache:
            self._plans.popitem(last=False)
        return plan

    # -- events -------------------------------------------------------------------------------------

    def handle(self, msk: Minisocket) -> None:
        for slot, inp in enumerate(msk.inputs):
            self._input(msk, slot, inp.region, inp.offset, inp.ucont, inp.data)
        slots = msk.fetch_slots()
        i = 0
        while i < len(slots):
            # The ranges of one segment come from one response: read them together.
            seg = slots[i][1]
            j = i + 1
            while j < len(slots) and slots[j][1] is seg:
                j += 1
            self._fetch(msk, slots[i:j])
            i = j

    def _fetch(self, msk: Minisocket, group: list[tuple[int, FetchSeg, int, int]]) -> None:
        seg = group[0][1]
        region = group[0][2] >> REGION_SHIFT
        plan = self._plan_of(seg.ucont, msk.now, msk.peer)
        if plan is None:
            self.errors += 1
            for slot, _, _, _ in group:
                msk.send_error(slot, region, ERR_BAD_CONTINUATION, b"bad output continuation")
            return
        base = region << REGION_SHIFT
        want = [
            (start - base, min(length, msk.capacity(slot) - CHUNK_DATA.size))
            for slot, _, start, length in group
        ]
        try:
            pieces = self.site.read_many(plan, want)
        except ContentChanged:
            self.content_changed += 1
            for slot, _, _, _ in group:
                msk.send_error(slot, region, ERR_CONTENT_CHANGED, b"content changed under an open response")
            return
        except OSError:
            self.errors += 1
            for slot, _, _, _ in group:
                msk.send_error(slot, region, 500, b"read error")
            return
        for (slot, _, start, _), data in zip(group, pieces, strict=True):
            msk.send_data(slot, start, data)

    def _input(self, msk: Minisocket, slot: int, region: int, offset: int, ucont: bytes, data: bytes) -> None:
        state = b""
        if ucont:
            body = self._open(tokens.APP_INPUT, ucont, msk.now)
            if body is None or len(body) < 8 or int.from_bytes(body[-8:], "big") != offset:
                msk.send_error(slot, region, ERR_BAD_CONTINUATION, b"bad input continuation")
                return
            state = body[:-8]
        elif offset != 0:
            msk.send_error(slot, region, ERR_BAD_CONTINUATION, b"input without continuation")
            return
        try:
            state, req, used = feed_head(state, data)
        except HeadError as e:
            plan = self.site.error_plan(e.status, msk.now)
            self._answer(msk, slot, region, offset + len(data), plan)
            return
        if req is None:
            blob = self._seal(tokens.APP_INPUT, state + (offset + used).to_bytes(8, "big"), msk.now)
            msk.set_ucont(slot, UcontKind.INPUT_MORE, region, offset + used, 0, 0, blob)
            return
        if msk.kind == EventKind.OPEN and self.site.expensive(req):
            # SYN data comes from a claimed address: a costly response (a watermarked image) is not
            # planned for a spoofer. "Send it again" (nothing consumed); it returns after the handshake.
            blob = self._seal(tokens.APP_INPUT, bytes(8), msk.now)
            msk.set_ucont(slot, UcontKind.INPUT_MORE, region, 0, 0, 0, blob)
            return
        self.requests += 1
        self._answer(msk, slot, region, offset + used, self.site.plan(req, msk.now, msk.peer))

    def _answer(self, msk: Minisocket, slot: int, region: int, consumed: int, plan: ResponsePlan) -> None:
        start = region << REGION_SHIFT
        blob = self._seal(tokens.APP_OUTPUT, plan.to_token(), msk.now, msk.peer)
        if not msk.set_ucont(
            slot, UcontKind.OUTPUT, region, consumed, start, start + plan.total_length, blob
        ):
            msk.send_error(slot, region, 431, b"response continuation too large")
            return
        room = msk.capacity(slot) - CHUNK_DATA.size
        if room > 0 and plan.total_length:
            try:
                msk.send_data(slot, start, self.site.read(plan, 0, room))
            except (ContentChanged, OSError):
                pass  # the client will fetch these bytes and get the error then
