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

The PRF input binds the connection id and the nonce epoch, so nonces are not reused across
connections, nor across the packet numbers a retransmit timeout reuses: block ``b`` is
``AES_K(conn_id:64 | epoch:16 | 0:16 | b:32)`` and ``g(i)`` is 32-bit word ``i mod 4`` of block
``i div 4``. Retransmitted packets draw their nonces from the same construction under K' (the
``renonce`` key), so seeing a retransmission teaches nothing about the original's nonce.

The PRF evaluations of an ordinary request (the proof check and the children's nonces) are made with
one AES-ECB call on a reused encryptor; a request that starts a new piece under another key or epoch,
or that retransmits, needs one more.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from trickles.keys import ServerKey

_PREFIX = struct.Struct(">QHH")  # conn_id, epoch, zero; the 32-bit block number follows


_WORDS_N: dict[int, struct.Struct] = {}


def prf(key: ServerKey, conn_id: int, epoch: int, idx: Sequence[int], retransmit: bool = False) -> list[int]:
    """``g(i)`` for every ``i`` in ``idx`` (one AES call for all of them)."""
    blocks = sorted({i >> 2 for i in idx})
    n = len(blocks)
    st = _WORDS_N.get(n)
    if st is None:
        st = _WORDS_N[n] = struct.Struct(f">{4 * n}I")
    prefix = _PREFIX.pack(conn_id, epoch, 0)
    words = st.unpack(key.prf_blocks(b"".join([prefix + b.to_bytes(4, "big") for b in blocks]), retransmit))
    if n == 1:
        return [words[i & 3] for i in idx]
    pos = {b: 4 * j for j, b in enumerate(blocks)}
    return [words[pos[i >> 2] + (i & 3)] for i in idx]


def packet_nonces(
    key: ServerKey, conn_id: int, epoch: int, seqs: Sequence[int], retransmit: bool = False
) -> list[int]:
    """``n(i) = g(i) XOR g(i+1)`` for every packet number in ``seqs``."""
    idx: list[int] = []
    for s in seqs:
        idx.append(s)
        idx.append((s + 1) & 0xFFFFFFFF)
    g = prf(key, conn_id, epoch, idx, retransmit)
    return [g[2 * j] ^ g[2 * j + 1] for j in range(len(seqs))]


def range_summary(nonces: Sequence[int]) -> int:
    """XOR of a run of nonces (what the client sends for a contiguous range it received)."""
    x = 0
    for n in nonces:
        x ^= n
    return x


def proof_and_nonces(
    key: ServerKey,
    conn_id: int,
    epoch: int,
    proof: Sequence[tuple[int, int, int]],
    child_lo: int,
    child_hi: int,
) -> tuple[bool, list[int]]:
    """Check every ``(l, r, xor)`` proof block and compute nonces of packets ``child_lo..child_hi``.

    One AES call covers both. Returns (all blocks verify, nonces of the children).
    """
    idx: list[int] = []
    for l, r, _ in proof:
        idx.append(l)
        idx.append((r + 1) & 0xFFFFFFFF)
    n_proof = len(idx)
    idx.extend(range(child_lo, child_hi + 2))
    g = prf(key, conn_id, epoch, idx) if idx else []
    ok = True
    for j, (_, _, x) in enumerate(proof):
        ok &= (g[2 * j] ^ g[2 * j + 1]) == x
    nonces = [g[n_proof + j] ^ g[n_proof + j + 1] for j in range(child_hi - child_lo + 1)]
    return ok, nonces
