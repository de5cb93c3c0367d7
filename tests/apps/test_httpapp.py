"""The static-file app over the Trickles engine: continuations are MAC'd, expire, and a file that
changes under an open response is refused with a clear error (never spliced)."""

from __future__ import annotations

import os
from pathlib import Path

from trickles import tokens
from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.connection import ClientConnection
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey

ADDR = b"\x7f\x00\x00\x01\x13\x88"
T0 = 1_700_000_000.0


def _setup(tmp_path: Path, max_age: float = 86400.0) -> tuple[ServerEngine, StaticHttpApp]:
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 2000)
    ring = KeyRing(ServerKey(1, b"s" * 32))
    app = StaticHttpApp(StaticSite(tmp_path), ring, max_age=max_age)
    return ServerEngine(ring, app, ServerConfig()), app


def _run(
    eng: ServerEngine, cli: ClientConnection, now: float, rounds: int = 200, hook: object = None
) -> float:
    reqs = cli.datagrams_to_send(now)
    for i in range(rounds):
        if callable(hook):
            hook(i)
        for q in reqs:
            for d in eng.step(q, ADDR, now).datagrams:
                cli.receive_datagram(d, now)
        now += 0.01
        reqs = cli.datagrams_to_send(now)
        r = cli.regions[0]
        if r.complete or r.error is not None or not reqs:
            break
    return now


def test_download_through_the_app(tmp_path: Path) -> None:
    eng, _ = _setup(tmp_path)
    cli = ClientConnection(client_nonce=1)
    cli.connect(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    _run(eng, cli, T0)
    resp = cli.read(0)
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n")
    assert resp.endswith(bytes(range(256)) * 2000)


def test_file_changed_under_open_response_is_refused(tmp_path: Path) -> None:
    eng, app = _setup(tmp_path)
    cli = ClientConnection(client_nonce=2)
    cli.connect(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n", T0)

    def rewrite(i: int) -> None:
        if i == 2:
            p = tmp_path / "f.bin"
            p.write_bytes(b"Z" * 512000)
            os.utime(p, ns=(1, 1))

    _run(eng, cli, T0, hook=rewrite)
    r = cli.regions[0]
    assert r.error is not None and r.error[0] == 409
    got = cli.read(0)
    body = got[got.find(b"\r\n\r\n") + 4 :]
    assert body == (bytes(range(256)) * 2000)[: len(body)]  # only the old version, never a splice
    assert app.content_changed > 0


def test_forged_and_expired_output_continuations(tmp_path: Path) -> None:
    eng, app = _setup(tmp_path, max_age=60)
    cli = ClientConnection(client_nonce=3)
    cli.connect(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n", T0)
    # Stop after the first exchange: the region has its output continuation.
    reqs = cli.datagrams_to_send(T0)
    for q in reqs:
        for d in eng.step(q, ADDR, T0).datagrams:
            cli.receive_datagram(d, T0)
    r = cli.regions[0]
    assert r.ucont
    good = r.ucont
    r.ucont = good[:-1] + bytes([good[-1] ^ 1])  # tampered: every fetch is refused
    _run(eng, cli, T0 + 0.01)
    assert r.error is not None and r.error[0] == 400
    assert app._open(tokens.APP_OUTPUT, good, T0 + 30, ADDR) is not None
    assert app._open(tokens.APP_OUTPUT, good, T0 + 120, ADDR) is None  # expired
    assert app._open(tokens.APP_INPUT, good, T0 + 30, ADDR) is None  # purposes do not mix
    assert app._open(tokens.APP_OUTPUT, good, T0 + 30, b"\x7f\x00\x00\x02\x13\x88") is None  # bound


def test_parallel_requests_on_one_connection(tmp_path: Path) -> None:
    """Several requests at once, each in its own sparse region, under one congestion window."""
    for i in range(12):
        (tmp_path / f"s{i}.txt").write_bytes(f"small object {i}\n".encode() * (i * 40 + 1))
    ring = KeyRing(ServerKey(1, b"s" * 32))
    eng = ServerEngine(ring, StaticHttpApp(StaticSite(tmp_path), ring), ServerConfig())
    cli = ClientConnection(client_nonce=4)
    cli.connect(b"", T0, fin=False)
    now = T0
    for q in cli.datagrams_to_send(now):
        for d in eng.step(q, ADDR, now).datagrams:
            cli.receive_datagram(d, now)
    rids = [cli.open_region(f"GET /s{i}.txt HTTP/1.1\r\nHost: x\r\n\r\n".encode()) for i in range(12)]
    reqs = cli.datagrams_to_send(now)
    rounds = 0
    while reqs and not all(cli.regions[r].complete for r in rids):
        rounds += 1
        for q in reqs:
            for d in eng.step(q, ADDR, now).datagrams:
                cli.receive_datagram(d, now)
        now += 0.01
        reqs = cli.datagrams_to_send(now)
    for i, rid in enumerate(rids):
        body = f"small object {i}\n".encode() * (i * 40 + 1)
        got = cli.read(rid)
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"\r\n\r\n" + body)
    assert rounds < 12  # requests travel in parallel, not one round trip after another


def test_read_many_equals_separate_reads(tmp_path: Path) -> None:
    import random

    from trickles.apps.http_head import feed_head

    (tmp_path / "f.bin").write_bytes(random.Random(5).randbytes(50_000))
    site = StaticSite(tmp_path)
    rng = random.Random(6)
    # 200 and a one-range 206 take the per-packet path; two ranges and HEAD the general one.
    for extra in ("", "Range: bytes=1000-30000\r\n", "Range: bytes=5-9,100-40000\r\n", "HEAD"):
        method = "HEAD" if extra == "HEAD" else "GET"
        head = b"%s /f.bin HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
            method.encode(),
            extra.encode() * (method == "GET"),
        )
        _, req, _ = feed_head(b"", head)
        assert req is not None
        plan = site.plan(req, T0)
        for _ in range(200):
            ranges = [
                (rng.randrange(0, plan.total_length + 100), rng.randrange(0, 3000))
                for _ in range(rng.randrange(1, 5))
            ]
            assert site.read_many(plan, ranges) == [site.read(plan, o, n) for o, n in ranges]
        slots = [(len(plan.header_bytes) + k * 1372, 1372) for k in range(3)]  # one request's slots
        assert site.read_many(plan, slots) == [site.read(plan, o, n) for o, n in slots]
