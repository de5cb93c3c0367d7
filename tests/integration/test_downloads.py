"""Byte-identical downloads of every size over every client path: tcurl (Trickles and --tcp), the
stream API, the gateway with the real curl, and the real curl over the TCP fallback."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio

import trickles.client
from trickles.client.allowlist import Allowlist
from trickles.client.gateway import Gateway, Upstream, serve_gateway

from .conftest import (
    CURL,
    HOST,
    SIZES,
    SUB_FILE,
    TCURL,
    GatewayProcess,
    ServerProcess,
    Site,
    file_sha256,
    free_port,
    run,
    sha256,
    stop_process,
    tail,
    wait_tcp,
)

FILES = [*SIZES, "index.html", SUB_FILE]


def transport_of(stderr: bytes) -> str:
    m = re.search(rb"Transport: (\w+)", stderr)
    assert m, f"no 'Transport:' line in tcurl -v output:\n{stderr.decode(errors='replace')}"
    return m.group(1).decode()


@pytest.mark.parametrize("name", FILES)
def test_tcurl_trickles(server: ServerProcess, site: Site, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    r = run([TCURL, "-v", "-s", "-o", str(out), server.url(name)])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert transport_of(r.stderr) == "trickles"
    assert file_sha256(out) == site.digests[name]


def test_tcurl_tcp(server: ServerProcess, site: Site, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run([TCURL, "--tcp", "-v", "-s", "-o", str(out), server.url("1m.bin")])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert transport_of(r.stderr) == "tcp"
    assert file_sha256(out) == site.digests["1m.bin"]


def test_tcurl_directory_listing(server: ServerProcess) -> None:
    r = run([TCURL, "-s", "-i", server.url("sub/")])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.startswith(b"HTTP/1.1 200"), r.stdout[:200]
    assert b"nested.txt" in r.stdout


@pytest.mark.parametrize("name", FILES)
def test_curl_tcp_fallback(server: ServerProcess, site: Site, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    r = run([CURL, "-s", "-S", "-f", "-o", str(out), server.url(name)])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert file_sha256(out) == site.digests[name]


# -- the stream API -----------------------------------------------------------------------------------


async def stream_get(port: int, paths: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    """GET every path, pipelined on one ``trickles.client.connect`` stream; parse with h11."""
    stream = await trickles.client.connect(HOST, port)
    try:
        for p in paths:
            await stream.send_all(f"GET /{p} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        await stream.send_eof()
        parser = h11.Connection(h11.CLIENT)
        results = []
        for p in paths:
            if parser.our_state is h11.DONE:
                parser.start_next_cycle()
            parser.send(h11.Request(method="GET", target=f"/{p}", headers=[("Host", HOST)]))
            parser.send(h11.EndOfMessage())
            status, headers, body = 0, {}, bytearray()
            while True:
                ev = parser.next_event()
                if ev is h11.NEED_DATA:
                    parser.receive_data(await stream.receive_some(65536))
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                    headers = {k.decode(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected h11 event {ev!r}")
            results.append((status, headers, bytes(body)))
        return results
    finally:
        await stream.aclose()


@pytest.mark.parametrize("name", FILES)
async def test_stream_api(server: ServerProcess, site: Site, name: str) -> None:
    with trio.fail_after(60):
        [(status, headers, body)] = await stream_get(server.port, [name])
    assert status == 200
    assert int(headers["content-length"]) == len(body)
    assert sha256(body) == site.digests[name]


async def test_stream_api_pipelined(server: ServerProcess, site: Site) -> None:
    names = ["index.html", "mss+1.bin", "empty.bin", "1m.bin", "one.bin"]
    with trio.fail_after(60):
        results = await stream_get(server.port, names)
    assert [s for s, _, _ in results] == [200] * len(names)
    assert [sha256(b) for _, _, b in results] == [site.digests[n] for n in names]


# -- the gateway ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_gateway_curl(
    gateway: GatewayProcess, server: ServerProcess, site: Site, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    r = run([CURL, "-s", "-S", "-f", "-o", str(out), "-x", gateway.proxy, server.url(name)])
    assert r.returncode == 0, r.stderr.decode(errors="replace") + tail(gateway.log)
    assert file_sha256(out) == site.digests[name]
    assert gateway.wait_log(f"GET {server.url(name)} -> 200 via trickles")


def test_gateway_keepalive_and_head(
    gateway: GatewayProcess, server: ServerProcess, site: Site, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    urls = [server.url("mss.bin"), server.url("1m.bin")]
    r = run([CURL, "-s", "-S", "-x", gateway.proxy, urls[0], "-o", str(a), urls[1], "-o", str(b),
             "-w", "%{num_connects} "])  # fmt: skip
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.split() == [b"1", b"0"], "curl should reuse its proxy connection"
    assert (file_sha256(a), file_sha256(b)) == (site.digests["mss.bin"], site.digests["1m.bin"])
    r = run([CURL, "-s", "-S", "-I", "-x", gateway.proxy, server.url("mss+1.bin")])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    head = r.stdout.decode().lower()
    assert head.startswith("http/1.1 200")
    assert f"content-length: {SIZES['mss+1.bin']}\r\n" in head
    assert "proxy-connection" not in head and "transfer-encoding" not in head


def test_gateway_falls_back_to_tcp(gateway: GatewayProcess, site: Site, tmp_path: Path) -> None:
    """An origin that speaks only TCP (Python's http.server) is reached over TCP."""
    port = free_port()
    log = tmp_path / "http.server.log"
    with log.open("wb") as f:
        origin = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "-d", str(site.root)],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_tcp(port, origin, log)
        out = tmp_path / "out"
        url = f"http://{HOST}:{port}/1m.bin"
        r = run([CURL, "-s", "-S", "-f", "-o", str(out), "-x", gateway.proxy, url])
        assert r.returncode == 0, r.stderr.decode(errors="replace") + tail(gateway.log)
        assert file_sha256(out) == site.digests["1m.bin"]
        assert gateway.wait_log(f"GET {url} -> 200 via tcp")
    finally:
        stop_process(origin)


async def curl(*args: str) -> tuple[int, bytes]:
    r = await trio.run_process([CURL, "-s", *args], capture_stdout=True, capture_stderr=True, check=False)
    return r.returncode, r.stdout


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read the reply to EOF (the gateway closes after an error)."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
        return reply


LOOPBACK = Allowlist.parse([HOST])  # the in-process gateways may reach the test servers


async def test_gateway_in_process_errors(server: ServerProcess, site: Site) -> None:
    """serve_gateway reports its port; errors are short HTTP answers, not hangs or tracebacks."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            serve = functools.partial(serve_gateway, allow=LOOPBACK, probe_timeout=0.5)
            gport = await nursery.start(serve, HOST, 0)
            proxy = f"http://{HOST}:{gport}"
            code, body = await curl("-x", proxy, server.url("index.html"))
            assert code == 0 and sha256(body) == site.digests["index.html"]
            dead = free_port()  # nothing listens there: ICMP refuses UDP, then TCP is refused
            code, body = await curl("-w", "\n%{http_code}", "-x", proxy, f"http://{HOST}:{dead}/x")
            assert code == 0 and body.endswith(b"\n502"), body
            assert b"Failed to connect" in body
            code, body = await curl("-w", "\n%{http_code}", f"{proxy}/not-a-proxy-request")
            assert body.endswith(b"\n400"), body
            code, body = await curl("-w", "%{http_connect}", "-p", "-x", proxy, server.url("index.html"))
            assert code != 0 and body.endswith(b"405"), body
            for bad in (b"GET ftp://h/x HTTP/1.1", b"GET http://[::1/ HTTP/1.1", b"garbage"):
                reply = await raw_exchange(gport, bad + b"\r\nHost: h\r\n\r\n")
                assert reply.startswith(b"HTTP/1.1 400 "), (bad, reply)
            nursery.cancel_scope.cancel()


async def test_gateway_reuses_one_trickles_connection(
    server: ServerProcess, site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several requests on one downstream connection share one upstream Trickles connection."""
    opened: list[tuple[str, str]] = []
    real_connect = Gateway.connect

    async def counting_connect(self: Gateway, host: str, port: int) -> Upstream:
        up = await real_connect(self, host, port)
        opened.append((f"{host}:{port}", up.transport))
        return up

    monkeypatch.setattr(Gateway, "connect", counting_connect)
    names = ["1m.bin", "index.html", "mss-1.bin"]
    outs = [tmp_path / f"out{i}" for i in range(len(names))]
    args = [a for n, o in zip(names, outs, strict=True) for a in (server.url(n), "-o", str(o))]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            gport = await nursery.start(functools.partial(serve_gateway, HOST, 0, allow=LOOPBACK))
            code, _ = await curl("-S", "-x", f"http://{HOST}:{gport}", *args)
            nursery.cancel_scope.cancel()
    assert code == 0
    assert [file_sha256(o) for o in outs] == [site.digests[n] for n in names]
    assert opened == [(f"{HOST}:{server.port}", "trickles")]


async def test_gateway_client_disconnects(gateway: GatewayProcess, server: ServerProcess, site: Site) -> None:
    """Clients that vanish mid-response or mid-request cost a log line, not a traceback or the gateway."""
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream(HOST, gateway.port)
        await stream.send_all(f"GET {server.url('20m.bin')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 256 * 1024:
            got += len(await stream.receive_some(65536))
        await stream.aclose()
        partial = await trio.open_tcp_stream(HOST, gateway.port)
        await partial.send_all(f"GET {server.url('1m.bin')} HTTP/1.1\r\nHo".encode())
        await partial.aclose()
        await trio.to_thread.run_sync(
            gateway.wait_log, f"GET {server.url('20m.bin')} -> 200, client went away"
        )
        code, body = await curl("-x", gateway.proxy, server.url("mss.bin"))
        assert code == 0 and sha256(body) == site.digests["mss.bin"]
    log = gateway.log.read_text(errors="replace")
    assert "Traceback" not in log and "bad request" not in log, tail(gateway.log)
