"""``trickles top URL...``: a live terminal view of servers from their ``/metrics`` endpoints.

Scrapes every target once per ``--interval`` and shows rates between the last two scrapes:
datagrams/s in and out, MB/s out, each target's share of incoming datagrams (and Jain's fairness
index over the targets), drops/s by reason, resident memory, CPU and distinct active clients, with
a sparkline of the recent total. Plain ANSI (home + clear), so it works over ssh; Ctrl-C quits.
``--once`` prints one snapshot (two scrapes ``--interval`` apart) and exits; ``--json`` makes that
snapshot machine-readable.

Exit codes: 0 done, 1 no target could be scraped (``--once``), 2 bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 60


def add_parser(sub: Any) -> None:
    t = sub.add_parser("top", help="live terminal view of servers from their /metrics endpoints")
    t.add_argument("targets", nargs="+", metavar="URL", help="http://HOST:PORT[/metrics] or HOST:PORT")
    t.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between scrapes")
    t.add_argument("--once", action="store_true", help="print one snapshot and exit")
    t.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    t.add_argument("-n", "--iterations", type=int, default=0, metavar="N", help="stop after N frames")


def metrics_url(target: str) -> str:
    """``HOST:PORT`` or ``http://HOST:PORT`` -> the ``/metrics`` URL; ValueError if not usable."""
    url = target if "://" in target else f"http://{target}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad target {target!r}: expected http://HOST:PORT[/metrics]")
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise ValueError(f"bad port in {target!r}") from None
    return url if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}/metrics"


# -- scraping -------------------------------------------------------------------------------------------


@dataclass
class Scrape:
    """One target's samples at one time: sample name -> [(labels, value)]."""

    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def total(self, name: str) -> float:
        return sum(v for _, v in self.samples.get(name, []))

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in self.samples.get(name, []):
            out[labels.get(label, "")] = out.get(labels.get(label, ""), 0.0) + v
        return out


def scrape(url: str, timeout: float) -> Scrape | str:
    """The target's samples, or why it could not be scraped."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read(8 << 20).decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as e:
        return str(getattr(e, "reason", e))
    s = Scrape(time.monotonic())
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                s.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except ValueError as e:
        return f"not Prometheus text: {e}"
    return s


# -- figures --------------------------------------------------------------------------------------------


def _rate(prev: Scrape, cur: Scrape, name: str) -> float:
    dt = cur.at - prev.at
    return max(cur.total(name) - prev.total(name), 0.0) / dt if dt > 0 else 0.0


def target_figures(prev: Scrape, cur: Scrape) -> dict[str, Any]:
    dt = cur.at - prev.at
    before = prev.by("trickles_packets_dropped_total", "reason")
    drops = {
        r: round(max(v - before.get(r, 0.0), 0.0) / dt, 3) if dt > 0 else 0.0
        for r, v in sorted(cur.by("trickles_packets_dropped_total", "reason").items())
    }
    return {
        "up": True,
        "packets_received_per_s": _rate(prev, cur, "trickles_packets_received_total"),
        "packets_sent_per_s": _rate(prev, cur, "trickles_packets_sent_total"),
        "sent_bytes_per_s": _rate(prev, cur, "trickles_sent_bytes_total"),
        "cpu_percent": 100 * _rate(prev, cur, "process_cpu_seconds_total"),
        "resident_memory_bytes": cur.total("process_resident_memory_bytes"),
        "active_clients": cur.total("trickles_active_clients"),
        "drops_per_s": {r: v for r, v in drops.items() if v},
    }


def jain(xs: list[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when equal, 1/n when one takes all."""
    sq = sum(x * x for x in xs)
    return sum(xs) ** 2 / (len(xs) * sq) if xs and sq > 0 else None


def snapshot(urls: list[str], prev: dict[str, Scrape | str], cur: dict[str, Scrape | str]) -> dict[str, Any]:
    targets: list[dict[str, Any]] = []
    for url in urls:
        p, c = prev[url], cur[url]
        if isinstance(p, Scrape) and isinstance(c, Scrape):
            targets.append({"url": url, **target_figures(p, c)})
        else:
            targets.append({"url": url, "up": False, "error": c if isinstance(c, str) else p})
    up = [t for t in targets if t["up"]]
    incoming = sum(t["packets_received_per_s"] for t in up)
    for t in up:
        t["share"] = t["packets_received_per_s"] / incoming if incoming else None
    keys = ("packets_received_per_s", "packets_sent_per_s", "sent_bytes_per_s", "resident_memory_bytes")
    total: dict[str, Any] = {k: sum(t[k] for t in up) for k in keys}
    total["active_clients"] = sum(t["active_clients"] for t in up)  # exact across SO_REUSEPORT workers
    total["targets_up"] = len(up)
    total["jain_fairness"] = jain([t["packets_received_per_s"] for t in up])
    return {"time": time.time(), "targets": targets, "total": total}


# -- rendering ------------------------------------------------------------------------------------------


def sparkline(values: list[float]) -> str:
    top = max(values, default=0.0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(int(v / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in values)


def _mib(b: float) -> str:
    return f"{b / 1048576:.1f}"


def render(snap: dict[str, Any], history: deque[float]) -> list[str]:
    tot = snap["total"]
    head = f"{'target':<28}{'in/s':>9}{'out/s':>9}{'MB/s':>8}{'share':>7}{'RSS MiB':>9}{'CPU%':>6}"
    head += f"{'clients':>8}"
    lines = [
        f"trickles top - {tot['targets_up']}/{len(snap['targets'])} up - "
        + time.strftime("%H:%M:%S", time.localtime(snap["time"])),
        head,
    ]
    for t in snap["targets"]:
        name = t["url"].removeprefix("http://").removesuffix("/metrics")[:27]
        if not t["up"]:
            lines.append(f"{name:<28}  DOWN: {t['error']}")
            continue
        share = "-" if t["share"] is None else f"{100 * t['share']:.0f}%"
        lines.append(
            f"{name:<28}{t['packets_received_per_s']:>9.0f}{t['packets_sent_per_s']:>9.0f}"
            f"{t['sent_bytes_per_s'] / 1e6:>8.2f}{share:>7}{_mib(t['resident_memory_bytes']):>9}"
            f"{t['cpu_percent']:>6.0f}{t['active_clients']:>8.0f}"
        )
    j = tot["jain_fairness"]
    lines.append(
        f"{'total':<28}{tot['packets_received_per_s']:>9.0f}{tot['packets_sent_per_s']:>9.0f}"
        f"{tot['sent_bytes_per_s'] / 1e6:>8.2f}{'':>7}{_mib(tot['resident_memory_bytes']):>9}"
        f"{'':>6}{tot['active_clients']:>8.0f}"
    )
    lines.append("fairness (Jain) " + ("-" if j is None else f"{j:.3f}"))
    drops: dict[str, float] = {}
    for t in snap["targets"]:
        for r, v in t.get("drops_per_s", {}).items():
            drops[r] = drops.get(r, 0.0) + v
    lines.append("drops/s: " + (", ".join(f"{r} {v:.1f}" for r, v in sorted(drops.items())) or "none"))
    lines.append(f"MB/s out {sparkline(list(history))}")
    return lines


# -- main -----------------------------------------------------------------------------------------------


def scrape_all(urls: list[str], timeout: float) -> dict[str, Scrape | str]:
    return {u: scrape(u, timeout) for u in urls}


def run(args: argparse.Namespace) -> int:
    try:
        urls = [metrics_url(t) for t in args.targets]
    except ValueError as e:
        print(f"trickles top: {e}", file=sys.stderr)
        return 2
    if not 0.05 <= args.interval <= 3600 or args.iterations < 0:
        print("trickles top: --interval must be 0.05..3600 s and -n non-negative", file=sys.stderr)
        return 2
    if args.json and not args.once:
        print("trickles top: --json needs --once", file=sys.stderr)
        return 2
    timeout = min(max(args.interval, 0.5), 5.0)
    history: deque[float] = deque(maxlen=HISTORY)
    prev = scrape_all(urls, timeout)
    frames = 0
    try:
        while True:
            time.sleep(args.interval)
            cur = scrape_all(urls, timeout)
            snap = snapshot(urls, prev, cur)
            prev = cur
            history.append(snap["total"]["sent_bytes_per_s"] / 1e6)
            if args.once:
                return _print_once(snap, history, args.json)
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(render(snap, history)) + "\n")
            sys.stdout.flush()
            frames += 1
            if args.iterations and frames >= args.iterations:
                return 0
    except KeyboardInterrupt:
        return 0


def _print_once(snap: dict[str, Any], history: deque[float], as_json: bool) -> int:
    print(json.dumps(snap, indent=2, sort_keys=True) if as_json else "\n".join(render(snap, history)))
    if snap["total"]["targets_up"] == 0:
        print("trickles top: no target could be scraped", file=sys.stderr)
        return 1
    return 0
