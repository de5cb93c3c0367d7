"""The evaluation harness (bench/): the namespaces, the delay line, and one experiment end to end.

Real namespaces, a real veth with tbf, real TUN devices, real servers and clients (root needed, as
in CI). The experiment runs with ``--quick`` (a few seconds) and must write sane figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import harness as h
from bench.netns import CONGESTION, bottleneck, in_ns

ROOT = Path(__file__).resolve().parents[2]


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_bottleneck_is_torn_down_on_failure() -> None:
    with pytest.raises(ZeroDivisionError), bottleneck(tag="t") as net:
        sleeper = net.spawn(net.client, ["sleep", "30"])
        assert net.server in namespaces() and net.client in namespaces()
        assert "tbf" in in_ns(net.server, "tc", "qdisc", "show") and "rate 100Mbit" in in_ns(
            net.server, "tc", "qdisc", "show"
        )
        assert in_ns(net.server, "cat", CONGESTION).strip() == "reno"
        raise ZeroDivisionError("the body fails")
    assert sleeper.poll() is not None, "a process started in the namespaces outlived them"
    assert net.server not in namespaces() and net.client not in namespaces()


def test_delay_line_adds_the_round_trip() -> None:
    """A TCP connect (one round trip) across the delay line takes at least 2 x the one-way delay."""
    probe = (
        "import socket, sys, time\n"
        "t = time.perf_counter()\n"
        "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
        "print(time.perf_counter() - t)\n"
    )
    with bottleneck(delay=0.05, tag="d") as net:
        listener = net.spawn(
            net.server,
            [
                sys.executable,
                "-c",
                f"import socket, time\ns = socket.create_server(('{net.server_ip}', 7000))\ntime.sleep(30)",
            ],
        )
        deadline = time.monotonic() + 10
        while not in_ns(net.server, "ss", "-Hltn", "sport = :7000").strip():
            assert listener.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        rtt = float(in_ns(net.client, sys.executable, "-c", probe, net.server_ip, "7000"))
    assert 0.1 <= rtt < 1.0, f"connect took {rtt:.3f} s across a 2 x 50 ms delay line"


def test_fig9_quick_writes_sane_results() -> None:
    out = h.RESULTS / "fig9_quick.json"
    out.unlink(missing_ok=True)
    p = subprocess.run(
        [sys.executable, "-m", "bench.fig9", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["experiment"] == "fig9" and doc["link"]["rate"] == "100mbit"
    assert {(q["server"], q["clients"]) for q in doc["points"]} == {
        (s, n) for s in ("trickles", "tcp-fallback") for n in (1, 4)
    }
    for q in doc["points"]:
        assert q["errors"] == 0 and q["fetches"] >= 1, q
        # Through a 100 Mbit/s bottleneck: something got through, never more than the link.
        assert 1.0 < q["Mbps"] <= 101.0, q
    assert set(doc["ratios"]) == {"trickles/tcp-fallback"}
    assert all(r > 0 for r in doc["ratios"]["trickles/tcp-fallback"].values())
