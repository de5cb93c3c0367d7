"""Per-packet nonces and SACK proofs (paper section 2.2).

Theory of operation
-------------------
A client must not be able to hide a loss: if it could claim packets it never received, it could keep
its window open through congestion. So each packet carries a nonce the client cannot predict, and the
client proves what it received by echoing a summary of those nonces.

Define a keyed PRF ``g(i)`` (32-bit words of AES-128 under the server key K) and give packet ``i`` the
nonce ``n(i) = g(i) XOR g(i+1)``. The XOR of the nonces of a contiguous run ``[l, r]`` then telescopes
to ``g(l) XOR g(r+1)``: the client summarises any run of received packets in one 32-bit word, and the
server checks it with two PRF evaluations whatever the run's length. The client cannot compute ``g``;
to produce the summary of a run it must have received every packet in it.

The PRF input binds the *piece* a packet belongs to: the connection id, the nonce epoch and the
piece's ``base``, ``start`` and ``ssthresh``, hashed into a 96-bit piece id (BLAKE2b). Block ``b`` is
``AES_K(piece_id:96 | b:32)`` and ``g(i)`` is 32-bit word ``i mod 4`` of block ``i div 4``. So a
packet number is never given the same nonce twice for two different transmissions: not across
connections, not across the numbers a retransmit timeout reuses (new epoch), and not across the
numbers a fast recovery reissues when a client fakes an earlier hole (new base/window; Savage et
al.'s loss hiding would otherwise let it prove receipt of a packet it lost with a copy it holds).
Packet numbers stay below :data:`trickles.wire.MAX_SEQ`, so ``r + 1`` never wraps.

Retransmitted packets draw their nonces from the same construction under K' (the
``renonce`` key), so seeing a retransmission teaches nothing about the original's nonce.

The PRF evaluations of an ordinary loss-free request (the proof check and the children's nonces,
same piece) are made with one AES-ECB call on a reused encryptor; a request that starts a new piece
verifies its proof first and then needs one more call for the children (and one for retransmits).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Final

from trickles.keys import ServerKey

_PIECE: Final = struct.Struct(">QHIHH")  # conn_id, epoch, base, start, ssthresh
_piece_pack: Final = _PIECE.pack  # Final: C statics in the compiled build, not dict lookups
_blake2b: Final = hashlib.blake2b


def piece_id(conn_id: int, epoch: int, base: int, start: int, ssthresh: int) -> bytes:
    """The 96-bit prefix of every PRF block of one loss-free piece (see the module docstring)."""
    return _blake2b(_piece_pack(conn_id, epoch, base, start, ssthresh), digest_size=12).digest()


def prf(key: ServerKey, piece: bytes, idx: Sequence[int], retransmit: bool = False) -> list[int]:
    """``g(i)`` for every ``i`` in ``idx`` (one AES call for all of them)."""
    # One block per index, repeats included: ECB encrypts each block alone, so a repeated block
    # costs the AES call a few nanoseconds, less than finding the distinct blocks (a set, a sort,
    # a position map) did. Word ``i & 3`` of the ``j``-th block is ``g(idx[j])``, read big-endian
    # straight from the output (per-byte reads are plain C in the compiled build).
    out = key.prf_blocks(b"".join([piece + (i >> 2).to_bytes(4, "big") for i in idx]), retransmit)
    g: list[int] = []
    o = 0
    for i in idx:
        p = o + 4 * (i & 3)
        g.append((out[p] << 24) | (out[p + 1] << 16) | (out[p + 2] << 8) | out[p + 3])
        o += 16
    return g


def packet_nonces(key: ServerKey, piece: bytes, seqs: Sequence[int], retransmit: bool = False) -> list[int]:
    """``n(i) = g(i) XOR g(i+1)`` for every packet number in ``seqs`` of ``piece``."""
    idx: list[int] = []
    for s in seqs:
        idx.append(s)
        idx.append(s + 1)
    g = prf(key, piece, idx, retransmit)
    return [g[2 * j] ^ g[2 * j + 1] for j in range(len(seqs))]


def range_summary(nonces: Sequence[int]) -> int:
    """XOR of a run of nonces (what the client sends for a contiguous range it received)."""
    x = 0
    for n in nonces:
        x ^= n
    return x


def proof_and_nonces(
    key: ServerKey,
    piece: bytes,
    proof: Sequence[tuple[int, int, int]],
    child_lo: int,
    child_hi: int,
) -> tuple[bool, list[int]]:
    """Check every ``(l, r, xor)`` proof block and compute nonces of packets ``child_lo..child_hi``
    of the same piece. One AES call covers both. Returns (all blocks verify, nonces of the children).
    """
    idx: list[int] = []
    for first, last, _ in proof:
        idx.append(first)
        idx.append(last + 1)
    n_proof = len(idx)
    if child_hi >= child_lo:
        for i in range(child_lo, child_hi + 2):
            idx.append(i)
    g = prf(key, piece, idx) if idx else []
    ok = True
    j = 0
    for _, _, x in proof:
        ok &= (g[j] ^ g[j + 1]) == x
        j += 2
    nonces = [g[n_proof + j] ^ g[n_proof + j + 1] for j in range(child_hi - child_lo + 1)]
    return ok, nonces


def verify_proof(key: ServerKey, piece: bytes, proof: Sequence[tuple[int, int, int]]) -> bool:
    """Whether every proof block verifies (two PRF words per block, one AES call)."""
    return proof_and_nonces(key, piece, proof, 0, -1)[0]
