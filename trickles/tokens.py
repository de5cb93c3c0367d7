"""Sealed tokens: the one MAC-protected format for everything the server hands out and takes back.

A stateless server gives its state away and must recognise it when it returns: transport
continuations, migrated event blobs, the apps' input and output continuations. All of them are
*tokens* of one shape::

    token = key_id:8 issued_ms:32 body mac:128
    mac   = HMAC-SHA256(K_purpose, key_id | issued_ms | body | bind)[:16]

* ``key_id`` names the key of the :class:`~trickles.keys.KeyRing` that sealed it (rotation).
* ``issued_ms`` is the sealing server's clock in milliseconds mod 2**32; a token is *fresh* while its
  age lies in ``[-skew, max_age]`` (replicas' clocks differ by at most ``skew``).
* ``K_purpose`` is derived from the master secret per purpose (HKDF, :meth:`ServerKey.purpose_mac`),
  so a token minted for one purpose never opens as another, even with an identical body.
* ``bind`` is context the token is bound to without carrying it (the client's address for transport
  continuations): the same bytes presented from elsewhere do not verify.

The MAC is checked before freshness, so tampering with the time reads as tampering.
"""

from __future__ import annotations

import hmac
import struct
from typing import Final, NamedTuple

from trickles.errors import BadMac, MalformedPacket, Stale
from trickles.keys import KeyRing, ServerKey

HEAD: Final = struct.Struct(">BI")
HEAD_LEN: Final = HEAD.size  # 5
MAC_LEN: Final = 16
OVERHEAD: Final = HEAD_LEN + MAC_LEN  # 21
U32: Final = 0xFFFFFFFF

# Purposes (HKDF info suffixes). One per kind of token; never reuse one for a second format.
TRANSPORT: Final = b"transport continuation"
EVENTS: Final = b"event blob"
APP_INPUT: Final = b"app input continuation"
APP_OUTPUT: Final = b"app output continuation"


class Opened(NamedTuple):
    key_id: int
    issued_ms: int
    body: bytes


def now_ms(now: float) -> int:
    """Seconds (float) to the tokens' clock: milliseconds mod 2**32."""
    return int(now * 1000) & U32


def age_ms(issued_ms: int, now: int) -> int:
    """How old a token issued at ``issued_ms`` is at ``now`` (both mod 2**32); negative if ahead."""
    age = (now - issued_ms) & U32
    return age - (U32 + 1) if age > (U32 >> 1) else age


def check_fresh(issued_ms: int, now: int, max_age_ms: int, skew_ms: int) -> None:
    """Raise :class:`Stale` unless the age lies within ``[-skew_ms, max_age_ms]``."""
    age = age_ms(issued_ms, now)
    if age > max_age_ms or age < -skew_ms:
        raise Stale("token outside its freshness horizon")


def mac(key: ServerKey, purpose: bytes, signed: bytes, bind: bytes = b"") -> bytes:
    """The 16-byte MAC of ``signed`` (head and body) bound to ``bind``."""
    h = key.purpose_mac(purpose).copy()
    h.update(signed)
    if bind:
        h.update(bind)
    return h.digest()[:MAC_LEN]


def seal(key: ServerKey, purpose: bytes, issued_ms: int, body: bytes, bind: bytes = b"") -> bytes:
    signed = HEAD.pack(key.key_id, issued_ms & U32) + body
    return signed + mac(key, purpose, signed, bind)


def open_untrusted(
    ring: KeyRing,
    purpose: bytes,
    blob: bytes | memoryview,
    now: int,
    max_age_ms: int,
    skew_ms: int,
    bind: bytes = b"",
) -> Opened:
    """Verify a token and return its parts. Raises MalformedPacket, UnknownKeyId, BadMac or Stale."""
    if len(blob) < OVERHEAD:
        raise MalformedPacket("token too short")
    signed = bytes(blob[:-MAC_LEN])
    key = ring.get(signed[0])
    if not hmac.compare_digest(mac(key, purpose, signed, bind), bytes(blob[-MAC_LEN:])):
        raise BadMac("token MAC does not verify")
    key_id, issued = HEAD.unpack_from(signed)
    check_fresh(issued, now, max_age_ms, skew_ms)
    return Opened(key_id, issued, signed[HEAD_LEN:])
