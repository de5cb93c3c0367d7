"""``trickles top`` against a real server: a snapshot during a rate-limited download shows the rate,
the live view runs in a pseudo-terminal and quits on Ctrl-C, bad input gives clear exit codes; also
the metrics CLI's errors (a taken port) and the gateway's /healthz."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from trickles.server.metrics import build_flavour

from .conftest import HOST, TCURL, TRICKLES, Site, free_port, running_server, stop_process, wait_tcp

NAME = "20m.bin"


def read_pty(fd: int, until: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while until not in out and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return out


def test_top_once_json_live_pty_and_errors(site: Site, key_file: Path, tmp_path: Path) -> None:
    mport = free_port()
    target = f"{HOST}:{mport}"
    with running_server(site, key_file, tmp_path / "server.log", "--metrics", target) as srv:
        assert srv.proc is not None
        wait_tcp(mport, srv.proc, srv.log)
        client = subprocess.Popen(
            [TCURL, "-s", "--limit-rate", "3M", "-o", os.devnull, srv.url(NAME)], start_new_session=True
        )
        try:
            time.sleep(0.5)  # past the handshake: mid-transfer
            snap = subprocess.run(
                [TRICKLES, "top", "--once", "--json", "--interval", "1", target],
                capture_output=True,
                timeout=30,
            )
            assert snap.returncode == 0, snap.stderr
            doc = json.loads(snap.stdout)
            (t,) = doc["targets"]
            assert t["up"] and t["share"] == 1.0
            assert 1e6 < t["sent_bytes_per_s"] < 1e7  # --limit-rate 3M, plus headers
            assert t["packets_received_per_s"] > 0 and t["packets_sent_per_s"] > t["packets_received_per_s"]
            assert round(t["active_clients"]) == 1 and t["resident_memory_bytes"] > 1 << 20
            assert doc["total"]["jain_fairness"] == 1.0 and doc["total"]["targets_up"] == 1
            live_view_in_a_pty(target)
        finally:
            stop_process(client)
        bad = subprocess.run([TRICKLES, "top", "ftp://x:1"], capture_output=True, timeout=30)
        assert bad.returncode == 2 and b"bad target" in bad.stderr and b"Traceback" not in bad.stderr
        nobody = f"{HOST}:{free_port()}"
        down = subprocess.run(
            [TRICKLES, "top", "--once", "--interval", "0.1", nobody], capture_output=True, timeout=30
        )
        assert down.returncode == 1 and b"DOWN" in down.stdout and b"no target" in down.stderr
        taken = subprocess.run(
            [TRICKLES, "serve", str(site.root), "--listen", f"{HOST}:{free_port()}", "--metrics", target],
            capture_output=True,
            timeout=30,
        )
        assert taken.returncode == 1 and b"Traceback" not in taken.stderr
        assert f"cannot serve metrics on {target}".encode() in taken.stderr


def live_view_in_a_pty(target: str) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: exec top on the terminal
        os.execv(TRICKLES, [TRICKLES, "top", "--interval", "0.3", target])
    try:
        out = read_pty(fd, b"fairness", 15)
        out += read_pty(fd, b"fairness", 5)  # a second frame: the screen is redrawn in place
        assert out.count(b"\x1b[H\x1b[2J") >= 2, out
        text = out.decode(errors="replace")
        assert "trickles top - 1/1 up" in text and target in text and "MB/s out" in text
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "top did not quit on Ctrl-C"
            read_pty(fd, b"\0", 0.1)
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_gateway_metrics_and_healthz(tmp_path: Path) -> None:
    gport, mport = free_port(), free_port()
    log = tmp_path / "gateway.log"
    cmd = [
        TRICKLES,
        "gateway",
        "--listen",
        f"{HOST}:{gport}",
        "--allow",
        HOST,
        "--metrics",
        f"{HOST}:{mport}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_tcp(mport, proc, log)
        wait_tcp(gport, proc, log)
        with urllib.request.urlopen(f"http://{HOST}:{mport}/healthz", timeout=5) as r:
            assert r.status == 200 and json.load(r)["component"] == "gateway"
        with urllib.request.urlopen(f"http://{HOST}:{mport}/metrics", timeout=5) as r:
            text = r.read().decode()
        build = f'build="{build_flavour()}",component="gateway",key_id="",version="0.1.0"'
        assert f"trickles_build_info{{{build}}} 1.0" in text
        assert "process_resident_memory_bytes" in text
        socket.create_connection((HOST, gport), timeout=2).close()
    finally:
        stop_process(proc)
