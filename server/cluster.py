"""``trickles cluster up|status|down|rotate-key DIR``: a local sprayer + N replicas sharing one key.

The same topology as ``deploy/docker-compose.yml``, as plain processes on this host. ``DIR`` holds
the cluster's state, never content: ``key`` (0600), ``cluster.json`` (who is where), one ``NAME.pid``
and ``NAME.log`` per process. Processes run in their own sessions and are stopped by the PIDs in
their files (after checking that the PID is still a trickles process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trickles.engine import ServerConfig

from .keyfile import KeyFileError, rotate, write_keys
from .proxy import HEAD, PROBE_MAGIC, encode_local

STATE = "cluster.json"
KEY = "key"
START_TIMEOUT = 20.0


def add_cluster_parser(sub: Any) -> None:
    c = sub.add_parser("cluster", help="run a local sprayer + replicas cluster")
    csub = c.add_subparsers(dest="action", required=True)
    up = csub.add_parser("up", help="start a sprayer and N replicas sharing a key")
    up.add_argument("dir", metavar="DIR", help="state directory (key, pid files, logs)")
    up.add_argument("--root", required=True, metavar="WWW", help="directory the replicas serve")
    up.add_argument("--replicas", type=int, default=3, metavar="N")
    up.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="public address")
    up.add_argument("--replica-port", type=int, metavar="P", help="first replica port (default PORT+1)")
    up.add_argument("--policy", default="round-robin", choices=["round-robin", "mac-hash"])
    up.add_argument("--workers", type=int, default=1, metavar="N", help="sprayer workers")
    up.add_argument("--metrics", metavar="HOST:PORT", help="sprayer /metrics, /healthz (worker i: PORT+i)")
    pr = csub.add_parser("probe", help="ask one replica or sprayer for its status (exit 1: no answer)")
    pr.add_argument("addr", metavar="HOST:PORT")
    pr.add_argument("--timeout", type=float, default=1.0, metavar="S")
    for name, hlp in (
        ("status", "role, pid, address, health and packets of each process"),
        ("down", "stop every process of the cluster"),
        ("rotate-key", "new current key; SIGHUP everyone"),
    ):
        a = csub.add_parser(name, help=hlp)
        a.add_argument("dir", metavar="DIR")
        if name == "rotate-key":
            a.add_argument("--force", action="store_true", help="rotate even within one freshness horizon")
        if name == "status":
            a.add_argument("--json", action="store_true", help="one JSON document")


def run_cluster(args: argparse.Namespace) -> int:
    if args.action == "probe":
        st = probe(args.addr, args.timeout)
        print(json.dumps(st) if st is not None else f"no answer from {args.addr}")
        return 0 if st is not None else 1
    d = Path(args.dir)
    if args.action == "up":
        return up(args, d)
    if args.action == "status":
        return status(d, args.json)
    if args.action == "down":
        return down(d)
    return rotate_key(d, args.force)


# -- up ---------------------------------------------------------------------------------------------


def up(args: argparse.Namespace, d: Path) -> int:
    from .cli import UsageError, parse_hostport

    root = Path(args.root).resolve()
    if not root.is_dir():
        raise UsageError(f"{args.root}: not a directory")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d.resolve() == root or root in d.resolve().parents:
        raise UsageError("the state directory (it holds the key) must not be inside the served root")
    if args.replicas < 1:
        raise UsageError("--replicas must be at least 1")
    if _live(d):
        raise UsageError(f"a cluster is already running in {d} (trickles cluster down {d})")
    host, port = parse_hostport(args.listen, "127.0.0.1")
    first = args.replica_port or port + 1
    key = d / KEY
    if not key.exists():
        write_keys(key, [(1, secrets.token_bytes(32))], bare=True)
    members = [
        {"name": f"replica-{i + 1}", "role": "replica", "addr": f"127.0.0.1:{first + i}"}
        for i in range(args.replicas)
    ]
    sprayer = {"name": "sprayer", "role": "sprayer", "addr": f"{host}:{port}"}
    (d / STATE).write_text(json.dumps({"root": str(root), "members": [sprayer, *members]}, indent=1))
    py = [sys.executable, "-m", "trickles.server.cli"]
    for m in members:
        _spawn(d, m["name"], [*py, "serve", str(root), "--listen", m["addr"], "--key-file", str(key),
                              "--trust-proxy", "127.0.0.1", "--no-tcp"])  # fmt: skip
    backends = [a for m in members for a in ("--backend", m["addr"])]
    if args.metrics:
        backends += ["--metrics", args.metrics]
    _spawn(d, "sprayer", [*py, "spray", "--listen", sprayer["addr"], *backends, "--key-file", str(key),
                          "--policy", args.policy, "--workers", str(args.workers)])  # fmt: skip
    if not _wait_healthy(d, [sprayer, *members]):
        print(f"trickles: cluster in {d} did not become healthy; logs in {d}", file=sys.stderr)
        down(d)
        return 1
    print(f"cluster up: udp {sprayer['addr']} -> {args.replicas} replicas ({d})")
    return 0


def _spawn(d: Path, name: str, cmd: list[str]) -> None:
    with (d / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d, start_new_session=True
        )
    (d / f"{name}.pid").write_text(f"{proc.pid}\n")


def _wait_healthy(d: Path, members: list[dict[str, str]]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        rows = [_row(d, m) for m in members]
        if any(r["pid"] is None for r in rows):
            return False
        sp = rows[0]["status"]
        if all(r["healthy"] for r in rows) and sp and all(sp.get("healthy", [])):
            return True
        time.sleep(0.1)
    return False


# -- status -----------------------------------------------------------------------------------------


def probe(addr: str, timeout: float = 0.5) -> dict[str, Any] | None:
    """Ask a replica (or the sprayer, from loopback) for its status with a PROXY LOCAL probe."""
    host, _, port = addr.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host in ("::", "[::]") else host.strip("[]"))
    token = secrets.token_bytes(8)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(encode_local(PROBE_MAGIC + token), (host, int(port)))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = s.recv(4096)
                body = data[HEAD.size :]
                if body.startswith(PROBE_MAGIC + token):
                    out: dict[str, Any] = json.loads(body[len(PROBE_MAGIC) + 8 :])
                    return out
        except (OSError, ValueError):
            return None
    return None


def _pid(d: Path, name: str) -> int | None:
    """The PID in NAME.pid if that process is alive and still a trickles process."""
    try:
        pid = int((d / f"{name}.pid").read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    if state == "Z":
        return None
    return pid if b"trickles" in cmd or not cmd else None  # empty while it execs


def _members(d: Path) -> list[dict[str, str]]:
    try:
        members: list[dict[str, str]] = json.loads((d / STATE).read_text())["members"]
    except (OSError, ValueError, KeyError):
        return []
    return members


def _live(d: Path) -> list[int]:
    return [p for m in _members(d) if (p := _pid(d, m["name"])) is not None]


def _row(d: Path, m: dict[str, str]) -> dict[str, Any]:
    pid = _pid(d, m["name"])
    st = probe(m["addr"]) if pid is not None else None
    return {**m, "pid": pid, "healthy": st is not None, "status": st}


def status(d: Path, as_json: bool) -> int:
    members = _members(d)
    if not members:
        print(f"trickles: no cluster in {d}", file=sys.stderr)
        return 1
    rows = [_row(d, m) for m in members]
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'ROLE':8} {'NAME':10} {'PID':>7} {'ADDRESS':22} {'HEALTH':8} PACKETS")
        for r in rows:
            st = r["status"] or {}
            pk = st.get("from_clients", st.get("decapsulated", "-"))
            health = "up" if r["healthy"] else ("no-answer" if r["pid"] else "dead")
            print(f"{r['role']:8} {r['name']:10} {r['pid'] or '-':>7} {r['addr']:22} {health:8} {pk}")
    return 0 if all(r["healthy"] for r in rows) else 1


# -- down, rotate-key -------------------------------------------------------------------------------


def down(d: Path) -> int:
    members = _members(d)
    pids = {m["name"]: p for m in members if (p := _pid(d, m["name"])) is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for name, pid in pids.items():
        while _pid(d, name) is not None and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if _pid(d, name) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its session: workers included
    for m in members:
        (d / f"{m['name']}.pid").unlink(missing_ok=True)
    print(f"cluster down: stopped {len(pids)} process(es)")
    return 0


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def rotate_key(d: Path, force: bool) -> int:
    cfg = ServerConfig()
    try:
        new_id, old_id = rotate(d / KEY, cfg.horizon_s + cfg.skew_s, time.time(), force)
    except KeyFileError as e:
        print(f"trickles: {e}", file=sys.stderr)
        return 2
    pids = _live(d)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
    print(f"key {new_id} now seals, key {old_id} still opens; signalled {len(pids)} process(es)")
    return 0
