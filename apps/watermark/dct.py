"""Pixels to quantised DCT coefficients in MCU order (and back to luma coefficients for detection).

Colour conversion is Pillow's (the JFIF YCbCr transform, in C); chroma subsampling, the 8x8 DCT-II
and quantisation are whole-image numpy operations. The image is padded to whole MCUs by repeating
its last row and column, as libjpeg does, so edge blocks carry no false high frequencies.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from .jfif import Geometry, quant_tables
from .tables import ZIGZAG

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
Plane = F32 | U8
Coefs = npt.NDArray[np.int16]

_K = np.arange(8)
_DCT = np.sqrt(np.where(_K == 0, 1 / 8, 2 / 8))[:, None] * np.cos(
    (2 * _K[None, :] + 1) * _K[:, None] * np.pi / 16
)
DCT8 = _DCT.astype(np.float32)  # orthonormal: X = D x D^T, x = D^T X D
_KRON = np.kron(DCT8, DCT8)  # vec(D x D^T) = kron(D, D) vec(x), row-major vec


def _pad(plane: U8, rows: int, cols: int) -> U8:
    extra = ((0, rows - plane.shape[0]), (0, cols - plane.shape[1])) + ((0, 0),) * (plane.ndim - 2)
    return plane if not any(e for _, e in extra) else np.pad(plane, extra, mode="edge")


def forward(plane: Plane, qtable: npt.NDArray[np.int32]) -> Coefs:
    """Level-shifted DCT of every 8x8 block, quantised: (H/8, W/8, 64) in zigzag order."""
    h, w = plane.shape
    x = plane.reshape(h // 8, 8, w // 8, 8).swapaxes(1, 2).reshape(-1, 64).astype(np.float32)
    x -= np.float32(128)
    # One matrix product does the 2-D DCT, the zigzag reordering and the division by the table.
    m = (_KRON[ZIGZAG] / qtable[ZIGZAG, None].astype(np.float32)).T
    q = (x @ m).reshape(h // 8, w // 8, 64)
    np.rint(q, out=q)
    np.clip(q, -1023, 1023, out=q)
    return q.astype(np.int16)


def _subsample(plane: U8, h: int, v: int) -> F32:
    rows, cols = plane.shape
    total = plane.reshape(rows // v, v, cols // h, h).sum(axis=(1, 3), dtype=np.uint16)
    out: F32 = total.astype(np.float32) * np.float32(1 / (h * v))
    return out


def _to_mcus(coefs: Coefs, h: int, v: int) -> Coefs:
    """(rows, cols, 64) blocks of one component -> (n_mcu, v*h, 64) in MCU raster order."""
    rows, cols, _ = coefs.shape
    g = coefs.reshape(rows // v, v, cols // h, h, 64).transpose(0, 2, 1, 3, 4)
    return g.reshape(-1, v * h, 64)


def quantise(image: Image.Image, geo: Geometry, quality: int) -> Coefs:
    """The image (mode L or RGB) as quantised coefficients, shape (n_mcu, blocks per MCU, 64)."""
    luma_q, chroma_q = quant_tables(quality)
    cols, rows = geo.mcus
    mw, mh = geo.mcu_px
    if geo.gray:
        y = _pad(np.asarray(image), rows * mh, cols * mw)
        return _to_mcus(forward(y, luma_q), 1, 1)
    ycc = _pad(np.asarray(image.convert("YCbCr")), rows * mh, cols * mw)
    parts = [_to_mcus(forward(ycc[..., 0], luma_q), geo.h, geo.v)]
    for c in (1, 2):
        sub = _subsample(ycc[..., c], geo.h, geo.v)
        parts.append(_to_mcus(forward(sub, chroma_q), 1, 1))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def luma_blocks(y: U8, qtable: npt.NDArray[np.int32], h: int, v: int) -> Coefs:
    """Luma coefficients of a decoded image, (n_mcu, v*h, 64), for reading a watermark back."""
    mw, mh = 8 * h, 8 * v
    rows, cols = -(-y.shape[0] // mh), -(-y.shape[1] // mw)
    return _to_mcus(forward(_pad(y, rows * mh, cols * mw), qtable), h, v)
