"""Server keys: one master secret per key id, three derived keys, and a two-key ring for rotation.

From each master secret we derive, with HKDF-SHA256 (RFC 5869), three independent keys:

* ``mac``     -- HMAC-SHA256 key that seals transport continuations (and app continuations);
* ``nonce``   -- AES-128 key of the nonce PRF ``g(i)`` for packets sent the first time (K in the paper);
* ``renonce`` -- AES-128 key of the PRF for retransmitted packets (K' in the paper), so the nonce of a
  retransmission never helps forge a SACK proof for the lost original.

A :class:`KeyRing` holds the *current* key, which seals, and optionally the *previous* one, which still
opens continuations during a rotation. Replicas that share the ring can serve each other's packets.
The AES encryptors are created once per key and reused: ECB keeps no state between ``update`` calls,
and building a cipher object per packet would cost more than the whole per-packet budget.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trickles.errors import UnknownKeyId

MASTER_LEN = 32


class MacState(Protocol):
    """A keyed HMAC-SHA256 state: copy it, feed the copy, take its digest."""

    def copy(self) -> MacState: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def keyed_sha256(key: bytes) -> MacState:
    """The HMAC-SHA256 state of ``key`` with its key schedule done, for one copy per message.

    The stdlib ``hmac.HMAC`` wraps OpenSSL's HMAC object in Python-level ``copy``/``update``/
    ``digest`` methods (1.44 us per MAC here); OpenSSL's object itself, which ``hmac`` builds with
    ``_hashlib.hmac_new``, does the same in C calls only (0.84 us). Same MACs either way
    (``tests/core/test_vectors.py``); where the interpreter lacks ``_hashlib``, the wrapper.
    """
    try:
        import _hashlib

        state: MacState = _hashlib.hmac_new(key, digestmod="sha256")
    except (ImportError, AttributeError, ValueError):
        state = hmac.new(key, digestmod="sha256")
    return state


def _hkdf(master: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


@dataclass(eq=False)
class ServerKey:
    """The keys derived from one master secret under one key id (0..255)."""

    key_id: int
    master: bytes = field(repr=False)
    mac: bytes = field(init=False, repr=False)
    mac_state: MacState = field(init=False, repr=False)
    nonce: bytes = field(init=False, repr=False)
    renonce: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 255:
            raise ValueError("key id must fit in one byte")
        if len(self.master) < 16:
            raise ValueError("master secret must be at least 16 bytes")
        self.mac = _hkdf(self.master, b"trickles/1 continuation mac", 32)
        self.nonce = _hkdf(self.master, b"trickles/1 nonce K", 16)
        self.renonce = _hkdf(self.master, b"trickles/1 retransmit nonce K'", 16)
        # The HMAC key schedule is computed once; each MAC copies this state.
        self.mac_state = keyed_sha256(self.mac)
        self._enc = Cipher(algorithms.AES(self.nonce), modes.ECB()).encryptor()
        self._renc = Cipher(algorithms.AES(self.renonce), modes.ECB()).encryptor()
        self._purpose: dict[bytes, MacState] = {}

    def purpose_mac(self, purpose: bytes) -> MacState:
        """The HMAC-SHA256 state (key schedule done) of the token key for ``purpose``; copy it to use.

        Each purpose has its own key, derived from the master secret with HKDF, so a token minted for
        one purpose never verifies as another (see :mod:`trickles.tokens`).
        """
        state = self._purpose.get(purpose)
        if state is None:
            derived = _hkdf(self.master, b"trickles/1 token " + purpose, 32)
            state = self._purpose[purpose] = keyed_sha256(derived)
        return state

    def derive(self, purpose: bytes, length: int = 32) -> bytes:
        """An independent secret for ``purpose`` outside the protocol (e.g. a sprayer's hash key)."""
        return _hkdf(self.master, b"trickles/1 derived " + purpose, length)

    def prf_blocks(self, blocks: bytes, retransmit: bool = False) -> bytes:
        """AES-ECB of a concatenation of 16-byte blocks under K (or K')."""
        return (self._renc if retransmit else self._enc).update(blocks)


class KeyRing:
    """The current sealing key plus, during a rotation, the previous one (which still opens)."""

    def __init__(self, current: ServerKey, previous: ServerKey | None = None) -> None:
        if previous is not None and previous.key_id == current.key_id:
            raise ValueError("current and previous keys need different key ids")
        self.current = current
        self.previous = previous
        self._by_id = {k.key_id: k for k in self._keys(current, previous)}

    @staticmethod
    def _keys(*keys: ServerKey | None) -> Iterable[ServerKey]:
        return (k for k in keys if k is not None)

    @classmethod
    def from_master(cls, master: bytes, key_id: int = 1) -> KeyRing:
        return cls(ServerKey(key_id, master))

    def get(self, key_id: int) -> ServerKey:
        try:
            return self._by_id[key_id]
        except KeyError:
            raise UnknownKeyId(f"no key with id {key_id}") from None

    def replace(self, other: KeyRing) -> None:
        """Take ``other``'s keys in place (a reloaded key file), so every holder of this ring sees
        them at once. A key whose id and secret are unchanged keeps its object (and its caches)."""
        same = {
            k.key_id: mine
            for k in self._keys(other.current, other.previous)
            if (mine := self._by_id.get(k.key_id)) is not None and hmac.compare_digest(mine.master, k.master)
        }
        self.current = same.get(other.current.key_id, other.current)
        prev = other.previous
        self.previous = None if prev is None else same.get(prev.key_id, prev)
        self._by_id = {k.key_id: k for k in self._keys(self.current, self.previous)}

    @property
    def key_ids(self) -> tuple[int, ...]:
        """The ids this ring opens, the current one first (safe to log: ids are not secrets)."""
        return tuple(k.key_id for k in self._keys(self.current, self.previous))

    def rotate(self, new: ServerKey) -> KeyRing:
        """A ring where ``new`` seals and the current key still opens; the previous one retires."""
        return KeyRing(new, self.current)
