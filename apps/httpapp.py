"""Static files over Trickles: the HTTP app behind the minisocket API, stateless per connection.

An HTTP request head arrives as INPUT segments. While it is incomplete the app answers with an
*input continuation* (paper section 4.2): the compact parser state of :func:`feed_head` plus the
input offset it expects next, MAC-protected. When the head is complete the app plans the response
(:meth:`StaticSite.plan`) and answers with an *output continuation* (section 4.3): the plan's token,
MAC-protected, valid for the bytes ``[region start, region start + response length)``. Every later
FETCH carries that continuation back, and the app regenerates exactly the requested bytes from it.
Nothing is remembered between packets except bounded, droppable caches (open files in the site,
decoded plans here).

The continuations are sealed with a key derived from the server's master secret, so every replica
that shares the key ring accepts them.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict

from trickles.apps.http_head import HeadError, feed_head
from trickles.apps.static import ContentChanged, ResponsePlan, StaticSite, TokenError
from trickles.engine import Minisocket
from trickles.keys import ServerKey
from trickles.wire import CHUNK_DATA, REGION_SHIFT, UcontKind

MAC_LEN = 16
ERR_CONTENT_CHANGED = 409
ERR_BAD_CONTINUATION = 400
_IN = b"i"
_OUT = b"o"


class StaticHttpApp:
    """Serve a directory over Trickles (GET/HEAD, ranges, conditionals, listings)."""

    def __init__(self, site: StaticSite, key: ServerKey, plan_cache: int = 4096) -> None:
        self.site = site
        self._key = hmac.digest(key.mac, b"trickles/1 app continuations", "sha256")
        self._plans: OrderedDict[bytes, ResponsePlan] = OrderedDict()
        self._plan_cache = plan_cache
        self.requests = 0
        self.errors = 0
        self.content_changed = 0

    # -- sealing ------------------------------------------------------------------------------------

    def _seal(self, kind: bytes, body: bytes) -> bytes:
        return body + hmac.digest(self._key, kind + body, "sha256")[:MAC_LEN]

    def _open(self, kind: bytes, blob: bytes) -> bytes | None:
        body, mac = blob[:-MAC_LEN], blob[-MAC_LEN:]
        if len(blob) < MAC_LEN or not hmac.compare_digest(
            hmac.digest(self._key, kind + body, "sha256")[:MAC_LEN], mac
        ):
            return None
        return body

    def _plan_of(self, blob: bytes) -> ResponsePlan | None:
        plan = self._plans.get(blob)
        if plan is not None:
            return plan
        token = self._open(_OUT, blob)
        if token is None:
            return None
        try:
            plan = self.site.from_token(token)
        except TokenError:
            return None
        self._plans[blob] = plan
        if len(self._plans) > self._plan_cache:
            self._plans.popitem(last=False)
        return plan

    # -- events -------------------------------------------------------------------------------------

    def handle(self, msk: Minisocket) -> None:
        for slot, inp in enumerate(msk.inputs):
            self._input(msk, slot, inp.region, inp.offset, inp.ucont, inp.data)
        for slot, seg, start, length in msk.fetch_slots():
            region = start >> REGION_SHIFT
            plan = self._plan_of(seg.ucont)
            if plan is None:
                self.errors += 1
                msk.send_error(slot, region, ERR_BAD_CONTINUATION, b"bad output continuation")
                continue
            off = start - (region << REGION_SHIFT)
            try:
                data = self.site.read(plan, off, min(length, msk.capacity(slot) - CHUNK_DATA.size))
            except ContentChanged:
                self.content_changed += 1
                msk.send_error(slot, region, ERR_CONTENT_CHANGED, b"content changed under an open response")
                continue
            except OSError:
                self.errors += 1
                msk.send_error(slot, region, 500, b"read error")
                continue
            msk.send_data(slot, start, data)

    def _input(self, msk: Minisocket, slot: int, region: int, offset: int, ucont: bytes, data: bytes) -> None:
        state = b""
        if ucont:
            body = self._open(_IN, ucont)
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
            blob = self._seal(_IN, state + (offset + used).to_bytes(8, "big"))
            msk.set_ucont(slot, UcontKind.INPUT_MORE, region, offset + used, 0, 0, blob)
            return
        self.requests += 1
        self._answer(msk, slot, region, offset + used, self.site.plan(req, msk.now))

    def _answer(self, msk: Minisocket, slot: int, region: int, consumed: int, plan: ResponsePlan) -> None:
        start = region << REGION_SHIFT
        blob = self._seal(_OUT, plan.to_token())
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
