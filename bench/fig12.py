"""Fig. 12: server CPU per packet, broken down, from the measurements already taken.

    python -m bench.fig12 [--quick]

Runs nothing itself: it reads ``bench/results/core.json`` (``bench/core.py``: the pure-Python server
step timed per packet, stateless and with the soft-state cache, and its parts timed alone) and
``bench/results/throughput.json`` (``bench/throughput.py``: whole-server CPU seconds per data packet
during a loopback transfer, Trickles and the TCP fallback), so run those first (``make bench`` does).
The step's parts: crypto (verify the continuation, the nonce proof and the nonces, seal the next
continuation), congestion control (``plan_request``), the app (minisocket + file app), wire
(decode the request, encode the response), the replay filter, each per request divided by the
packets a request is answered with (2, the default delayed-ACK steady state); "interpreter, step glue" is the measured
step minus those parts (timed in tight loops they run faster than inside the step), "I/O and
runtime" the whole server's CPU per packet minus the step (syscalls, trio, the UDP socket).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench import harness as h

PARTS = {
    "crypto": ["open_untrusted", "proof_and_nonces, 1 block + 2 children", "seal (HMAC-SHA256, 47 B)"],
    "congestion control": ["plan_request"],
    "app": ["Minisocket + MemoryApp.handle, 1 slot"],
    "wire": ["decode_request_untrusted", "encode_delta", "RESP_HEAD.pack + join"],
    "replay filter": ["replay check (no add)"],
}
STEP = "d2/2ch"  # the default (delayed-ACK) steady state: one request answered by two data packets


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((h.RESULTS / name).read_text()))


def breakdown(core: dict[str, Any], thr: dict[str, Any]) -> dict[str, dict[str, float]]:
    prims = core["primitives"]
    per_req = core["server_step"]["delta"][STEP]["packets_per_request"]
    parts = {k: sum(prims[n]["median_us"] for n in names) / per_req for k, names in PARTS.items()}
    whole = {r["name"]: r.get("server_us_per_packet_median") for r in thr["results"]}
    out: dict[str, dict[str, float]] = {}
    for label, variant, server in (
        ("trickles, stateless", "delta", "trickles_nocache"),
        ("trickles, cache", "delta+cache", "trickles"),
    ):
        step = core["server_step"][variant][STEP]["per_packet_median_us"]
        row = dict(parts)
        row["interpreter, step glue"] = max(step - sum(parts.values()), 0.0)
        if whole.get(server):
            row["I/O and runtime"] = max(whole[server] - step, 0.0)
        out[label] = {k: round(v, 2) for k, v in row.items()}
    if whole.get("tcp"):
        out["tcp-fallback (trio + h11, kernel TCP)"] = {"whole server": round(whole["tcp"], 2)}
    if whole.get("aioquic"):
        out["aioquic (HTTP/3)"] = {"whole server": round(whole["aioquic"], 2)}
    return out


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    rows = doc["us_per_packet"]
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    bottoms = [0.0] * len(rows)
    for k in keys:
        vals = [r.get(k, 0.0) for r in rows.values()]
        ax.bar(list(rows), vals, bottom=bottoms, label=k)
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    ax.set_ylabel("server CPU per data packet (µs)")
    build = doc["build"]["throughput"]
    ax.set_title(f"Fig. 12: server CPU per packet ({build} build; loopback)")
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    ax.legend(fontsize=7)
    h.save(fig, "fig12", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="read the --quick results of core.py / throughput.py"
    )
    args = ap.parse_args(argv)
    stem = "_quick" if args.quick else ""
    core, thr = load(f"core{stem}.json"), load(f"throughput{stem}.json")
    rows = breakdown(core, thr)
    doc: dict[str, Any] = {
        "experiment": "fig12",
        "machine": h.machine(),
        "sources": {"core": core["machine"]["date"], "throughput": thr["date"]},
        # the build each source measured (core.json: its main run; throughput.json: its servers)
        "build": {"core": core["machine"]["build"]["build"], "throughput": thr["machine"]["build"]["build"]},
        "us_per_packet": rows,
    }
    for name, row in rows.items():
        print(f"  {name:40s} {sum(row.values()):6.1f} us/packet  {row}")
    print("wrote", h.write("fig12", doc, args.quick))
    plot(doc, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
