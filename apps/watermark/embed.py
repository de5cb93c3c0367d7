"""The watermark: a keyed payload naming the client, in the parity of mid-frequency luma coefficients.

Payload: the client's IP address (4 bytes for IPv4, 16 for IPv6) followed by a 4-byte tag,
``HMAC(K_wm, "tag" | address)[:4]``; 64 or 160 bits. Every luma block offers the coefficients at
zigzag positions ``POSITIONS``; one whose magnitude is at least 2 carries payload bit ``idx`` XOR
``chip``, where ``idx`` and ``chip`` come from an AES-CTR keystream under ``K_wm`` at the block's
index (so any MCU range is marked without looking at the rest of the image). A coefficient whose
magnitude has the wrong parity moves one quantisation step (2 -> 3, otherwise towards zero), which
keeps it at magnitude >= 2: a reader selects exactly the coefficients the writer used.

``K_wm`` is derived from the server's master secret (:meth:`ServerKey.purpose_mac`), so only the
key holder reads the payload, and nobody without it can produce a copy whose tag verifies for an
address of their choosing.
"""

from __future__ import annotations

import ipaddress
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trickles.keys import ServerKey

PURPOSE: Final = b"watermark"
POSITIONS: Final = np.arange(1, 17)  # zigzag positions that may carry a payload bit
TAG_LEN: Final = 4
PAYLOAD_BITS: Final = (8 * (4 + TAG_LEN), 8 * (16 + TAG_LEN))  # IPv4, IPv6
_STREAM = 2 * len(POSITIONS)  # keystream bytes per block: (index byte, chip byte) per position

Blocks = npt.NDArray[np.int16]


def identity_of(addr: bytes) -> bytes:
    """The watermark identity of a packed transport address (IP + 2-byte port): the bare IP.

    IPv4-mapped IPv6 addresses are reduced to IPv4, so a dual-stack socket marks as the v4 address.
    """
    ip = addr[:-2] if len(addr) in (6, 18) else addr
    if len(ip) == 16 and ip[:12] == b"\0" * 10 + b"\xff\xff":
        return ip[12:]
    return ip if len(ip) in (4, 16) else b""


def describe(ident: bytes) -> str:
    """The identity as text (an IP address)."""
    return str(ipaddress.ip_address(ident))


class MarkKey:
    """The watermark key of one server key: payload tags and the per-block keystream."""

    def __init__(self, key: ServerKey) -> None:
        base = key.purpose_mac(PURPOSE)
        h = base.copy()
        h.update(b"chips")
        self._chip_key = h.digest()[:16]
        self._tag = base

    def tag(self, ident: bytes) -> bytes:
        h = self._tag.copy()
        h.update(b"tag" + ident)
        return h.digest()[:TAG_LEN]

    def payload(self, ident: bytes) -> npt.NDArray[np.int64]:
        """The payload bits (MSB first) of an identity."""
        raw = np.frombuffer(ident + self.tag(ident), dtype=np.uint8)
        return np.unpackbits(raw).astype(np.int64)

    def lanes(self, first_block: int, n_blocks: int, n_bits: int) -> tuple[npt.NDArray[np.int64], ...]:
        """(payload bit index, chip) for each position of luma blocks ``first_block ...``."""
        counter = (first_block * _STREAM // 16).to_bytes(16, "big")
        enc = Cipher(algorithms.AES(self._chip_key), modes.CTR(counter)).encryptor()
        ks = np.frombuffer(enc.update(bytes(n_blocks * _STREAM)), dtype=np.uint8)
        ks = ks.reshape(n_blocks, len(POSITIONS), 2).astype(np.int64)
        return (ks[..., 0] % n_bits).astype(np.int64), (ks[..., 1] & 1).astype(np.int64)


def embed(luma: Blocks, first_block: int, key: MarkKey, ident: bytes) -> None:
    """Mark luma blocks (``(..., 64)``, zigzag, indices from ``first_block`` in row-major order) in place."""
    bits = key.payload(ident)
    shape = (*luma.shape[:-1], len(POSITIONS))
    idx, chip = (x.reshape(shape) for x in key.lanes(first_block, int(np.prod(luma.shape[:-1])), bits.size))
    c = luma[..., POSITIONS].astype(np.int64)
    a = np.abs(c)
    change = (a >= 2) & ((a & 1) != (bits[idx] ^ chip))
    moved = np.where(a == 2, 3, a - 1) * np.sign(c)
    luma[..., POSITIONS] = np.where(change, moved, c).astype(np.int16)


def votes(luma: Blocks, key: MarkKey, n_bits: int) -> tuple[npt.NDArray[np.float64], int]:
    """Per payload bit, the sum of +1 (reads 1) / -1 (reads 0) over the carrying coefficients."""
    idx, chip = key.lanes(0, luma.shape[0], n_bits)
    a = np.abs(luma[:, POSITIONS].astype(np.int64))
    used = a >= 2
    reads = (a & 1) ^ chip
    tally = np.bincount(idx[used], weights=2.0 * reads[used] - 1, minlength=n_bits).astype(np.float64)
    return tally, int(used.sum())
