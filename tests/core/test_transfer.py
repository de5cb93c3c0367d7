"""Whole transfers through the simulator: byte-exact delivery under loss, reordering, duplication,
bursty loss, packet spraying across replicas and a server restart."""

from __future__ import annotations

import hashlib
import random

import pytest

from trickles.congestion import ProtocolConfig
from trickles.sim.network import Link, Sim, TricklesClientHost, TricklesServerHost, make_server, transfer

SIZE = 5_000_000
SEEDS = range(50)


def _obj(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed ^ 0x5EED).randbytes(size)


@pytest.mark.slow
@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.10])
def test_5mb_byte_identical_under_loss_reorder_dup(loss: float) -> None:
    failures = []
    for seed in SEEDS:
        r = transfer(SIZE, seed, loss=loss, reorder=0.02, dup=0.01, bandwidth=50e6, delay=0.005, until=3000)
        if hashlib.sha256(r.data).digest() != hashlib.sha256(_obj(seed)).digest():
            failures.append((seed, len(r.data), r.client.conn.state))
    assert not failures, f"loss {loss}: {len(failures)} of {len(SEEDS)} transfers wrong: {failures[:5]}"


@pytest.mark.parametrize(
    "config,delta",
    [
        (ProtocolConfig(ack_div=1), True),
        (ProtocolConfig(ack_div=2), False),
        (ProtocolConfig(ack_div=1, burst_limit=1), True),
    ],
)
def test_variants_deliver(config: ProtocolConfig, delta: bool) -> None:
    for seed in range(5):
        r = transfer(1_000_000, seed, loss=0.03, reorder=0.01, dup=0.01, config=config, delta=delta)
        assert r.data == _obj(seed, 1_000_000)


def test_bursty_loss() -> None:
    for seed in range(8):
        r = transfer(2_000_000, seed, burst=(0.005, 0.05, 0.8), bandwidth=20e6)
        assert r.data == _obj(seed, 2_000_000)
        assert r.down.stats.lost_random > 0


def test_small_objects_edge_sizes() -> None:
    from trickles.wire import MSS

    for size in (0, 1, MSS - 1, MSS, MSS + 1, 3 * MSS + 5):
        r = transfer(size, 11, loss=0.02)
        assert r.data == _obj(11, size), size


def _spray_run(seed: int, n_replicas: int, restart_at: float | None) -> tuple[bytes, bytes, list[int]]:
    """One client, several engines sharing keys; each datagram goes to the next replica in turn."""
    sim = Sim(seed)
    obj = _obj(seed, 3_000_000)
    engines = [make_server({b"obj": obj}) for _ in range(n_replicas)]
    served = [0] * n_replicas
    hosts = [TricklesServerHost(sim, e) for e in engines]
    down = Link(sim, 20e6, 0.01, 200, loss=0.01)
    up = Link(sim, 20e6, 0.01, 200, loss=0.01)
    turn = [0]

    def spray(addr: bytes, data: bytes) -> None:
        i = turn[0] % n_replicas
        turn[0] += 1
        served[i] += 1
        hosts[i].receive(addr, data)

    addr = b"\x0a\x00\x00\x02\x13\x88"
    client = TricklesClientHost(sim, addr, up, spray, b"obj")
    for h in hosts:
        h.attach(addr, down, client.receive)
    if restart_at is not None:

        def restart() -> None:  # a fresh process with the same key: no memory of anything
            for i in range(n_replicas):
                hosts[i].engine = make_server({b"obj": obj})

        sim.at(restart_at, restart)
    sim.run(600, stop=lambda: client.finished)
    return bytes(client.data), obj, served


def test_packet_spraying_across_replicas() -> None:
    for seed in range(3):
        data, obj, served = _spray_run(seed, 3, None)
        assert data == obj
        assert min(served) > 100  # every replica really served part of the transfer


def test_server_restart_mid_transfer_is_transparent() -> None:
    data, obj, _ = _spray_run(5, 1, restart_at=0.3)
    assert data == obj
