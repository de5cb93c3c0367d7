"""A server SIGKILLed mid-transfer and restarted (same key, same port) loses no connection: the
client holds all the state, so the stalled transfer resumes by retransmission and completes."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from .conftest import TCURL, ServerProcess, Site, file_sha256, stop_process, tail

NAME = "20m.bin"
RATE = "4M"  # 20 MB at 4 MB/s: ~5 s, so a kill after ~3 MB lands well inside the transfer
KILL_AFTER = 3 << 20
MAX_RESTART_S = 0.3


def test_kill_and_restart_mid_transfer(site: Site, key_file: Path, tmp_path: Path) -> None:
    srv = ServerProcess(site.root, key_file, tmp_path / "server.log")
    out, err = tmp_path / "out", tmp_path / "tcurl.err"
    total = site.root.joinpath(NAME).stat().st_size
    try:
        srv.start()
        for attempt in range(3):  # retry only the timing (the kill must land mid-transfer)
            out.unlink(missing_ok=True)
            with err.open("wb") as errf:
                client = subprocess.Popen(
                    [TCURL, "-v", "-s", "--limit-rate", RATE, "-o", str(out), srv.url(NAME)],
                    stderr=errf,
                    start_new_session=True,
                )
            try:
                deadline = time.monotonic() + 30
                while (size := out.stat().st_size if out.exists() else 0) < KILL_AFTER:
                    assert client.poll() is None, f"tcurl ended early:\n{err.read_text()}"
                    assert time.monotonic() < deadline, f"transfer stuck at {size} bytes"
                    time.sleep(0.005)
                killed_at = out.stat().st_size
                t0 = time.monotonic()
                srv.kill()
                srv.start(wait=False)  # same port, same key file
                restart_s = time.monotonic() - t0
                srv.wait_ready()
                rc = client.wait(timeout=60)
            finally:
                stop_process(client)
            if killed_at < total and restart_s < MAX_RESTART_S:
                break
            print(
                f"attempt {attempt}: kill at {killed_at} of {total} bytes, restart {restart_s:.2f} s: again"
            )
        else:
            raise AssertionError("could not kill the server mid-transfer in 3 attempts")
        stderr = err.read_text(errors="replace")
        print(
            f"\nkilled after {killed_at} of {total} bytes; new server spawned {restart_s * 1000:.0f} ms later"
        )
        print(stderr.strip().splitlines()[-1])
        assert rc == 0, f"tcurl exit {rc}:\n{stderr}\nserver:\n{tail(srv.log)}"
        assert file_sha256(out) == site.digests[NAME]
        assert stderr.count("Trying") == 1, f"tcurl reconnected:\n{stderr}"
        assert "(trickles)" in stderr
        m = re.search(r"Transport: trickles, .*retransmissions (\d+)", stderr)
        assert m, stderr
        assert int(m.group(1)) > 0, "the stall should have been recovered by retransmission"
    finally:
        srv.stop()
