"""End-to-end tests of ``tcurl`` against a local h11 server.

``tcurl()`` runs ``python -m trickles.client`` as a subprocess, for exit-code / stdout /
stderr fidelity; ``tcurl_here()`` runs the same ``cli.run`` in a worker thread, which is
much cheaper, for the many checks where the process boundary adds nothing.  Plain unit
tests cover the parser, the URL splitter and the write-out formatter.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from trickles.client import cli, options, output, urls
from trickles.client.api import NotTrickles, TransferStats
from trickles.client.tcp_transport import TcpConnection, TcpTransport

from .test_tcp_transport import BIG, FILES, MEDIUM, SMALL, FileServer, closed_port, server

pytestmark = pytest.mark.slow  # most run tcurl as a subprocess: left out of `make check`

__all__ = ["server"]  # the fixture, re-exported so pytest finds it here


@dataclass
class Run:
    code: int
    stdout: bytes
    stderr: str
    seconds: float


async def tcurl(*args: str, cwd: Path, timeout: float = 20) -> Run:
    """Run ``python -m trickles.client ARGS`` and check it never shows a traceback."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        process = await trio.run_process(
            [sys.executable, "-m", "trickles.client", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
        )
    run = Run(
        process.returncode,
        process.stdout,
        process.stderr.decode(),
        trio.current_time() - start,
    )
    assert "Traceback" not in run.stderr
    return run


async def tcurl_here(*args: str) -> Run:
    """Run ``cli.run(ARGS)`` in a worker thread with in-memory stdout and stderr."""
    stdout, stderr = io.BytesIO(), io.StringIO()
    start = trio.current_time()
    with trio.fail_after(20):
        code = await trio.to_thread.run_sync(cli.run, list(args), stdout, stderr, abandon_on_cancel=True)
    run = Run(code, stdout.getvalue(), stderr.getvalue(), trio.current_time() - start)
    assert "Traceback" not in run.stderr
    return run


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- downloads


async def test_download_to_file_and_stdout(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("-o", "big.out", server.url("/big.bin"), cwd=tmp_path)
    assert (run.code, run.stdout, run.stderr) == (0, b"", "")
    assert sha256((tmp_path / "big.out").read_bytes()) == sha256(BIG)

    run = await tcurl(server.url("/big.bin"), cwd=tmp_path)
    assert run.code == 0
    assert sha256(run.stdout) == sha256(BIG)


async def test_empty_download_still_creates_the_file(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl_here("-o", str(tmp_path / "empty.out"), server.url("/empty.bin"))
    assert run.code == 0
    assert (tmp_path / "empty.out").read_bytes() == b""


async def test_remote_name(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("-O", server.url("/dir/file.txt?x=1"), "-O", server.url("/dir/"), cwd=tmp_path)
    assert run.code == 0
    assert (tmp_path / "file.txt").read_bytes() == FILES["/dir/file.txt"]
    assert (tmp_path / "curl_response").read_bytes() == FILES["/dir/"]


async def test_several_urls_share_one_connection(server: FileServer) -> None:
    run = await tcurl_here("--tcp", server.url("/small.txt"), server.url("/dir/file.txt"))
    assert run.code == 0
    assert run.stdout == SMALL + FILES["/dir/file.txt"]
    assert server.connections == 1


async def test_request_headers(server: FileServer) -> None:
    run = await tcurl_here("-H", "X-Test: yes", "-H", "Accept:", "-A", "agent/9", server.url("/small.txt"))
    assert run.code == 0
    method, path, headers = server.requests[-1]
    assert (method, path) == ("GET", "/small.txt")
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["user-agent"] == "agent/9"
    assert headers["x-test"] == "yes"
    assert "accept" not in headers


async def test_default_user_agent_and_dot_segments(server: FileServer) -> None:
    run = await tcurl_here(server.url("/dir/../small.txt"))
    assert (run.code, run.stdout) == (0, SMALL)
    assert server.requests[-1][1] == "/small.txt"
    assert server.requests[-1][2]["user-agent"] == "tcurl/0.1"


# --------------------------------------------------------------------------- -i, -I, -r, -f


async def test_include_headers(server: FileServer) -> None:
    run = await tcurl_here("-i", server.url("/small.txt"))
    assert run.code == 0
    head, _, body = run.stdout.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert f"Content-Length: {len(SMALL)}".encode() in lines
    assert body == SMALL


async def test_head_prints_headers_only(server: FileServer) -> None:
    run = await tcurl_here("-I", server.url("/big.bin"))
    assert run.code == 0
    assert run.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert run.stdout.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(BIG)}\r\n".encode() in run.stdout
    assert server.requests[-1][0] == "HEAD"


async def test_range(server: FileServer, tmp_path: Path) -> None:
    part = str(tmp_path / "part")
    run = await tcurl_here("-r", "100-199", "-w", "%{http_code}", "-o", part, server.url("/big.bin"))
    assert (run.code, run.stdout) == (0, b"206")
    assert (tmp_path / "part").read_bytes() == BIG[100:200]
    assert server.requests[-1][2]["range"] == "bytes=100-199"


async def test_fail_on_http_error(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("-f", "-o", "missing.out", server.url("/missing"), cwd=tmp_path)
    assert run.code == 22
    assert run.stdout == b""
    assert run.stderr == "tcurl: (22) The requested URL returned error: 404\n"
    assert not (tmp_path / "missing.out").exists()

    run = await tcurl_here(server.url("/missing"))  # without -f: body, success
    assert (run.code, run.stdout) == (0, b"not found\n")


async def test_clustered_short_options(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl_here("-sSfo", str(tmp_path / "out"), server.url("/small.txt"))
    assert (run.code, run.stderr) == (0, "")
    assert (tmp_path / "out").read_bytes() == SMALL
    run = await tcurl_here(f"-sSfo{tmp_path / 'out2'}", server.url("/missing"))
    assert run.code == 22
    assert run.stderr == "tcurl: (22) The requested URL returned error: 404\n"


# --------------------------------------------------------------------------- -w


async def test_write_out_variables(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/small.txt")
    fmt = (
        r"%{http_code} %{response_code} %{size_download} %{exitcode} [%{errormsg}] %{url} "
        r"%header{content-length} %{num_retransmits} 100%%\n%{stderr}on stderr\t%{time_total}"
    )
    run = await tcurl("-o", "x", "-w", fmt, url, cwd=tmp_path)
    assert run.code == 0
    assert run.stdout.decode() == f"200 200 {len(SMALL)} 0 [] {url} {len(SMALL)} 0 100%\n"
    assert re.fullmatch(r"on stderr\t\d+\.\d{6}", run.stderr)


async def test_write_out_speed_from_file_and_unknown(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "fmt").write_text("%{speed_download} %{bogus}%{time_total}\n")
    run = await tcurl_here("-o", str(tmp_path / "x"), "-w", f"@{tmp_path / 'fmt'}", server.url("/big.bin"))
    assert run.code == 0
    speed, total = run.stdout.decode().split()
    assert int(speed) > 0
    assert int(speed) == pytest.approx(len(BIG) / float(total), rel=0.05)
    assert run.stderr == "tcurl: unknown --write-out variable: 'bogus'\n"


async def test_write_out_after_failure() -> None:
    port = closed_port()
    run = await tcurl_here("-s", "-w", "%{http_code} %{exitcode} %{errormsg}", f"http://127.0.0.1:{port}/")
    assert run.code == 7
    assert re.fullmatch(
        rf"000 7 Failed to connect to 127\.0\.0\.1 port {port} after \d+ ms: Connection refused",
        run.stdout.decode(),
    )


# --------------------------------------------------------------------------- parallel


async def test_parallel_into_files(server: FileServer, tmp_path: Path) -> None:
    paths = ["/big.bin", "/400k.bin", "/small.txt", "/empty.bin", "/dir/file.txt"]
    args: list[str] = ["-Z", "--parallel-max", "3"]
    for index, path in enumerate(paths):
        args += ["-o", str(tmp_path / f"out{index}"), server.url(path)]
    run = await tcurl_here(*args)
    assert run.code == 0
    for index, path in enumerate(paths):
        assert sha256((tmp_path / f"out{index}").read_bytes()) == sha256(FILES[path])
    assert server.connections >= 2  # really concurrent, not one reused connection


async def test_parallel_stdout_keeps_url_order(server: FileServer, tmp_path: Path) -> None:
    # Every answer takes long enough that the three overlap even on a loaded machine; the first is
    # the slowest, so output order is not completion order.
    urls = [server.url("/delay/1.2/first"), server.url("/delay/0.6/second"), server.url("/delay/0.9/third")]
    run = await tcurl("-Z", "-w", "<%{url}>", *urls, cwd=tmp_path)
    assert run.code == 0
    assert run.stdout.decode() == "".join(
        f"{text}<{url}>" for text, url in zip(["first", "second", "third"], urls, strict=True)
    )
    assert server.max_active == 3  # all three were being answered at once: the delays overlapped


# --------------------------------------------------------------------------- failures


async def test_max_time(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("-m", "0.5", server.url("/slow"), cwd=tmp_path)
    assert run.code == 28
    assert run.stdout == b"x" * 10
    assert re.fullmatch(
        r"tcurl: \(28\) Operation timed out after \d+ milliseconds with 10 out of 1000 bytes "
        r"received\n",
        run.stderr,
    )
    assert run.seconds < 5


async def test_connection_refused(tmp_path: Path) -> None:
    port = closed_port()
    run = await tcurl(f"http://127.0.0.1:{port}/x", cwd=tmp_path)
    assert run.code == 7
    assert re.fullmatch(
        rf"tcurl: \(7\) Failed to connect to 127\.0\.0\.1 port {port} after \d+ ms: "
        r"Connection refused\n",
        run.stderr,
    )


async def test_unknown_host(tmp_path: Path) -> None:
    run = await tcurl("http://nonexistent.invalid/", cwd=tmp_path)
    assert (run.code, run.stderr) == (6, "tcurl: (6) Could not resolve host: nonexistent.invalid\n")


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("http:///path", 3, "URL rejected: No host part in the URL"),
        ("http://host:99999/", 3, "URL rejected: Port number was not a decimal number between 0 and 65535"),
        ("http://exa mple/", 3, "URL rejected: Malformed input to a URL function"),
        ("https://example.com/", 1, 'Protocol "https" not supported'),
    ],
)
async def test_bad_urls(url: str, code: int, message: str) -> None:
    run = await tcurl_here(url)
    assert (run.code, run.stderr) == (code, f"tcurl: ({code}) {message}\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus", "http://x/"], "tcurl: option --bogus: is unknown"),
        (["-sx", "http://x/"], "tcurl: option -sx: is unknown"),
        (["http://x/", "-o"], "tcurl: option -o: requires parameter"),
        (["-m", "soon", "http://x/"], "tcurl: option -m: expected a proper numerical parameter"),
        ([], "tcurl: no URL specified!"),
    ],
)
async def test_usage_errors(args: list[str], message: str) -> None:
    run = await tcurl_here(*args)
    assert run.code == 2
    assert run.stderr == f"{message}\ntcurl: try 'tcurl --help' for more information\n"


async def test_write_error(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("-o", "no/such/dir/file", server.url("/small.txt"), cwd=tmp_path)
    assert run.code == 23
    assert run.stderr == ("tcurl: (23) Failed to open the file no/such/dir/file: No such file or directory\n")


async def test_partial_transfer(server: FileServer) -> None:
    run = await tcurl_here(server.url("/truncated"))
    assert (run.code, run.stdout) == (18, b"0123456789")
    assert run.stderr == "tcurl: (18) end of response with 90 bytes missing\n"


async def test_silent_and_show_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    run = await tcurl("-s", url, cwd=tmp_path)
    assert (run.code, run.stderr) == (7, "")
    run = await tcurl("-sS", url, cwd=tmp_path)
    assert run.code == 7
    assert run.stderr.startswith("tcurl: (7) Failed to connect to 127.0.0.1")


async def test_last_failure_sets_exit_code(server: FileServer) -> None:
    run = await tcurl_here("-f", server.url("/missing"), server.url("/small.txt"))
    assert (run.code, run.stdout) == (22, SMALL)  # the later URL still ran


# --------------------------------------------------------------------------- retry, rate


async def test_retry_until_flaky_endpoint_recovers(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("--retry", "3", "--retry-delay", "0.1", server.url("/flaky/a/2"), cwd=tmp_path)
    assert (run.code, run.stdout) == (0, b"ok after 2\n")
    assert run.stderr.splitlines() == [
        "Warning: Problem : HTTP error. Will retry in 0.1 seconds. 3 retries left.",
        "Warning: Problem : HTTP error. Will retry in 0.1 seconds. 2 retries left.",
    ]


async def test_retry_gives_up(server: FileServer) -> None:
    run = await tcurl_here("-sf", "--retry", "1", "--retry-delay", "0.1", server.url("/flaky/b/5"))
    assert (run.code, run.stdout) == (22, b"")
    assert server.flaky_hits["b"] == 2
    run = await tcurl_here(server.url("/flaky/c/1"))  # no --retry: the 503 page
    assert (run.code, run.stdout) == (0, b"busy\n")
    # --retry-max-time ends the retries early; the last error page is then the output.
    run = await tcurl_here(
        "-s", "--retry", "5", "--retry-delay", "0.2", "--retry-max-time", "0.3", server.url("/flaky/d/9")
    )
    assert (run.code, run.stdout, server.flaky_hits["d"]) == (0, b"busy\n", 2)


async def test_retry_on_timeout(server: FileServer) -> None:
    run = await tcurl_here(
        "-s",
        "-m",
        "0.2",
        "--retry",
        "1",
        "--retry-delay",
        "0.1",
        "-w",
        "%{num_retries}",
        server.url("/stall"),
    )
    assert (run.code, run.stdout) == (28, b"1")
    assert len(server.requests) == 2


async def test_limit_rate(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("--limit-rate", "200k", "-o", "medium", server.url("/400k.bin"), cwd=tmp_path)
    assert run.code == 0
    assert sha256((tmp_path / "medium").read_bytes()) == sha256(MEDIUM)
    assert run.seconds >= 1.5  # 400 000 B at 204 800 B/s is 1.95 s


# --------------------------------------------------------------------------- transports


async def test_tcp_flag_and_verbose_trace(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("--tcp", "-v", "-o", "x", server.url("/small.txt"), cwd=tmp_path)
    assert run.code == 0
    lines = run.stderr.splitlines()
    assert "trickles" not in run.stderr.lower().replace("trickles/", "")
    assert f"* Connected to 127.0.0.1 port {server.port} (tcp)" in lines
    assert "> GET /small.txt HTTP/1.1" in lines
    assert f"> Host: 127.0.0.1:{server.port}" in lines
    assert "< HTTP/1.1 200 OK" in lines
    assert f"< Content-Length: {len(SMALL)}" in lines
    assert re.match(
        r"\* Transport: tcp, RTT (-|\d+\.\d+ ms), window -, retransmissions \d+, "
        r"continuations received 0$",
        lines[-1],
    )


async def test_default_transport_falls_back_to_tcp(server: FileServer, tmp_path: Path) -> None:
    run = await tcurl("-v", server.url("/small.txt"), cwd=tmp_path)
    assert (run.code, run.stdout) == (0, SMALL)
    assert f"*   Trying 127.0.0.1:{server.port} (trickles)..." in run.stderr.splitlines()
    assert "; falling back to TCP\n" in run.stderr
    assert "* Transport: tcp," in run.stderr


class FakeTrickles:
    """A stand-in Trickles transport: refuses (NotTrickles) or rides on TCP."""

    name = "trickles"

    def __init__(self, speaks_trickles: bool) -> None:
        self.speaks_trickles = speaks_trickles
        self.attempts = 0

    async def connect(self, host: str, port: int, *, timeout: float) -> TcpConnection:
        self.attempts += 1
        if not self.speaks_trickles:
            raise NotTrickles(f"No Trickles server at {host} port {port}")
        connection = await TcpTransport().connect(host, port, timeout=timeout)
        connection.stats = lambda: TransferStats(  # type: ignore[method-assign]
            "trickles", rtt_s=0.0012, cwnd=40, retransmissions=0, continuations=812
        )
        return connection


async def run_in_process(
    monkeypatch: pytest.MonkeyPatch, transport: FakeTrickles, args: Sequence[str]
) -> tuple[int, bytes, str]:
    monkeypatch.setattr(cli, "load_trickles_transport", lambda reporter: transport)
    run = await tcurl_here(*args)
    return run.code, run.stdout, run.stderr


async def test_not_trickles_falls_back_once_per_host(
    server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTrickles(speaks_trickles=False)
    # -f closes the connection after the 404, so the second URL needs a new one.
    code, out, err = await run_in_process(
        monkeypatch, fake, ["-v", "-f", server.url("/missing"), server.url("/small.txt")]
    )
    assert (code, out) == (22, SMALL)
    assert server.connections == 2
    assert f"* No Trickles server at 127.0.0.1 port {server.port}; falling back to TCP" in (err.splitlines())
    assert fake.attempts == 1


async def test_trickles_transport_figures(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = await run_in_process(
        monkeypatch, FakeTrickles(speaks_trickles=True), ["-v", server.url("/small.txt")]
    )
    assert (code, out) == (0, SMALL)
    assert err.splitlines()[-1] == (
        "* Transport: trickles, RTT 1.2 ms, window 40, retransmissions 0, continuations received 812"
    )


async def test_tcp_flag_skips_trickles(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTrickles(speaks_trickles=True)
    code, out, _ = await run_in_process(monkeypatch, fake, ["--tcp", server.url("/small.txt")])
    assert (code, out, fake.attempts) == (0, SMALL, 0)


# --------------------------------------------------------------------------- terminal


def run_with_terminal_stderr(args: Sequence[str], cwd: Path) -> tuple[int, str]:
    """Run tcurl with stderr on a pseudo-terminal, so that progress output is enabled."""
    master, slave = os.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "trickles.client", *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=cwd,
    ) as process:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=20)
    os.close(master)
    return code, b"".join(chunks).decode()


async def test_progress_only_on_a_terminal(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/big.bin")
    code, err = await trio.to_thread.run_sync(run_with_terminal_stderr, ["-o", "a", url], tmp_path)
    assert code == 0
    assert "% Total" in err and "100 1024k  100 1024k" in err
    code, err = await trio.to_thread.run_sync(run_with_terminal_stderr, ["-#", "-o", "b", url], tmp_path)
    assert code == 0
    assert "#" in err and "100.0%" in err
    code, err = await trio.to_thread.run_sync(run_with_terminal_stderr, ["-s", "-o", "c", url], tmp_path)
    assert (code, err) == (0, "")
    run = await tcurl_here("-o", str(tmp_path / "d"), url)  # stderr is no terminal: no meter
    assert (run.code, run.stderr) == (0, "")


async def test_help_version_and_usage_exit_code(tmp_path: Path) -> None:
    run = await tcurl_here("--help", "--bogus")  # -h acts at once, like curl's
    assert run.code == 0 and b"--limit-rate" in run.stdout and b"-Z, --parallel" in run.stdout
    run = await tcurl_here("-V")
    assert run.code == 0 and run.stdout.startswith(b"tcurl 0.1")
    run = await tcurl("--bogus", "http://x/", cwd=tmp_path)  # the real process exit status
    assert (run.code, run.stdout) == (2, b"")
    assert run.stderr.startswith("tcurl: option --bogus: is unknown\n")


# --------------------------------------------------------------------------- units


def test_parse_args_clusters_like_curl() -> None:
    opts = options.parse_args(
        [
            "-sSfo",
            "out",
            "-#",
            "-ZOm1.5",
            "http://a/",
            "--retry",
            "2",
            "--limit-rate",
            "1.5M",
            "-H",
            "X;",
            "b/c",
            "-rx",
            "--",
            "-weird",
        ]
    )
    assert (opts.silent, opts.show_error, opts.fail, opts.progress_bar, opts.parallel) == (
        True,
        True,
        True,
        True,
        True,
    )
    assert opts.outputs == ["out", None]
    assert opts.max_time == 1.5
    assert opts.retry == 2
    assert opts.limit_rate == 1.5 * 1024 * 1024
    assert opts.headers == [("X", "")]
    assert opts.byte_range == "x"
    assert opts.urls == ["http://a/", "b/c", "-weird"]


def test_parse_url() -> None:
    url = urls.parse_url("localhost:8080/a/./b/../c?q=1#frag")
    assert (url.host, url.port, url.target, url.host_header) == (
        "localhost",
        8080,
        "/a/c?q=1",
        "localhost:8080",
    )
    url = urls.parse_url("http://[::1]/caf\u00e9")
    assert (url.host, url.port, url.target, url.host_header) == (
        "::1",
        80,
        "/caf%C3%A9",
        "[::1]",
    )
    assert urls.parse_url("http://h/x/..", path_as_is=True).target == "/x/.."
    assert urls.parse_url("http://h").file_name == "curl_response"
    with pytest.raises(urls.UrlError):
        urls.parse_url("http://[::1/")


def test_write_out_escapes_and_streams() -> None:
    outcome = output.Outcome(url_text="u", status=404, headers=[("A", "1"), ("a", "2")])
    pieces, unknown = output.render_write_out(
        r"%{http_code}\t%header{a}%{stderr}%%\z%{nope}%{stdout}%{", outcome
    )
    assert pieces == [
        ("stdout", "404"),
        ("stdout", "\t"),
        ("stdout", "1, 2"),
        ("stderr", "%"),
        ("stderr", "\\z"),
        ("stdout", "%{"),
    ]
    assert unknown == ["nope"]


async def test_internal_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(reporter: output.Reporter) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "load_trickles_transport", broken)
    run = await tcurl_here("http://127.0.0.1:1/")
    assert (run.code, run.stderr) == (43, "tcurl: (43) internal error: RuntimeError: boom\n")
