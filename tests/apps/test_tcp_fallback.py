"""The plain-TCP fallback, exercised with the real curl binary and with raw sockets."""

from __future__ import annotations

import hashlib
import logging
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from trickles.apps.http_head import HttpRequest
from trickles.apps.static import ResponsePlan, StaticSite
from trickles.server.tcp import CHUNK, IDLE_TIMEOUT, TcpStats, serve_tcp, tcp_statistics

pytestmark = pytest.mark.trio

NOW = 1_700_000_000.0
SIZES = [0, 1, 1371, 1372, 1373, 1_000_000]
BIG = 64 * 1024 * 1024  # sparse: larger than any loopback socket buffer


@dataclass
class Server:
    port: int
    site: StaticSite
    stats: TcpStats
    root: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stream(self, target: str, method: str = "GET") -> bytes:
        plan: ResponsePlan = self.site.plan(HttpRequest(method, target, "1.1", (("host", "x"),)), NOW)
        return self.site.read(plan, 0, plan.total_length)


def content(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for size in SIZES:
        (tmp_path / f"f{size}.bin").write_bytes(content(size))
    with (tmp_path / "big.bin").open("wb") as f:
        f.truncate(BIG)
    return tmp_path


async def start(
    nursery: trio.Nursery, root: Path, idle_timeout: float = IDLE_TIMEOUT, **limits: Any
) -> Server:
    site, stats = StaticSite(root), TcpStats()
    serve = partial(
        serve_tcp, site, "127.0.0.1", 0, stats=stats, clock=lambda: NOW, idle_timeout=idle_timeout,
        **limits,
    )  # fmt: skip
    port = await nursery.start(serve)
    return Server(port, site, stats, root)


@pytest.fixture
async def server(nursery: trio.Nursery, root: Path) -> Server:
    return await start(nursery, root)


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    # -q: ignore any ~/.curlrc; --noproxy: never route loopback through an inherited proxy.
    command = ["curl", "-q", "--noproxy", "*", "-sS", "--max-time", "20", *args]
    return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


@pytest.mark.parametrize("size", SIZES)
async def test_full_download(server: Server, size: int) -> None:
    result = await curl("-f", server.url(f"/f{size}.bin"))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(content(size)).hexdigest()


async def test_bytes_are_identical_to_the_site_stream(server: Server) -> None:
    result = await curl("-i", server.url("/f1373.bin"))
    assert result.stdout == server.stream("/f1373.bin")


async def test_range(server: Server) -> None:
    result = await curl("-r", "0-99", "-D", "-", server.url("/f1373.bin"))
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 Partial Content\r\n")
    assert b"\r\nContent-Range: bytes 0-99/1373" in head
    assert body == content(1373)[:100]


async def test_head(server: Server) -> None:
    result = await curl("-I", server.url("/f1000000.bin"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == server.stream("/f1000000.bin", "HEAD")
    assert b"\r\nContent-Length: 1000000\r\n" in result.stdout


async def test_404_fails_curl(server: Server) -> None:
    result = await curl("-f", "-o", "/dev/null", server.url("/nope"))
    assert result.returncode == 22


async def test_if_none_match_gives_304(server: Server) -> None:
    head = (await curl("-I", server.url("/f1.bin"))).stdout.decode()
    etag = next(line for line in head.split("\r\n") if line.startswith("ETag: "))[6:]
    result = await curl(
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        f"If-None-Match: {etag}",
        server.url("/f1.bin"),
    )
    assert result.stdout == b"304"
    other = await curl("-o", "/dev/null", "-w", "%{http_code}", "-H", 'If-None-Match: "x"',
                       server.url("/f1.bin"))  # fmt: skip
    assert other.stdout == b"200"


async def test_keep_alive(server: Server) -> None:
    result = await curl(
        "-w", "%{num_connects}\n", "-o", "/dev/null", "-o", "/dev/null",
        server.url("/f1371.bin"), server.url("/f1.bin"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"1\n0\n"  # the second transfer reused the connection
    assert (server.stats.connections, server.stats.requests) == (1, 2)
    assert server.stats.bytes_sent == len(server.stream("/f1371.bin")) + len(server.stream("/f1.bin"))


async def exchange(port: int, data: bytes, expect: int | None = None) -> bytes:
    """Send raw bytes, then read until EOF (or `expect` bytes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(10):
            while expect is None or len(received) < expect:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
        return received


async def test_pipelining(server: Server) -> None:
    requests = (
        b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /f1372.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    expected = server.stream("/f1.bin") + server.stream("/f1372.bin", "HEAD")
    expected += server.stream("/missing")
    assert await exchange(server.port, requests) == expected
    assert server.stats.requests == 3


async def test_http_1_0_closes_after_response(server: Server) -> None:
    got = await exchange(server.port, b"GET /f1.bin HTTP/1.0\r\n\r\n")
    assert got == server.stream("/f1.bin")


async def test_malformed_request_gets_400_and_close(server: Server) -> None:
    got = await exchange(server.port, b"GARBAGE\r\n\r\n")
    assert got == server.site.read(server.site.error_plan(400, NOW), 0, 1 << 20)
    assert server.stats.errors == 1


async def test_huge_head_gets_431(server: Server) -> None:
    # The cap is the Trickles transport's (16 KiB), so a connection buffers little.
    head = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * (16 * 1024 + 10)
    got = await exchange(server.port, head)
    assert got.startswith(b"HTTP/1.1 431 ")
    fits = b"GET /f1.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: "
    fits += b"c" * (16 * 1024 - len(fits) - 100) + b"\r\n\r\n"
    assert await exchange(server.port, fits) == server.stream("/f1.bin")


async def test_unsupported_transfer_coding_gets_501(server: Server) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
    assert (await exchange(server.port, request)).startswith(b"HTTP/1.1 501 ")


async def test_same_limits_as_the_trickles_transport(server: Server) -> None:
    long_target = b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await exchange(server.port, long_target)).startswith(b"HTTP/1.1 414 ")
    two_hosts = b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"
    assert (await exchange(server.port, two_hosts)).startswith(b"HTTP/1.1 400 ")
    newer = b"GET /f1.bin HTTP/1.9\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert await exchange(server.port, newer) == server.stream("/f1.bin")


async def test_request_body_is_drained(server: Server) -> None:
    requests = (
        b"GET /f1.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /f1.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert await exchange(server.port, requests) == server.stream("/f1.bin") * 2


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.01)


async def test_client_disconnect_is_not_an_error(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trickles.server.tcp")
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 OK")
    await stream.aclose()
    await wait_for(lambda: server.stats.disconnects == 1)
    assert server.stats.errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_content_change_mid_body_aborts(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        received = len(await stream.receive_some(65536))
        with (server.root / "big.bin").open("ab") as f:
            f.write(b"appended")
        with trio.fail_after(10):
            while chunk := await stream.receive_some(1 << 20):
                received += len(chunk)
    assert received < BIG  # cut short: the client can tell the body is incomplete
    assert server.stats.errors == 1


async def test_planning_failure_gives_500(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(req: HttpRequest, now: float, client: bytes = b"") -> ResponsePlan:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.site, "plan", broken)
    caplog.set_level(logging.ERROR, logger="trickles.server.tcp")
    result = await curl("-o", "/dev/null", "-w", "%{http_code}", server.url("/f1.bin"))
    assert result.stdout == b"500"
    assert server.stats.errors == 1
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["boom"]


async def test_idle_connections_time_out(nursery: trio.Nursery, root: Path) -> None:
    server = await start(nursery, root, idle_timeout=0.2)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
    assert server.stats.timeouts == 1


async def test_global_statistics(nursery: trio.Nursery, root: Path) -> None:
    before = tcp_statistics().snapshot()
    port = await nursery.start(serve_tcp, StaticSite(root), "127.0.0.1", 0)
    assert (await curl("-f", "-o", "/dev/null", f"http://127.0.0.1:{port}/f1.bin")).returncode == 0
    after = tcp_statistics().snapshot()
    assert after["requests"] == before["requests"] + 1
    assert after["bytes_sent"] > before["bytes_sent"]


# -- slow-loris and containment: each defence against a real listener, with real sockets ------------


async def test_slow_loris_is_cut_at_the_head_deadline(nursery: trio.Nursery, root: Path) -> None:
    server = await start(nursery, root, head_timeout=0.5)  # the idle timer (60 s) never fires
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    head = b"GET /f1.bin HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    received = b""
    started = trio.current_time()
    async with stream:
        with trio.fail_after(10):
            for byte in head:  # one byte per 100 ms: 14 s for the whole head
                try:
                    await stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.1):
                    received += await stream.receive_some(65536)
                if received:
                    break
            while chunk := await stream.receive_some(65536):
                received += chunk
    elapsed = trio.current_time() - started
    assert received == server.site.read(server.site.error_plan(408, NOW), 0, 1 << 20)
    assert 0.4 < elapsed < 3.0, elapsed
    assert (server.stats.head_timeouts, server.stats.timeouts, server.stats.requests) == (1, 0, 0)


async def test_silent_connection_is_closed_at_the_head_deadline(nursery: trio.Nursery, root: Path) -> None:
    server = await start(nursery, root, head_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""  # no request started: no 408 either
    assert server.stats.head_timeouts == 1


async def test_keep_alive_idle_is_not_cut_by_the_head_deadline(nursery: trio.Nursery, root: Path) -> None:
    server = await start(nursery, root, head_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    expected = server.stream("/f1.bin")
    async with stream:
        for _ in range(2):
            await stream.send_all(b"GET /f1.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            with trio.fail_after(5):
                while len(got) < len(expected):
                    got += await stream.receive_some(65536)
            assert got == expected
            await trio.sleep(0.6)  # idle between requests: only the idle timer runs
    assert (server.stats.requests, server.stats.head_timeouts) == (2, 0)


async def test_connection_limit(nursery: trio.Nursery, root: Path) -> None:
    server = await start(nursery, root, max_conns=3)
    held = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(3)]
    for stream in held:
        await stream.send_all(b"GET /f1.bin HTTP/1.1\r\n")  # half a head: holds its slot
    await wait_for(lambda: server.stats.connections == 3)
    extra = await trio.open_tcp_stream("127.0.0.1", server.port)
    with trio.fail_after(5):
        try:
            assert await extra.receive_some(100) == b""  # closed at once, nothing sent
        except trio.BrokenResourceError:
            pass
    await extra.aclose()
    assert (server.stats.refused, server.stats.connections) == (1, 3)
    await held.pop().aclose()
    await wait_for(lambda: server.stats.closed == 1)  # its slot is free again
    assert await exchange(server.port, b"GET /f1.bin HTTP/1.0\r\n\r\n") == server.stream("/f1.bin")
    assert server.stats.refused == 1
    for stream in held:
        await stream.aclose()


async def test_handler_exception_closes_only_its_connection(
    nursery: trio.Nursery, root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(nursery, root)
    real_read = server.site.read

    def read(plan: ResponsePlan, offset: int, length: int) -> bytes:
        if offset > 0 and plan.origin.path == b"f1000000.bin":
            raise RuntimeError("boom")  # a bug past the first piece: escapes the request
        return real_read(plan, offset, length)

    monkeypatch.setattr(server.site, "read", read)
    caplog.set_level(logging.ERROR, logger="trickles.server.tcp")
    for _ in range(3):
        got = await exchange(server.port, b"GET /f1000000.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK") and len(got) == CHUNK  # cut short, then closed
    assert await exchange(server.port, b"GET /f1.bin HTTP/1.0\r\n\r\n") == server.stream("/f1.bin")
    assert (server.stats.internal, server.stats.errors) == (3, 3)
    logged = [r for r in caplog.records if r.exc_info]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == ["boom"]  # rate-limited: one
