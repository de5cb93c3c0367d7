"""Fig. 13: TCP-friendliness: one foreground flow against 0..8 background kernel TCP Reno flows.

    python -m bench.fig13 [--quick] [--background 0,1,2,4,8] [--seconds S]

All flows cross the same 100 Mbit/s bottleneck (veth + tbf, no added delay: the round trip is the
bottleneck queue's, as on the paper's LAN dumbbell). Background flows are ``curl`` downloads from
nginx (kernel TCP, Reno). The foreground flow, started with them, is one of: Trickles (the Python
client, :mod:`bench.load`), the project's TCP fallback with the same Python client, or one more curl
from nginx (the paper's "TCP in the same position"). Every flow downloads a large file for ``S``
seconds (the background ``S`` + 1 s, started first, so that the foreground competes all its
window long); a flow's rate is bytes received / its window. Reported: each flow's rate, the foreground's share
of a fair share (rate / (total / flows)), and Jain's fairness index over all flows.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.netns import Net, bottleneck

BIG = "/big.bin"
BG_EXTRA = 1.0  # seconds


def curl(net: Net, seconds: float) -> subprocess.Popen[Any]:
    url = f"http://{net.server_ip}:{h.NGINX_PORT}{BIG}"
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", str(seconds), "-w", "%{size_download}", url]
    return net.spawn(net.client, argv, stdout=subprocess.PIPE, text=True)


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if any(xs) else 0.0


def point(net: Net, fg: str, n_bg: int, seconds: float) -> dict[str, Any]:
    # The background runs BG_EXTRA longer, so the foreground's window (which opens up to a second
    # later: Python's start-up) lies inside it and the foreground competes all the time.
    bg = [curl(net, seconds + BG_EXTRA) for _ in range(n_bg)]
    if fg == "nginx-curl":
        rates = [
            int(curl(net, seconds).communicate(timeout=seconds + 30)[0].strip() or 0) * 8 / seconds / 1e6
        ]
    else:
        mode = "trickles" if fg == "trickles" else "tcp"
        report = h.run_load(
            net, [h.load_argv(mode, net.server_ip, h.PORT, BIG, duration=seconds)], seconds + 30
        )
        rates = [report[0]["bytes"] * 8 / report[0]["seconds"] / 1e6]
    outs = [p.communicate(timeout=seconds + 30)[0] for p in bg]
    rates += [int(o.strip() or 0) * 8 / (seconds + BG_EXTRA) / 1e6 for o in outs]
    for p in bg:
        net.stop(p)
    fair = sum(rates) / len(rates)
    return {
        "foreground": fg,
        "background_flows": n_bg,
        "foreground_Mbps": round(rates[0], 2),
        "background_Mbps": [round(r, 2) for r in rates[1:]],
        "background_median_Mbps": round(statistics.median(rates[1:]), 2) if n_bg else None,
        "total_Mbps": round(sum(rates), 2),
        "foreground_share_of_fair": round(rates[0] / fair, 3) if fair else 0.0,
        "jain_index": round(jain(rates), 3),
    }


def plot(doc: dict[str, Any], quick: bool) -> None:
    plt = h.pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for fg in doc["foregrounds"]:
        pts = [p for p in doc["points"] if p["foreground"] == fg]
        xs = [p["background_flows"] for p in pts]
        a.plot(xs, [p["foreground_Mbps"] for p in pts], marker="o", label=fg)
        b.plot(xs, [p["jain_index"] for p in pts], marker="o", label=fg)
    a.set_ylabel("foreground flow (Mbit/s)")
    b.set_ylabel("Jain's fairness index, all flows")
    b.set_ylim(0, 1.05)
    for ax in (a, b):
        ax.set_xlabel("background TCP Reno flows")
        ax.legend()
    fig.suptitle("Fig. 13: one flow against kernel TCP Reno through 100 Mbit/s")
    h.save(fig, "fig13", quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="0 and 1 background flows, 2 s (smoke test)")
    ap.add_argument("--background", default="0,1,2,4,8")
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args(argv)
    counts = [0, 1] if args.quick else [int(c) for c in args.background.split(",")]
    seconds = 2.0 if args.quick else args.seconds
    foregrounds = ["trickles", "tcp-fallback", "nginx-curl"]
    tmp = Path(tempfile.mkdtemp(prefix="trickles-fig13-"))
    root, key = h.make_site(
        tmp, {BIG[1:]: int((seconds + BG_EXTRA) * 14e6)}
    )  # more than 100 Mbit/s for S seconds
    doc: dict[str, Any] = {"experiment": "fig13", "machine": h.machine(), "seconds_per_point": seconds}
    doc.update(foregrounds=foregrounds, points=[])
    prog = h.Progress("fig13", len(counts) * len(foregrounds))
    with bottleneck() as net:
        doc["link"] = {"rate": net.rate, "congestion": net.congestion, "delay": "none added"}
        h.start_trickles(net, root, key)
        h.start_nginx(net, root, tmp)
        for n in counts:
            for fg in foregrounds:
                prog.step(f"{fg} + {n} Reno flows")
                doc["points"].append(point(net, fg, n, seconds))
    prog.done()
    for p in doc["points"]:
        print(
            f"  {p['foreground']:13s} +{p['background_flows']} bg: fg {p['foreground_Mbps']:6.2f} Mbit/s"
            f"  bg median {p['background_median_Mbps']}  share {p['foreground_share_of_fair']:.2f}  jain {p['jain_index']:.3f}"
        )
    print("wrote", h.write("fig13", doc, args.quick))
    plot(doc, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
