"""Baseline JPEG entropy coding (Huffman, Annex F), vectorised with numpy, resumable mid-stream.

A Huffman-coded scan is a bit stream: where a coding unit (MCU) starts depends on every symbol coded
before it. :func:`encode_span` codes MCUs ``[m0, m1)`` from a :class:`BitState` -- the bits of the
current byte not yet complete and each component's DC predictor -- and returns the bytes on the wire
(0xFF stuffed with 0x00, restart markers in place) from the byte holding the first pending bit up to
the last *complete* byte, plus the state at ``m1``. Coding the scan in one pass, or in pieces chained
through their states, gives identical bytes; that is what lets a stateless server regenerate any
range from a recorded checkpoint (:mod:`.checkpoints`).

No Python loop runs per symbol: every block's symbols are laid out with array arithmetic, their bit
positions come from a cumulative sum, and the bits are packed into bytes with ``bincount``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .tables import HUFF_AC, HUFF_DC

I64 = npt.NDArray[np.int64]
I16 = npt.NDArray[np.int16]
U8 = npt.NDArray[np.uint8]

_SIZE = np.zeros(4096, dtype=np.int64)  # bit length of |v| (the "category" of a value)
for _n in range(1, 13):
    _SIZE[1 << (_n - 1) : 1 << _n] = _n
_DC_CODE = np.stack([t.code for t in HUFF_DC])
_DC_LEN = np.stack([t.size for t in HUFF_DC])
_AC_CODE = np.stack([t.code for t in HUFF_AC])
_AC_LEN = np.stack([t.size for t in HUFF_AC])
_ZRL, _EOB = 0xF0, 0x00
AC_LIMIT = 1023  # baseline 8-bit: AC categories up to 10
DC_LIMIT = 2047  # DC differences up to category 11


@dataclass(frozen=True, slots=True)
class ScanLayout:
    """Which component each block of an MCU belongs to, how many MCUs, how often a restart."""

    slot_comp: tuple[int, ...]  # component index of each block slot of an MCU
    n_mcu: int
    restart: int = 0  # restart interval in MCUs (DRI); 0: none

    @property
    def n_comp(self) -> int:
        return max(self.slot_comp) + 1

    def table_of(self, comp: int) -> int:
        """Huffman/quantisation table of a component: 0 for luma, 1 for both chroma components."""
        return 0 if comp == 0 else 1

    def at_restart(self, m: int) -> bool:
        """True if a restart marker precedes MCU ``m``."""
        return bool(self.restart) and 0 < m < self.n_mcu and m % self.restart == 0


@dataclass(frozen=True, slots=True)
class BitState:
    """The coder's state at an MCU boundary: ``nbits`` pending bits (value ``bits``), DC predictors."""

    nbits: int
    bits: int
    preds: tuple[int, ...]

    @classmethod
    def initial(cls, n_comp: int) -> BitState:
        return cls(0, 0, (0,) * n_comp)


@dataclass(frozen=True, slots=True)
class Span:
    """Coded MCUs ``[m0, m1)``: wire bytes from the first pending bit's byte, and the end state.

    With ``states``: for every MCU of the span, the offset (into ``data``) of the byte holding its
    first bit, its pending bit count and value, and its DC predictors (``preds[j, comp]``).
    """

    data: bytes
    end: BitState
    offsets: I64 | None = None
    nbits: I64 | None = None
    bits: I64 | None = None
    preds: I64 | None = None


def _categories(v: I64) -> tuple[I64, I64]:
    """Category (bit length of |v|) and the extra bits of each value (Annex F.1.2.1)."""
    s = _SIZE[np.abs(v)]
    extra = np.where(v < 0, v + (np.int64(1) << s) - 1, v)
    return s, extra


def _dc_predictors(dc: I64, comp: I64, seg_blk: I64, layout: ScanLayout, state: BitState) -> I64:
    """The predictor each block's DC difference is taken against (0 after a restart)."""
    prev = np.empty_like(dc)
    for c in range(layout.n_comp):
        idx = np.flatnonzero(comp == c)
        if not idx.size:
            continue
        p = np.empty(idx.size, dtype=np.int64)
        p[0] = state.preds[c]
        p[1:] = dc[idx[:-1]]
        s = seg_blk[idx]
        p[1:][s[1:] != s[:-1]] = 0
        prev[idx] = p
    return prev


def _events(flat: I16, tab: I64, prev: I64) -> tuple[I64, I64, I64]:
    """Every Huffman event of the blocks in stream order: (value, bit length), and events per block."""
    n_blk = flat.shape[0]
    s, extra = _categories(flat[:, 0].astype(np.int64) - prev)
    dc_val = (_DC_CODE[tab, s] << s) | extra
    dc_len = _DC_LEN[tab, s] + s
    ac = flat[:, 1:]
    nz = np.flatnonzero(ac)
    nzb = nz // 63
    k = nz - nzb * 63 + 1
    prevk = np.zeros_like(k)
    if k.size:
        prevk[1:] = k[:-1]
        prevk[np.r_[True, nzb[1:] != nzb[:-1]]] = 0
    run = k - prevk - 1
    z = run >> 4
    t256 = tab[nzb] << 8
    sa, ea = _categories(ac.ravel()[nz].astype(np.int64))
    sym = t256 | ((run & 15) << 4) | sa
    ac_val = (_AC_CODE.ravel()[sym] << sa) | ea
    ac_len = _AC_LEN.ravel()[sym] + sa
    last = np.zeros(n_blk, dtype=np.int64)
    if k.size:
        last[nzb] = k  # nonzero order is ascending within a block: the final write is the last one
    eob = last < 63
    per_block_ac = np.bincount(nzb, weights=z + 1, minlength=n_blk).astype(np.int64)
    count = 1 + per_block_ac + eob
    start = np.zeros(n_blk, dtype=np.int64)
    np.cumsum(count[:-1], out=start[1:])
    total = int(count.sum())
    val = np.empty(total, dtype=np.int64)
    ln = np.empty(total, dtype=np.int64)
    val[start] = dc_val
    ln[start] = dc_len
    if k.size:
        before = np.zeros(n_blk, dtype=np.int64)
        np.cumsum(per_block_ac[:-1], out=before[1:])
        ac_idx = start[nzb] + np.cumsum(z + 1) - before[nzb]
        val[ac_idx] = ac_val
        ln[ac_idx] = ac_len
        if z.any():
            owner = np.repeat(np.arange(z.size), z)
            first = np.zeros(z.size, dtype=np.int64)
            np.cumsum(z[:-1], out=first[1:])
            zidx = ac_idx[owner] - z[owner] + (np.arange(owner.size) - first[owner])
            zsym = t256[owner] | _ZRL
            val[zidx] = _AC_CODE.ravel()[zsym]
            ln[zidx] = _AC_LEN.ravel()[zsym]
    eob_idx = (start + count - 1)[eob]
    val[eob_idx] = _AC_CODE[tab[eob], _EOB]
    ln[eob_idx] = _AC_LEN[tab[eob], _EOB]
    return val, ln, count


def _pack(val: I64, ln: I64, pos: I64, size: int) -> U8:
    """OR each event's bits in at its bit position (MSB first); bits never overlap, so sums do."""
    out = np.zeros(size + 5, dtype=np.float64)
    word = val << (40 - ln - (pos & 7))
    base = pos >> 3
    for j in range(5):
        part = (word >> (32 - 8 * j)) & 0xFF
        out[: size + 5] += np.bincount(base + j, weights=part, minlength=size + 5)[: size + 5]
    return out[:size].astype(np.uint8)


def _wire(data: U8, markers: I64, numbers: I64) -> U8:
    """Stuff a 0x00 after every 0xFF data byte and insert RST markers at the given byte offsets."""
    ff = np.flatnonzero(data == 0xFF) + 1
    where = np.concatenate([ff, markers, markers])
    kind = np.concatenate([np.zeros(ff.size), np.ones(markers.size), np.full(markers.size, 2)])
    values = np.concatenate([np.zeros(ff.size, np.int64), np.full(markers.size, 0xFF), 0xD0 + numbers])
    order = np.lexsort((kind, where))
    return np.insert(data, where[order], values[order].astype(np.uint8))


def encode_span(
    blocks: I16,
    layout: ScanLayout,
    m0: int,
    state: BitState,
    *,
    states: bool = False,
) -> Span:
    """Code the MCUs ``blocks[j]`` (zigzag order, ``m0 + j`` in the scan) starting from ``state``."""
    n_m, bpm, _ = blocks.shape
    m1 = m0 + n_m
    if n_m == 0:
        return Span(b"", state)
    flat = np.ascontiguousarray(blocks, dtype=np.int16).reshape(-1, 64)
    slot_comp = np.asarray(layout.slot_comp, dtype=np.int64)
    comp = np.tile(slot_comp, n_m)
    tab = (comp != 0).astype(np.int64)
    r = layout.restart
    mcu = np.arange(m0, m1, dtype=np.int64)
    seg_m = (mcu // r - m0 // r) if r else np.zeros(n_m, dtype=np.int64)
    seg_blk = np.repeat(seg_m, bpm)
    prev = _dc_predictors(flat[:, 0].astype(np.int64), comp, seg_blk, layout, state)
    val, ln, count = _events(flat, tab, prev)
    seg_ev = np.repeat(seg_blk, count)
    n_seg = int(seg_m[-1]) + 1
    final = m1 == layout.n_mcu
    boundary_end = layout.at_restart(m1)
    seg_bits = np.bincount(seg_ev, weights=ln, minlength=n_seg).astype(np.int64)
    seg_bits[0] += state.nbits
    seg_bytes = (seg_bits + 7) >> 3
    if not (final or boundary_end):
        seg_bytes[-1] = seg_bits[-1] >> 3  # the last partial byte stays pending
    seg_start = np.zeros(n_seg, dtype=np.int64)
    np.cumsum(seg_bytes[:-1], out=seg_start[1:])
    cs = np.zeros(val.size, dtype=np.int64)
    np.cumsum(ln[:-1], out=cs[1:])
    first_ev = np.searchsorted(seg_ev, np.arange(n_seg))
    init = np.zeros(n_seg, dtype=np.int64)
    init[0] = state.nbits
    pos = 8 * seg_start[seg_ev] + cs - cs[first_ev][seg_ev] + init[seg_ev]
    complete = int(seg_start[-1] + seg_bytes[-1])
    alloc = int(seg_start[-1] + ((seg_bits[-1] + 7) >> 3))
    buf = _pack(val, ln, pos, alloc)
    if state.nbits:
        buf[0] |= state.bits << (8 - state.nbits)
    padded = np.arange(n_seg) < (n_seg if (final or boundary_end) else n_seg - 1)
    pad = (8 * seg_bytes - seg_bits)[padded]
    ends = (seg_start + seg_bytes - 1)[padded]
    buf[ends[pad > 0]] |= ((1 << pad[pad > 0]) - 1).astype(np.uint8)
    markers = seg_start[1:]
    numbers = (m0 // r + np.arange(1, n_seg) - 1) % 8 if r else np.zeros(0, dtype=np.int64)
    if boundary_end:
        markers = np.append(markers, complete)
        numbers = np.append(numbers, (m1 // r - 1) % 8)
    data = _wire(buf[:complete], markers, numbers.astype(np.int64))
    end = _end_state(buf, complete, seg_bits, flat, layout, bpm, final or boundary_end)
    if not states:
        return Span(data.tobytes(), end)
    return _with_states(data.tobytes(), end, buf, pos, count, seg_m, flat, layout, state)


def _last_dc(flat: I16, layout: ScanLayout, bpm: int) -> I64:
    """DC of the last block of each component in each MCU: ``out[j, comp]``."""
    dc = flat[:, 0].reshape(-1, bpm).astype(np.int64)
    last_slot = [max(i for i, c in enumerate(layout.slot_comp) if c == k) for k in range(layout.n_comp)]
    return dc[:, last_slot]


def _end_state(
    buf: U8, complete: int, seg_bits: I64, flat: I16, layout: ScanLayout, bpm: int, aligned: bool
) -> BitState:
    if aligned:
        return BitState.initial(layout.n_comp)
    nbits = int(seg_bits[-1] & 7)
    bits = int(buf[complete]) >> (8 - nbits) if nbits else 0
    preds = tuple(int(x) for x in _last_dc(flat, layout, bpm)[-1])
    return BitState(nbits, bits, preds)


def _with_states(
    data: bytes,
    end: BitState,
    buf: U8,
    pos: I64,
    count: I64,
    seg_m: I64,
    flat: I16,
    layout: ScanLayout,
    state: BitState,
) -> Span:
    bpm = len(layout.slot_comp)
    first_blk = np.arange(seg_m.size, dtype=np.int64) * bpm
    ev_start = np.zeros(count.size, dtype=np.int64)
    np.cumsum(count[:-1], out=ev_start[1:])
    p = pos[ev_start[first_blk]]
    byte = p >> 3
    nbits = p & 7
    padded_buf = np.append(buf, np.uint8(0)).astype(np.int64)
    bits = np.where(nbits > 0, padded_buf[byte] >> (8 - nbits), 0)
    ff_before = np.zeros(buf.size + 1, dtype=np.int64)
    np.cumsum(buf == 0xFF, out=ff_before[1:])
    offsets = byte + ff_before[byte] + 2 * seg_m
    preds = np.empty((seg_m.size, layout.n_comp), dtype=np.int64)
    preds[0] = state.preds
    preds[1:] = _last_dc(flat, layout, bpm)[:-1]
    preds[1:][seg_m[1:] != seg_m[:-1]] = 0
    return Span(data, end, offsets, nbits, bits, preds)
