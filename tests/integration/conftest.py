"""Real processes on real loopback sockets: servers, the gateway, tcurl and curl.

Every process a test starts is started in its own session (so its process group id is its PID) and
is killed by that id in teardown, whatever happened in the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from trickles.wire import MSS

BIN = Path(sys.executable).parent
TRICKLES = str(BIN / "trickles")
TCURL = str(BIN / "tcurl")
CURL = shutil.which("curl") or "curl"
HOST = "127.0.0.1"

SIZES = {
    "empty.bin": 0,
    "one.bin": 1,
    "mss-1.bin": MSS - 1,
    "mss.bin": MSS,
    "mss+1.bin": MSS + 1,
    "1m.bin": 1 << 20,
    "20m.bin": 20 << 20,
}
# Files for the tests through the lossy link (not in SIZES: every-size tests need not fetch them).
LOSSY_SIZES = {"256k.bin": 256_000, "100k.bin": 100_000}
INDEX = b"<!doctype html><title>trickles</title><p>integration index</p>\n"
SUB_FILE = "sub/nested.txt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Site:
    root: Path
    digests: dict[str, str]  # URL path (no leading slash) -> sha256 of the body


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("www")
    digests = {}
    for name, size in {**SIZES, **LOSSY_SIZES}.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        digests[name] = sha256(data)
    (root / "index.html").write_bytes(INDEX)
    digests[""] = digests["index.html"] = sha256(INDEX)
    (root / "sub").mkdir()
    nested = b"nested file\n" * 1000
    (root / SUB_FILE).write_bytes(nested)
    digests[SUB_FILE] = sha256(nested)
    return Site(root, digests)


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "master.key"
    subprocess.run([TRICKLES, "keygen", "-o", str(path)], check=True, timeout=30)
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    return path


def free_port(span: int = 1) -> int:
    """A port p with p..p+span-1 free for both UDP and TCP on loopback (bound, then released)."""
    for _ in range(200):
        with contextlib.ExitStack() as stack:
            probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
            try:
                for p in range(port, port + span):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        if (p, kind) != (port, socket.SOCK_DGRAM):
                            stack.enter_context(socket.socket(socket.AF_INET, kind)).bind((HOST, p))
            except (OSError, OverflowError):
                continue
            return port
    raise RuntimeError("no free port found")


def wait_tcp(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on port (failing fast if proc died)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{tail(log)}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {port} after {timeout} s:\n{tail(log)}")
            time.sleep(0.02)


def tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process (and its group), SIGKILL whatever is left after 5 s, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # also any worker the parent left behind
    proc.wait(timeout=10)


class ServerProcess:
    """``trickles serve`` as a real subprocess."""

    def __init__(self, root: Path, key_file: Path, log: Path, *extra: str, port: int | None = None) -> None:
        self.root, self.key_file, self.log, self.extra = root, key_file, log, extra
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "") -> str:
        return f"http://{HOST}:{self.port}/{path}"

    def start(self, wait: bool = True) -> None:
        cmd = [TRICKLES, "serve", str(self.root), "--listen", f"{HOST}:{self.port}"]
        cmd += ["--key-file", str(self.key_file), *self.extra]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_tcp(self.port, self.proc, self.log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, no goodbye (a crash); reaped before returning."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@contextlib.contextmanager
def running_server(site: Site, key_file: Path, log: Path, *extra: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(site.root, key_file, log, *extra)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server(site: Site, key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(site, key_file, log) as srv:
        yield srv


@dataclass
class GatewayProcess:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def proxy(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_log(self, text: str, timeout: float = 3.0) -> bool:
        """The gateway logs a request after the response went out: wait for the line to show up."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the gateway log:\n{tail(self.log)}")
            time.sleep(0.02)
        return True


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [TRICKLES, "gateway", "--listen", f"{HOST}:{port}", "--allow", HOST],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_tcp(port, proc, log)
        yield GatewayProcess(port, proc, log)
    finally:
        stop_process(proc)


def run(cmd: list[str], timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion (killed by PID if it overruns)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=cwd
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise AssertionError(f"{cmd} did not finish within {timeout} s") from None
    finally:
        if proc.poll() is None:
            stop_process(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


async def tcurl(*args: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, bytes, str]:
    """Run tcurl from a trio test: (exit code, stdout, stderr); a traceback is always a failure."""
    with trio.fail_after(timeout):
        p = await trio.run_process(
            [TCURL, *args], capture_stdout=True, capture_stderr=True, check=False, cwd=cwd
        )
    err = p.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    return p.returncode, p.stdout, err
