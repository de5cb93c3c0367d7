"""The marker segments around a baseline scan: SOI, APP0 (JFIF), DQT, SOF0, DHT, DRI, SOS ... EOI."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .tables import HUFF_AC, HUFF_DC, I32, STD_CHROMA_Q, STD_LUMA_Q, ZIGZAG, scaled_table

EOI = b"\xff\xd9"
_JFIF = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


@dataclass(frozen=True, slots=True)
class Geometry:
    """What the header describes: size, luma sampling factors (chroma is 1x1), components."""

    width: int
    height: int
    h: int  # luma horizontal sampling factor (1 or 2)
    v: int  # luma vertical sampling factor (1 or 2)
    gray: bool

    @property
    def n_comp(self) -> int:
        return 1 if self.gray else 3

    @property
    def mcu_px(self) -> tuple[int, int]:
        """MCU width and height in pixels."""
        return (8, 8) if self.gray else (8 * self.h, 8 * self.v)

    @property
    def mcus(self) -> tuple[int, int]:
        """MCU columns and rows."""
        w, h = self.mcu_px
        return -(-self.width // w), -(-self.height // h)

    @property
    def slot_comp(self) -> tuple[int, ...]:
        return (0,) if self.gray else (0,) * (self.h * self.v) + (1, 2)


def quant_tables(quality: int) -> tuple[I32, I32]:
    """Luma and chroma quantisation tables (natural order) for ``quality``."""
    return scaled_table(STD_LUMA_Q, quality), scaled_table(STD_CHROMA_Q, quality)


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def header(geo: Geometry, quality: int, restart: int) -> bytes:
    """Every byte of the file before the entropy-coded data."""
    luma, chroma = quant_tables(quality)
    tables = [luma] if geo.gray else [luma, chroma]
    dqt = b"".join(bytes([i]) + bytes(t[ZIGZAG].astype("u1")) for i, t in enumerate(tables))
    comps = [(1, (geo.h << 4 | geo.v) if not geo.gray else 0x11, 0)]
    if not geo.gray:
        comps += [(2, 0x11, 1), (3, 0x11, 1)]
    sof = struct.pack(">BHHB", 8, geo.height, geo.width, len(comps))
    sof += b"".join(bytes(c) for c in comps)
    dht = b""
    for i in range(len(tables)):
        for cls, table in ((0, HUFF_DC[i]), (1, HUFF_AC[i])):
            counts, symbols = table.spec
            dht += bytes([cls << 4 | i, *counts, *symbols])
    sos = bytes([len(comps)])
    sos += b"".join(bytes([cid, t << 4 | t]) for cid, _, t in comps)
    sos += b"\x00\x3f\x00"
    out = b"\xff\xd8" + _segment(0xE0, _JFIF) + _segment(0xDB, dqt) + _segment(0xC0, sof)
    out += _segment(0xC4, dht)
    if restart:
        out += _segment(0xDD, struct.pack(">H", restart))
    return out + _segment(0xDA, sos)
