"""The cluster on loopback: one download through ``trickles spray`` with 1, 2 and 3 replicas, beside
the same download from one server directly; the sprayer's packets per second and CPU per packet
beside the replicas'.

    .venv/bin/python bench/cluster.py [--quick] [--size MB]

CPU is read from /proc (utime + stime of each process) before and after the transfer; the
sprayer's packets are the datagrams it relayed both ways (its status counters), a replica's the
datagrams it received. Writes ``bench/results/cluster.json`` (``cluster_quick.json`` with
``--quick``). Runs ``trickles cluster up/down`` as a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trickles.server.cluster import probe

BIN = Path(sys.executable).parent
TRICKLES, TCURL = str(BIN / "trickles"), str(BIN / "tcurl")
RESULTS = Path(__file__).parent / "results"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fetch(port: int, out: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([TCURL, "-s", "-S", "-v", "-o", str(out), f"http://127.0.0.1:{port}/big.bin"],
                       capture_output=True, timeout=600)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"tcurl failed: {r.stderr.decode()[-500:]}")
    transport = [ln for ln in r.stderr.decode().splitlines() if "Transport:" in ln]
    return time.perf_counter() - t0, transport[-1].lstrip("* ") if transport else ""


def through_sprayer(root: Path, work: Path, n: int, port: int, size: int) -> dict[str, Any]:
    state = work / f"state{n}"
    up = [TRICKLES, "cluster", "up", str(state), "--root", str(root), "--replicas", str(n)]
    subprocess.run([*up, "--listen", f"127.0.0.1:{port}"], check=True, timeout=120)
    try:
        members = json.loads((state / "cluster.json").read_text())["members"]
        pids = {m["name"]: int((state / f"{m['name']}.pid").read_text()) for m in members}
        before_st = {m["name"]: probe(m["addr"]) or {} for m in members}
        before_cpu = {k: cpu_s(p) for k, p in pids.items()}
        secs, transport = fetch(port, work / "out.bin")
        after_cpu = {k: cpu_s(p) for k, p in pids.items()}
        after_st = {m["name"]: probe(m["addr"]) or {} for m in members}
    finally:
        subprocess.run([TRICKLES, "cluster", "down", str(state)], timeout=120)
    procs = {}
    for name in pids:
        a, b = after_st[name], before_st[name]
        if name == "sprayer":
            pk = a["from_clients"] + a["to_clients"] - b["from_clients"] - b["to_clients"]
        else:
            pk = a["datagrams_in"] + a["datagrams_out"] - b["datagrams_in"] - b["datagrams_out"]
        cpu = after_cpu[name] - before_cpu[name]
        procs[name] = {
            "packets": pk,
            "packets_per_s": round(pk / secs),
            "cpu_s": round(cpu, 3),
            "cpu_us_per_packet": round(cpu / pk * 1e6, 2) if pk else None,
        }
    return {"replicas": n, "seconds": round(secs, 3), "MBps": round(size / secs / 1e6, 2),
            "client": transport, "processes": procs}  # fmt: skip


def direct(root: Path, work: Path, port: int, size: int) -> dict[str, Any]:
    key = work / "direct.key"
    subprocess.run([TRICKLES, "keygen", "-o", str(key)], check=True)
    cmd = [TRICKLES, "serve", str(root), "--listen", f"127.0.0.1:{port}", "--key-file", str(key), "--no-tcp"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(1.5)
        c0 = cpu_s(proc.pid)
        secs, transport = fetch(port, work / "out.bin")
        cpu = cpu_s(proc.pid) - c0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"replicas": 0, "seconds": round(secs, 3), "MBps": round(size / secs / 1e6, 2),
            "client": transport, "server_cpu_s": round(cpu, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=20, metavar="MB")
    ap.add_argument("--port", type=int, default=39700)
    args = ap.parse_args()
    size = (2 if args.quick else args.size) << 20
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "www"
        root.mkdir()
        (root / "big.bin").write_bytes(os.urandom(size))
        cases = [direct(root, work, args.port, size)]
        for n in (1, 2, 3):
            cases.append(through_sprayer(root, work, n, args.port + 10 * n, size))
            print(json.dumps(cases[-1]), flush=True)
    out = {"machine": f"{platform.node()} {os.cpu_count()} cpus", "size_bytes": size, "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("cluster_quick.json" if args.quick else "cluster.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
