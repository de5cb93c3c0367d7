"""The metrics collector, scraped in-process (the served /metrics is covered by integration tests)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

import trickles
from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing
from trickles.server.metrics import TricklesCollector
from trickles.server.udp import UdpStats


def test_build_info_metric(tmp_path: Path) -> None:
    ring = KeyRing.from_master(b"k" * 32)
    app = StaticHttpApp(StaticSite(str(tmp_path)), ring)
    registry = CollectorRegistry()
    registry.register(TricklesCollector(ServerEngine(ring, app, ServerConfig()), app, UdpStats(), 3))
    text = generate_latest(registry).decode()
    info = trickles.build_info()
    line = f'trickles_build_info{{build="{info["build"]}",version="{info["version"]}",worker="3"}} 1.0'
    assert line in text.splitlines(), text
