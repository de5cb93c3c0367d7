"""Reading a watermark back: ``trickles watermark detect FILE --key-file F``.

The detector needs the server's key, not the source image: it decodes the JPEG with Pillow, takes
the luma plane as the decoder sees it (no colour round trip), recomputes the quantised coefficients
with the file's own luma table, and lets every eligible coefficient vote for its payload bit. The
IPv4 and IPv6 payload layouts are both tried; a layout whose tag verifies names the client (a
random image passes with probability 2**-32 per layout).

Exit codes: 0 a mark was found, 1 none was found, 2 bad input (unreadable file, not a JPEG, bad key).
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from trickles.keys import ServerKey

from .dct import luma_blocks
from .embed import PAYLOAD_BITS, TAG_LEN, MarkKey, describe, votes

MAX_PIXELS = 100_000_000
MAX_BYTES = 256 * 1024 * 1024


class DetectError(Exception):
    """The input cannot be examined (the message says why)."""


@dataclass(frozen=True, slots=True)
class Detection:
    identity: bytes  # packed IP address
    coefficients: int  # how many coefficients voted
    margin: float  # weakest bit's |votes| / votes per bit: 1.0 is a pristine copy

    @property
    def address(self) -> str:
        return describe(self.identity)


def _luma(data: bytes) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32], int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=["JPEG"])
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise DetectError("image too large to examine")
            layer = getattr(im, "layer", [])
            h, v = (layer[0][1], layer[0][2]) if layer and im.mode != "L" else (1, 1)
            qtable = np.zeros(64, dtype=np.int32)
            qtable[:] = im.quantization[0]  # type: ignore[attr-defined]
            if im.mode == "RGB":
                im.draft("YCbCr", im.size)  # the decoder's own luma, before any colour conversion
            im.load()
    except DetectError:
        raise
    except UnidentifiedImageError:
        raise DetectError("not a JPEG image") from None
    except (OSError, SyntaxError, ValueError, KeyError, IndexError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:  # fmt: skip
        raise DetectError(f"cannot decode the image: {e}") from None
    if im.mode not in ("L", "YCbCr"):
        raise DetectError(f"unsupported JPEG colour mode {im.mode}")
    y = np.asarray(im, dtype=np.uint8)
    if y.ndim == 3:
        y = y[..., 0]
    if h not in (1, 2) or v not in (1, 2):
        h, v = 1, 1
    return y, qtable, h, v


def detect(data: bytes, key: ServerKey) -> Detection | None:
    """The identity marked in a JPEG by a server holding ``key``, or None. Raises DetectError."""
    y, qtable, h, v = _luma(data)
    blocks = luma_blocks(y, qtable, h, v).reshape(-1, 64)
    mk = MarkKey(key)
    for n_bits in PAYLOAD_BITS:
        tally, used = votes(blocks, mk, n_bits)
        if not used:
            continue
        raw = np.packbits((tally > 0).astype(np.uint8)).tobytes()
        ident, tag = raw[:-TAG_LEN], raw[-TAG_LEN:]
        if mk.tag(ident) == tag:
            margin = float(np.min(np.abs(tally)) / max(used / n_bits, 1))
            return Detection(ident, used, margin)
    return None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="trickles watermark detect", description="name the client a copy was marked for"
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--key-file", metavar="F", help="the serving key (as given to trickles serve)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    from trickles.server.keyfile import KeyFileError, load_ring  # the one key-file reader

    if args.key_file is None:
        print("trickles: watermark detect needs --key-file (the key the server ran with)", file=sys.stderr)
        return 2
    try:
        ring = load_ring(args.key_file)
        with open(args.file, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise DetectError("file too large to examine")
        keys = [k for k in (ring.current, ring.previous) if k is not None]
        found = next((d for k in keys if (d := detect(data, k)) is not None), None)
    except KeyFileError as e:
        print(f"trickles: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"trickles: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    except DetectError as e:
        print(f"trickles: {args.file}: {e}", file=sys.stderr)
        return 2
    if found is None:
        print(f"{args.file}: no watermark found (not marked, damaged, or marked with another key)")
        return 1
    stats = f"{found.coefficients} coefficients, margin {found.margin:.2f}"
    print(f"{args.file}: watermarked for {found.address} ({stats})")
    return 0
