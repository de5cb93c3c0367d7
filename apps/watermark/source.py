"""Source images: opened with Pillow under hard limits, turned into quantised coefficients once.

Every source is hostile until decoded: the file may not be a JPEG, may be truncated, 12-bit,
arithmetic-coded, CMYK or a decompression bomb. :func:`load` checks the byte size before reading and
the pixel count from the header before decoding, and turns every failure into a
:class:`SourceError` with an HTTP status and a stable reason code (the error page is regenerated
from that code alone).
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from enum import IntEnum

from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from .dct import Coefs, quantise
from .jfif import Geometry


class Reason(IntEnum):
    """Why a source cannot be served; each has a fixed status and message."""

    NOT_FOUND = 1
    NOT_JPEG = 2
    UNSUPPORTED = 3
    CORRUPT = 4
    TOO_LARGE = 5
    NO_IDENTITY = 6
    FORBIDDEN = 7
    METHOD = 8


STATUS = {
    Reason.NOT_FOUND: 404,
    Reason.NOT_JPEG: 415,
    Reason.UNSUPPORTED: 415,
    Reason.CORRUPT: 500,
    Reason.TOO_LARGE: 413,
    Reason.NO_IDENTITY: 403,
    Reason.FORBIDDEN: 403,
    Reason.METHOD: 405,
}
MESSAGE = {
    Reason.NOT_FOUND: "no such image",
    Reason.NOT_JPEG: "the source is not a JPEG image",
    Reason.UNSUPPORTED: "the source JPEG uses a variant that cannot be re-encoded (e.g. 12-bit)",
    Reason.CORRUPT: "the source JPEG is corrupt or truncated",
    Reason.TOO_LARGE: "the source image exceeds the server's size limit",
    Reason.NO_IDENTITY: "no client identity to watermark with",
    Reason.FORBIDDEN: "not a servable image",
    Reason.METHOD: "only GET and HEAD are allowed",
}


class SourceError(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(MESSAGE[reason])
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """The file version a response is made from."""

    ino: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class Source:
    """A decoded, quantised source: coefficients ``(n_mcu, blocks per MCU, 64)``, unwatermarked."""

    identity: Identity
    geometry: Geometry
    coefs: Coefs

    @property
    def nbytes(self) -> int:
        return int(self.coefs.nbytes) + 256


_SAMPLING = {0: (1, 1), 1: (2, 1), 2: (2, 2)}  # Pillow's get_sampling codes: 4:4:4, 4:2:2, 4:2:0


def load(path: bytes, st: os.stat_result, quality: int, max_pixels: int, max_bytes: int) -> Source:
    """Decode ``path`` (whose stat is ``st``) into a :class:`Source`; raises SourceError."""
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(Reason.FORBIDDEN)
    if st.st_size > max_bytes:
        raise SourceError(Reason.TOO_LARGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=["JPEG"]) as im:
                return _decode(im, st, quality, max_pixels)
    except SourceError:
        raise
    except UnidentifiedImageError:
        # A JPEG signature Pillow cannot open is a variant it does not decode (12-bit, lossless, ...).
        raise SourceError(Reason.UNSUPPORTED if _starts_like_jpeg(path) else Reason.NOT_JPEG) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SourceError(Reason.TOO_LARGE) from None
    except FileNotFoundError:
        raise SourceError(Reason.NOT_FOUND) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, MemoryError):
        raise SourceError(Reason.CORRUPT) from None


def _starts_like_jpeg(path: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


def _decode(im: Image.Image, st: os.stat_result, quality: int, max_pixels: int) -> Source:
    width, height = im.size
    if width < 1 or height < 1 or width > 65535 or height > 65535:
        raise SourceError(Reason.UNSUPPORTED)
    if width * height > max_pixels:
        raise SourceError(Reason.TOO_LARGE)  # checked from the header, before any pixel is decoded
    if im.mode not in ("L", "RGB", "CMYK"):
        raise SourceError(Reason.UNSUPPORTED)
    sampling = JpegImagePlugin.get_sampling(im) if isinstance(im, JpegImagePlugin.JpegImageFile) else -1
    im.load()
    gray = im.mode == "L"
    h, v = (1, 1) if gray else _SAMPLING.get(sampling, (2, 2))
    pixels = im if im.mode in ("L", "RGB") else im.convert("RGB")
    geo = Geometry(width, height, h, v, gray)
    return Source(Identity.of(st), geo, quantise(pixels, geo, quality))
