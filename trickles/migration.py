"""Event migration (``msk_extractEvents`` / ``msk_insertEvents``): pending events as one sealed blob.

An event is fully determined by the datagram that caused it, the client address and the arrival
time, so that is what travels. The blob is a :mod:`trickles.tokens` token of purpose ``EVENTS``
(MAC'd under the key ring's current key, stamped with the extraction time), so nobody can inject
events that skip verification, and the replay filter lets a blob insert once within the freshness
horizon. Layout of the body: ``PROTOCOL.md`` appendix A.
"""

from __future__ import annotations

from trickles import tokens
from trickles.errors import MalformedPacket
from trickles.keys import KeyRing
from trickles.minisocket import PendingEvent
from trickles.replay import ReplayFilter


def seal_events(ring: KeyRing, events: list[PendingEvent], now: float) -> bytes:
    """The blob carrying ``events`` (their datagram, client address and arrival time each)."""
    parts = [len(events).to_bytes(2, "big")]
    for ev in events:
        parts += [
            len(ev.data).to_bytes(2, "big"),
            ev.data,
            len(ev.addr).to_bytes(1, "big"),
            ev.addr,
            int(ev.now * 1e6).to_bytes(8, "big"),
        ]
    return tokens.seal(ring.current, tokens.EVENTS, tokens.now_ms(now), b"".join(parts))


def open_events(
    ring: KeyRing, replay: ReplayFilter, blob: bytes, now: float, horizon_ms: int, skew_ms: int
) -> list[tuple[bytes, bytes, float]]:
    """Verify a blob from :func:`seal_events`, record it as used, and return its events as
    (datagram, client address, arrival time).

    Raises MalformedPacket, UnknownKeyId, BadMac, Stale or Replay (a blob inserts once).
    """
    now_ms = tokens.now_ms(now)
    body = tokens.open_untrusted(ring, tokens.EVENTS, blob, now_ms, horizon_ms, skew_ms).body
    rkeys = [hash((blob[-tokens.MAC_LEN :], "events"))]
    replay.check(rkeys, tokens.HEAD.unpack_from(blob)[1], now_ms)
    replay.add(rkeys, now_ms)
    n, pos = int.from_bytes(body[0:2], "big"), 2
    out: list[tuple[bytes, bytes, float]] = []
    try:
        for _ in range(n):
            dl = int.from_bytes(body[pos : pos + 2], "big")
            data = body[pos + 2 : pos + 2 + dl]
            pos += 2 + dl
            al = body[pos]
            addr = body[pos + 1 : pos + 1 + al]
            pos += 1 + al
            t = int.from_bytes(body[pos : pos + 8], "big") / 1e6
            pos += 8
            out.append((data, addr, t))
    except IndexError:
        raise MalformedPacket("truncated event blob") from None
    return out


__all__ = ["open_events", "seal_events"]
