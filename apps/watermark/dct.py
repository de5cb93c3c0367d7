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
Coefs = npt.NDArray[np.int16]

_K = np.arange(8)
_DCT = np.sqrt(np.where(_K == 0, 1 / 8, 2 / 8))[:, None] * np.cos(
    (2 * _K[None, :] + 1) * _K[:, None] * np.pi / 16
)
DCT8 = _DCT.astype(np.float32)  # orthonormal: X = D x D^T, x = D^T X D


def _pad(plane: F32, rows: int, cols: int) -> F32:
    return np.pad(plane, ((0, rows - plane.shape[0]), (0, cols - plane.shape[1])), mode="edge")


def _blocks(plane: F32) -> F32:
    """(H, W) -> (H/8, W/8, 8, 8)."""
    h, w = plane.shape
    return plane.reshape(h // 8, 8, w // 8, 8).swapaxes(1, 2)


def forward(plane: F32, qtable: npt.NDArray[np.int32]) -> Coefs:
    """Level-shifted DCT of every 8x8 block, quantised: (H/8, W/8, 64) in zigzag order."""
    blk = _blocks(plane - np.float32(128))
    coef = DCT8 @ blk @ DCT8.T
    q = coef.reshape(*coef.shape[:2], 64)[..., ZIGZAG] / qtable[ZIGZAG].astype(np.float32)
    return np.clip(np.rint(q), -1023, 1023).astype(np.int16)


def _subsample(plane: F32, h: int, v: int) -> F32:
    rows, cols = plane.shape
    return plane.reshape(rows // v, v, cols // h, h).mean(axis=(1, 3), dtype=np.float32)


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
        y = np.asarray(image, dtype=np.float32)
        return _to_mcus(forward(_pad(y, rows * mh, cols * mw), luma_q), 1, 1)
    ycc = np.asarray(image.convert("YCbCr"), dtype=np.float32)
    parts = [_to_mcus(forward(_pad(ycc[..., 0], rows * mh, cols * mw), luma_q), geo.h, geo.v)]
    for c in (1, 2):
        sub = _subsample(_pad(ycc[..., c], rows * mh, cols * mw), geo.h, geo.v)
        parts.append(_to_mcus(forward(sub, chroma_q), 1, 1))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def luma_blocks(y: F32, qtable: npt.NDArray[np.int32], h: int, v: int) -> Coefs:
    """Luma coefficients of a decoded image, (n_mcu, v*h, 64), for reading a watermark back."""
    mw, mh = 8 * h, 8 * v
    rows, cols = -(-y.shape[0] // mh), -(-y.shape[1] // mw)
    return _to_mcus(forward(_pad(y, rows * mh, cols * mw), qtable), h, v)
