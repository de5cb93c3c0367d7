"""Crafted datagrams against a live server: replays, tampering and garbage are dropped and counted in
the Prometheus metrics, and the server keeps serving."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.adversarial.net import open_connection, replies
from trickles import wire

from .conftest import HOST, TCURL, Site, file_sha256, free_port, run, running_server


def drops(metrics_port: int) -> dict[str, float]:
    """trickles_packets_dropped_total by reason (worker 0)."""
    for attempt in range(50):  # the exporter starts just after the server's TCP listener
        try:
            with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            break
        except urllib.error.URLError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "trickles_packets_dropped_total" and s.labels.get("worker") == "0":
                out[s.labels["reason"]] = s.value
    assert out, f"no trickles_packets_dropped_total samples in:\n{text}"
    return out


def capture_request(sock: socket.socket, port: int) -> bytes:
    """The first REQUEST datagram of a connection opened by hand from ``sock``."""
    return open_connection(sock, (HOST, port))[2][0]


def test_replay_tamper_garbage_dropped_and_counted(site: Site, key_file: Path, tmp_path: Path) -> None:
    mport = free_port()
    with running_server(site, key_file, tmp_path / "server.log", "--metrics", f"{HOST}:{mport}") as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            request = capture_request(sock, srv.port)
            before = drops(mport)

            sock.sendto(request, (HOST, srv.port))
            assert replies(sock, 0.5), "the genuine request got no answer"
            sock.sendto(request, (HOST, srv.port))  # the same datagram again: a replay
            assert replies(sock, 0.5) == [], "a replayed request was answered"

            tampered = bytearray(request)
            tampered[wire.REQ_HEAD.size + 10] ^= 0x01  # a byte inside the sealed continuation
            sock.sendto(bytes(tampered), (HOST, srv.port))
            garbage = [
                b"\x01",  # shorter than a header
                bytes([wire.VERSION, 0x7F]) + os.urandom(60),  # unknown request type
                bytes([wire.VERSION, wire.ReqType.REQUEST]) + os.urandom(30),  # truncated
            ]
            for g in garbage:
                sock.sendto(g, (HOST, srv.port))
            sock.sendto(bytes([0xEE]) + os.urandom(99), (HOST, srv.port))  # unknown version
            assert replies(sock, 0.5) == [], "the server answered a forged datagram"

        time.sleep(0.2)
        after = drops(mport)
        delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        assert delta == {"replay": 1, "bad_mac": 1, "malformed": len(garbage), "bad_version": 1}

        out = tmp_path / "out"
        r = run([TCURL, "-s", "-S", "-o", str(out), srv.url("1m.bin")])
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        assert file_sha256(out) == site.digests["1m.bin"]
