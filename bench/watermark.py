"""Watermarking server costs, measured on the site layer (the code every packet runs), CPU seconds.

    .venv/bin/python bench/watermark.py [--quick]

Cases, all on one photograph-like JPEG of about 5 MB (about 1.3 MB with ``--quick``):
* ``source_load_s``: first request for an image: Pillow decode, DCT and quantisation (then cached).
* ``ttfb_s``: time to first byte of a request once the source is cached: the planning pass (mark and
  code the whole scan once, keep checkpoints) plus the first packet's regeneration.
* ``encode_mb_per_s``: coded output per CPU second of that planning pass.
* ``watermarked_mb_per_s`` / ``static_mb_per_s``: a whole response read packet by packet (1372-byte
  reads, in order, as a client fetches it), from the watermark site (span cache on) and from the
  static site serving the same file: MB of payload per CPU second.
* ``intervals``: for several checkpoint limits, the sealed continuation size and the CPU cost of one
  retransmitted packet (a random 1372-byte range, span cache off: coded from its checkpoint), beside
  the static site's cost for the same read.

Writes ``bench/results/watermark.json`` (``watermark_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from trickles import tokens
from trickles.apps.http_head import HttpRequest
from trickles.apps.static import StaticSite
from trickles.apps.watermark.plan import WmPlan
from trickles.apps.watermark.site import WatermarkConfig, WatermarkSite
from trickles.keys import ServerKey

PACKET = 1372
KEY = ServerKey(1, b"b" * 32)
CLIENT = bytes([198, 51, 100, 7, 0x13, 0x88])
RESULTS = Path(__file__).resolve().parent / "results"


def cpu(fn: Callable[[], object]) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def make_photo(path: Path, w: int, h: int) -> None:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    planes = [
        128 + 90 * np.sin(xx / 37) * np.cos(yy / 23),
        128 + 50 * np.sin(xx / 61 + yy / 83),
        128 + 50 * np.cos(yy / 47),
    ]
    a = np.stack(planes, -1) + rng.normal(0, 11, (h, w, 3)).astype(np.float32)
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(path, quality=92)


def plan(site: WatermarkSite, name: str) -> WmPlan:
    return site.plan(HttpRequest("GET", f"/wm/{name}", "1.1"), time.time(), CLIENT, name)


def sequential(read: Callable[[int, int], bytes], total: int) -> float:
    return cpu(lambda: [read(o, PACKET) for o in range(0, total, PACKET)])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    w, h = (2000, 1500) if args.quick else (4000, 3000)
    root = Path(tempfile.mkdtemp(prefix="wm-bench-"))
    make_photo(root / "photo.jpg", w, h)
    site = WatermarkSite(root, KEY)
    load_s = cpu(lambda: site._source(b"photo.jpg", (root / "photo.jpg").stat()))
    t = time.process_time()
    p = plan(site, "photo.jpg")
    plan_s = time.process_time() - t
    first_s = cpu(lambda: site.read(p, 0, PACKET))
    wm_s = sequential(lambda o, n: site.read(p, o, n), p.total_length)
    static = StaticSite(root)
    sp = static.plan(HttpRequest("GET", "/photo.jpg", "1.1"), time.time())
    static_s = sequential(lambda o, n: static.read(sp, o, n), sp.total_length)
    rng = random.Random(1)
    offsets = [rng.randrange(0, p.total_length - PACKET) for _ in range(40 if args.quick else 80)]
    static_pkt = statistics.median(cpu(functools.partial(static.read, sp, o, PACKET)) for o in offsets)
    intervals = []
    for limit in (8, 16, 32, 48, 96, 200):
        cfg = WatermarkConfig(max_checkpoints=limit, span_cache_bytes=0)
        s2 = WatermarkSite(root, KEY, cfg)
        s2.sources = site.sources  # share the decoded source: only the coding is measured
        p2 = plan(s2, "photo.jpg")
        sealed = tokens.seal(KEY, tokens.APP_OUTPUT, 0, p2.to_token(), CLIENT)
        costs = [cpu(functools.partial(s2.read, p2, o, PACKET)) for o in offsets]
        intervals.append({
            "max_checkpoints": limit,
            "checkpoints": len(p2.wm.checkpoints),
            "interval_bytes": p2.wm.scan_length // max(1, len(p2.wm.checkpoints)),
            "continuation_bytes": len(sealed),
            "retransmit_packet_cpu_s": statistics.median(costs),
            "retransmit_packet_cpu_s_max": max(costs),
        })  # fmt: skip
    out = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__},
        "image": {"width": w, "height": h, "source_bytes": (root / "photo.jpg").stat().st_size,
                  "watermarked_bytes": p.body_length, "checkpoints": len(p.wm.checkpoints),
                  "continuation_bytes": len(tokens.seal(KEY, tokens.APP_OUTPUT, 0, p.to_token(), CLIENT))},
        "source_load_s": load_s,
        "ttfb_s": plan_s + first_s,
        "plan_s": plan_s,
        "encode_mb_per_s": p.wm.scan_length / plan_s / 1e6,
        "watermarked_mb_per_s": p.total_length / wm_s / 1e6,
        "static_mb_per_s": sp.total_length / static_s / 1e6,
        "static_packet_cpu_s": static_pkt,
        "intervals": intervals,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    dest = RESULTS / ("watermark_quick.json" if args.quick else "watermark.json")
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
