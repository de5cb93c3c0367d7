"""A 100 Mbit/s bottleneck between two network namespaces, for the paper's experiments (section 6).

    with bottleneck() as net:
        srv = net.spawn(net.server, ["trickles", "serve", ...])   # runs inside the server namespace
        cli = net.spawn(net.client, [...])                         # inside the client namespace
        # the client reaches the server at net.server_ip

Two fresh namespaces joined by a veth pair; each end's egress goes through ``tc tbf`` at ``rate``
(the paper's point-to-point 100 Mb/s link; the data direction is server to client). This kernel has
no ``netem``: with ``delay`` the namespaces are joined instead by two TUN devices and
:mod:`bench.delayline`, a user-space process that forwards every IP packet ``delay`` later, so kernel
TCP and Trickles cross the same delayed path (loss and reordering for UDP alone come from
``trickles link``). Kernel TCP congestion
control is set per namespace (``net.ipv4.tcp_congestion_control``), so every TCP socket of the
servers and clients started inside uses it (``reno`` by default, the paper's comparison).

Everything is undone on exit, also when the body raises: the processes :meth:`Net.spawn` started are
stopped by PID, then the namespaces are deleted (which deletes the veth pair). Needs root.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.throughput import stop_process

SUBNET = "10.77.0"
CONGESTION = "/proc/sys/net/ipv4/tcp_congestion_control"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def in_ns(ns: str, *argv: str, check: bool = True) -> str:
    """Run a short command inside namespace ``ns``; its stdout."""
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=10)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns} failed: {p.stderr.strip()}")
    return p.stdout


@dataclass
class Net:
    """The two namespaces, their addresses, and the processes started in them."""

    server: str
    client: str
    server_ip: str
    client_ip: str
    rate: str
    congestion: str
    delay: float  # one way, seconds (0: veth, no delay line)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def spawn(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns`` (``ip netns exec`` execs it, so the PID is the program's)."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[Any]) -> None:
        """Stop ``p`` by PID and close the pipes it was given."""
        stop_process(p)
        for pipe in (p.stdin, p.stdout, p.stderr):
            if pipe is not None:
                pipe.close()
        if p in self.procs:
            self.procs.remove(p)

    def snmp(self, pid: int) -> dict[str, dict[str, int]]:
        """``/proc/PID/net/snmp`` (the counters of that process's namespace) as {proto: {name: n}}."""
        return snmp_text(Path(f"/proc/{pid}/net/snmp").read_text())


def snmp_text(text: str) -> dict[str, dict[str, int]]:
    """The text of ``/proc/net/snmp`` as {proto: {name: n}} (lines go in name/value pairs)."""
    lines = text.splitlines()
    out: dict[str, dict[str, int]] = {}
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        proto, names = head.split(":", 1)
        out[proto] = dict(zip(names.split(), map(int, vals.split(":", 1)[1].split()), strict=False))
    return out


def _tbf(ns: str, dev: str, rate: str) -> None:
    # ~10 ms of queue at 100 Mbit/s (85 full-size packets); the burst covers one GSO super-packet.
    in_ns(
        ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb", "limit", "128kb"
    )


def _delay_line(net: Net, suffix: str, delay: float) -> None:
    """Join the namespaces through :mod:`bench.delayline` (two TUN devices) instead of veth."""
    devs = ("ts" + suffix, "tc" + suffix)
    argv = [sys.executable, "-m", "bench.delayline", *devs, str(delay)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    net.procs.append(p)
    assert p.stdout is not None
    if not select.select([p.stdout], [], [], 15)[0] or p.stdout.readline().strip() != "ready":
        raise RuntimeError(f"bench.delayline did not start (exit {p.poll()})")
    for ns, dev in zip((net.server, net.client), devs, strict=True):
        ip("link", "set", dev, "netns", ns)


@contextmanager
def bottleneck(
    rate: str = "100mbit", congestion: str = "reno", delay: float = 0.0, tag: str = ""
) -> Iterator[Net]:
    """Create the namespaces and the shaped link (veth, or with ``delay`` > 0 s one way the TUN
    delay line; ``rate=""``: no shaping); tear everything down on exit."""
    suffix = f"{tag}{os.getpid()}"
    srv, cli = f"trks{suffix}", f"trkc{suffix}"
    net = Net(srv, cli, f"{SUBNET}.1", f"{SUBNET}.2", rate, congestion, delay)
    created: list[str] = []
    try:
        for ns in (srv, cli):
            ip("netns", "add", ns)
            created.append(ns)
        if delay > 0:
            _delay_line(net, suffix, delay)
            devs = ("ts" + suffix, "tc" + suffix)
        else:
            devs = ("vs" + suffix, "vc" + suffix)
            ip("link", "add", devs[0], "netns", srv, "type", "veth", "peer", "name", devs[1], "netns", cli)
        ends = ((srv, devs[0], net.server_ip, net.client_ip), (cli, devs[1], net.client_ip, net.server_ip))
        for ns, dev, addr, peer in ends:
            if delay > 0:  # point to point
                in_ns(ns, "ip", "addr", "add", addr, "peer", f"{peer}/32", "dev", dev)
            else:
                in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            in_ns(ns, "ip", "link", "set", dev, "up")
            in_ns(ns, "ip", "link", "set", "lo", "up")
            if rate:
                _tbf(ns, dev, rate)
            # /proc/sys/net shows the namespace of the process reading it (no procps needed).
            in_ns(ns, "sh", "-c", f"echo {congestion} > {CONGESTION}")
        yield net
    finally:
        for p in list(net.procs):
            net.stop(p)
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    try:
        with bottleneck(tag="probe"):
            pass
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        return f"cannot create namespaces: {e}"
    return None
