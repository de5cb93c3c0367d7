"""Watermarked responses through the real engine and client machine: loss, two clients, forgery."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.watermark.detect import detect
from trickles.apps.watermark.site import MountedSite, WatermarkConfig, WatermarkSite
from trickles.connection import ClientConnection
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey

from .test_watermark import photo

ALICE = b"\x7f\x00\x00\x01\x13\x88"
BOB = b"\x7f\x00\x00\x02\x13\x88"
T0 = 1_700_000_000.0
KEY = ServerKey(1, b"s" * 32)
REQUEST = b"GET /wm/p.jpg HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def served(tmp_path: Path) -> tuple[ServerEngine, WatermarkSite]:
    (tmp_path / "img").mkdir()
    photo(400, 300).save(tmp_path / "img" / "p.jpg", "JPEG", quality=92)
    ring = KeyRing(KEY)
    wm = WatermarkSite(tmp_path / "img", KEY, WatermarkConfig(min_interval=1024))
    app = StaticHttpApp(MountedSite(tmp_path, wm), ring)
    return ServerEngine(ring, app, ServerConfig()), wm


def _transfer(
    eng: ServerEngine, addr: bytes, loss: float = 0.0, seed: int = 0, on_round: object = None
) -> ClientConnection:
    rng = random.Random(seed)
    cli = ClientConnection(client_nonce=seed + 1)
    cli.connect(REQUEST, T0)
    now = T0
    for _ in range(5000):  # bounded: a lossy 100 kB transfer needs a few hundred rounds
        for q in cli.datagrams_to_send(now):
            if rng.random() < loss:
                continue
            for d in eng.step(q, addr, now).datagrams:
                if rng.random() >= loss:
                    cli.receive_datagram(d, now)
        if callable(on_round):
            on_round()
        r = cli.regions[0]
        if r.complete or r.error is not None:
            break
        now += 0.01
        timer = cli.get_timer()
        if timer is not None and now >= timer:
            cli.handle_timer(now)
    return cli


def _until_planned(eng: ServerEngine, addr: bytes, nonce: int) -> ClientConnection:
    """A connection whose request has been planned (a SYN's request is asked for again first)."""
    cli = ClientConnection(client_nonce=nonce)
    cli.connect(REQUEST, T0)
    for i in range(3):
        now = T0 + 0.01 * i
        for q in cli.datagrams_to_send(now):
            for d in eng.step(q, addr, now).datagrams:
                cli.receive_datagram(d, now)
        if cli.regions[0].ucont:
            return cli
    raise AssertionError("no output continuation after three exchanges")


def _image(cli: ClientConnection) -> bytes:
    resp = cli.read(0)
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n"), resp[:200]
    return resp.split(b"\r\n\r\n", 1)[1]


def test_lossy_transfer_is_byte_identical_with_regenerated_retransmissions(
    served: tuple[ServerEngine, WatermarkSite],
) -> None:
    eng, wm = served
    clean = _image(_transfer(eng, ALICE))
    wm.drop_caches()
    before = wm.regenerated_bytes
    # Every cache dropped every round: each retransmission is coded afresh from a checkpoint.
    lossy = _image(_transfer(eng, ALICE, loss=0.15, seed=7, on_round=wm.drop_caches))
    assert lossy == clean
    assert wm.regenerated_bytes - before > len(clean)  # more coded than sent once: retransmissions
    Image.open(io.BytesIO(lossy)).load()
    found = detect(lossy, KEY)
    assert found is not None and found.address == "127.0.0.1"


def test_two_clients_two_marks(served: tuple[ServerEngine, WatermarkSite]) -> None:
    eng, _ = served
    a, b = _image(_transfer(eng, ALICE)), _image(_transfer(eng, BOB, seed=3))
    assert a != b
    assert [detect(x, KEY).address for x in (a, b)] == ["127.0.0.1", "127.0.0.2"]  # type: ignore[union-attr]


def test_a_continuation_taken_from_another_client_is_refused(
    served: tuple[ServerEngine, WatermarkSite],
) -> None:
    eng, _ = served
    stolen = _until_planned(eng, ALICE, 11).regions[0].ucont
    # Bob runs his own connection but presents Alice's output continuation (seen on the wire).
    thief = _until_planned(eng, BOB, 12)
    now = T0 + 0.1
    r = thief.regions[0]
    assert r.ucont and r.ucont != stolen and not r.complete
    r.ucont = stolen
    for _ in range(20):
        now += 0.01
        for q in thief.datagrams_to_send(now):
            for d in eng.step(q, BOB, now).datagrams:
                thief.receive_datagram(d, now)
        if r.error is not None:
            break
    assert r.error is not None and r.error[0] == 400


def test_metrics_report_the_watermark_caches(served: tuple[ServerEngine, WatermarkSite]) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from trickles.server.metrics import ServerCollector
    from trickles.server.udp import UdpStats

    eng, wm = served
    _image(_transfer(eng, ALICE))
    registry = CollectorRegistry()
    app = eng.app
    assert isinstance(app, StaticHttpApp)
    registry.register(ServerCollector(eng, app, app.site, UdpStats(), 0))
    text = generate_latest(registry).decode()
    assert 'trickles_watermark_plans_total{worker="0"} 1.0' in text
    assert f'trickles_watermark_cache_bytes{{cache="source",worker="0"}} {float(wm.sources.bytes)}' in text
    assert 'trickles_watermark_cache_hits_total{cache="span",worker="0"}' in text
