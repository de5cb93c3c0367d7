"""What the paper's experiments (``bench/fig*.py``) share: the site, the servers, load, results.

Servers run inside the bottleneck's server namespace (:mod:`bench.netns`): ``trickles serve`` (its
UDP port and, on the same port number, its trio + h11 TCP fallback) and nginx (Debian's, one worker,
``sendfile`` on: the kernel-TCP reference). Load comes from :mod:`bench.load` processes in the client
namespace. Every experiment writes ``bench/results/NAME.json`` (``NAME_quick.json`` for a smoke run,
so the real results are never overwritten) and a PNG next to it.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.netns import Net, in_ns, snmp_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
PORT = 8080  # trickles (UDP, and its TCP fallback)
NGINX_PORT = 8081


class Progress:
    """One line, rewritten in place: ``[fig9] 3/12 trickles 10 clients``."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.n, self.t0 = name, total, 0, time.monotonic()

    def step(self, what: str) -> None:
        self.n += 1
        elapsed = time.monotonic() - self.t0
        print(f"\r[{self.name}] {self.n}/{self.total} {elapsed:5.0f}s {what:60.60s}", end="", flush=True)

    def done(self) -> None:
        print(f"\r[{self.name}] done in {time.monotonic() - self.t0:.0f}s{' ' * 60}", flush=True)


def make_site(tmp: Path, sizes: dict[str, int]) -> tuple[Path, Path]:
    """A document root with seeded random files ``{name: size}``, and a key file."""
    root = tmp / "www"
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, size in sizes.items():
        (root / name).write_bytes(rng.randbytes(size))
    key = tmp / "key"
    key.write_text(os.urandom(32).hex())
    return root, key


def wait_listening(net: Net, ns: str, port: int, proto: str, proc: subprocess.Popen[Any]) -> None:
    """Until something in ``ns`` listens on ``port`` (``ss``); RuntimeError if ``proc`` died."""
    flag = "-Hlun" if proto == "udp" else "-Hltn"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if in_ns(ns, "ss", flag, f"sport = :{port}").strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {proto} port {port} in {ns}")


def start_trickles(net: Net, root: Path, key: Path, *extra: str) -> subprocess.Popen[Any]:
    argv = [str(BIN / "trickles"), "serve", str(root), "--listen", f"{net.server_ip}:{PORT}"]
    p = net.spawn(net.server, [*argv, "--key-file", str(key), *extra], stderr=subprocess.DEVNULL)
    wait_listening(net, net.server, PORT, "udp", p)
    wait_listening(net, net.server, PORT, "tcp", p)
    return p


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 20000;
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen {ip}:{port} backlog=4096;
        root {root};
    }}
}}
"""


def have_nginx() -> bool:
    return shutil.which("nginx") is not None


def start_nginx(net: Net, root: Path, tmp: Path) -> subprocess.Popen[Any]:
    """nginx in the server namespace, one process (``master_process off``: its PID is the server)."""
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, ip=net.server_ip, port=NGINX_PORT, root=root))
    p = net.spawn(net.server, ["nginx", "-c", str(conf), "-e", str(tmp / "nginx-error.log")])
    wait_listening(net, net.server, NGINX_PORT, "tcp", p)
    return p


DROPPED = re.compile(r"dropped (\d+)")


def counters(net: Net) -> dict[str, int]:
    """Loss counters of both namespaces: the bottleneck's drops (tbf, per direction), UDP datagrams
    dropped for a full socket buffer, TCP retransmitted segments. Subtract two readings."""
    out: dict[str, int] = {}
    for side, ns in (("server", net.server), ("client", net.client)):
        qdisc = in_ns(ns, "tc", "-s", "qdisc", "show")
        out[f"tbf_drops_{side}_egress"] = sum(int(d) for d in DROPPED.findall(qdisc))
        snmp = snmp_text(in_ns(ns, "cat", "/proc/net/snmp"))
        out[f"udp_rcvbuf_errors_{side}"] = snmp["Udp"]["RcvbufErrors"]
        out[f"tcp_retrans_segs_{side}"] = snmp["Tcp"]["RetransSegs"]
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def load_argv(mode: str, host: str, port: int, path: str, **opts: Any) -> list[str]:
    argv = [sys.executable, "-m", "bench.load", mode, host, str(port), path]
    for k, v in opts.items():
        argv += [f"--{k}", str(v)]
    return argv


def run_load(net: Net, argvs: Sequence[list[str]], timeout: float) -> list[dict[str, Any]]:
    """Run :mod:`bench.load` processes in the client namespace at once; their JSON reports."""
    procs = [net.spawn(net.client, a, stdout=subprocess.PIPE, text=True, cwd=HERE.parent) for a in argvs]
    out = []
    try:
        for p in procs:
            stdout, _ = p.communicate(timeout=timeout)
            if p.returncode != 0 or not stdout.strip():
                raise RuntimeError(f"load process failed (exit {p.returncode})")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            net.stop(p)
    return out


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several load processes' reports as one (times are pooled, seconds the longest)."""
    kinds: dict[str, int] = {}
    for r in reports:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    return {
        "bytes": sum(r["bytes"] for r in reports),
        "fetches": sum(r["fetches"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "error_kinds": kinds,
        "seconds": max(r["seconds"] for r in reports),
        "times": sorted(t for r in reports for t in r["times"]),
    }


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "tcp_available_congestion_control": Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .read_text()
        .strip(),
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def write(name: str, doc: dict[str, Any], quick: bool) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'_quick' if quick else ''}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def pyplot() -> Any:
    """matplotlib.pyplot with a file backend, or None without matplotlib (extra ``bench``)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, name: str, quick: bool) -> None:
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}{'_quick' if quick else ''}.png", dpi=90)
