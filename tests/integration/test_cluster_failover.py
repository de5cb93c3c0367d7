"""Failover on real processes: one long download through ``trickles spray`` and 3 replicas survives a
replica's kill -9, a rolling restart of every replica, and a kill behind 5 % loss, byte-identical
and on the one connection it opened (the client never reconnects: a Trickles connection has no
server-side state to lose)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from trickles.client.trickles_transport import TricklesTransport
from trickles.connection import ClientStats
from trickles.server.cluster import probe
from trickles.server.link import Impairment, lossy_link

from .conftest import HOST, sha256
from .test_cluster import Cluster, cluster, restart_replica

# Sizes: the kill test fetches 20 MB (about 7 s through 3 replicas on a busy 2-core machine). The
# rolling restart must outlast three replica restarts (1-2.5 s each, mostly interpreter start-up):
# it fetches the same 20 MB paced to 2 MB/s by the link (about 11 s), so that it does not depend on
# how fast this machine happens to be. At 5 % loss each way a Trickles download moves about 80 KB/s
# on loopback, even from one server (most losses end in a retransmission timeout): 400 KB there.
FILES = {"20m.bin": 20 << 20, "400k.bin": 400_000}
PACE = Impairment(rate=2e6, queue=4000)  # a queue long enough that pacing drops nothing


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("failover-www")
    digests = {}
    for name, size in FILES.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        digests[name] = sha256(data)
    return root, digests


@pytest.fixture(scope="module")
def c3(www: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("failover"), www[0]) as c:
        yield c


async def one_connection(
    port: int, path: str, on_progress: Callable[[int], None], timeout: float = 60
) -> tuple[str, int, ClientStats]:
    """Download ``path`` over one Trickles connection: (sha256, bytes, the connection's stats).

    The stats belong to the one ``ClientConnection`` the handshake created: a connection that had
    to start over would be another object, with another nonce (checked below)."""
    with trio.fail_after(timeout):
        conn = await TricklesTransport(probe_timeout=5).connect(HOST, port, timeout=5)
        core = conn.ep.conn
        nonce = core.client_nonce
        try:
            resp = await conn.request("GET", path, [])
            assert resp.status == 200
            h, got = hashlib.sha256(), 0
            async for chunk in resp.body:
                h.update(chunk)
                got += len(chunk)
                on_progress(got)
        finally:
            await conn.aclose()
    assert conn.ep.conn is core and core.client_nonce == nonce, "the client started another connection"
    return h.hexdigest(), got, core.stats


def sprayer_sees_all_up(c: Cluster) -> bool:
    st = probe(f"{HOST}:{c.port}", timeout=0.5)
    return st is not None and all(st["healthy"])


def wait_all_up(c: Cluster, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not sprayer_sees_all_up(c):
        assert time.monotonic() < deadline, "the sprayer did not take every replica back"
        time.sleep(0.05)


def kill9_at(c: Cluster, name: str, at: int, killed: list[int]) -> Callable[[int], None]:
    def check(got: int) -> None:
        if not killed and got >= at:
            os.kill(c.pid(name), signal.SIGKILL)
            killed.append(got)

    return check


async def test_kill9_one_of_three_replicas_mid_transfer(
    www: tuple[Path, dict[str, str]], c3: Cluster, tmp_path: Path
) -> None:
    victim = c3.replicas()[0]
    killed: list[int] = []
    size = FILES["20m.bin"]
    t0 = time.monotonic()
    digest, got, stats = await one_connection(
        c3.port, "/20m.bin", kill9_at(c3, victim["name"], size // 3, killed)
    )
    secs = time.monotonic() - t0
    print(
        f"\n20 MB, kill -9 at {killed}: {secs:.1f} s, RTOs {stats.timeouts}, losses {stats.losses_declared}"
    )
    assert killed, "the transfer ended before the kill"
    assert (digest, got) == (www[1]["20m.bin"], size)
    # The replica really was gone during the transfer: the sprayer took it out of its rotation.
    st = probe(f"{HOST}:{c3.port}")
    assert st is not None and st["healthy"].count(False) == 1, st
    restart_replica(c3, victim, c3.state / "key", tmp_path / "victim.log")
    wait_all_up(c3)


async def test_rolling_restart_of_every_replica_mid_transfer(
    www: tuple[Path, dict[str, str]], c3: Cluster, tmp_path: Path
) -> None:
    """Each replica in turn: SIGTERM, a new process on the same address with the shared key file,
    and the next one only once the sprayer has the new one back in rotation."""
    size = FILES["20m.bin"]
    started = trio.Event()
    restarted: list[tuple[str, int]] = []
    progress = [0]

    def on_progress(got: int) -> None:
        progress[0] = got
        if got >= 1 << 20:
            started.set()

    def roll() -> None:
        for m in c3.replicas():
            old = c3.pid(m["name"])
            os.kill(old, signal.SIGTERM)
            while Path(f"/proc/{old}").exists() and not _zombie(old):
                time.sleep(0.01)
            restart_replica(c3, m, c3.state / "key", tmp_path / f"{m['name']}.log")
            wait_all_up(c3)
            assert c3.pid(m["name"]) != old
            restarted.append((m["name"], progress[0]))

    async with trio.open_nursery() as nursery:

        async def roller() -> None:
            await started.wait()
            await trio.to_thread.run_sync(roll)

        nursery.start_soon(roller)
        async with lossy_link((HOST, c3.port), up=Impairment(), down=PACE) as link:
            digest, got, stats = await one_connection(link.address[1], "/20m.bin", on_progress)
    print(f"\nrolling restart (replica, bytes received when it was back): {restarted}; "
          f"timeouts {stats.timeouts}, losses {stats.losses_declared}")  # fmt: skip
    assert (digest, got) == (www[1]["20m.bin"], size)
    assert len(restarted) == 3, "the transfer ended before every replica was restarted"
    assert restarted[-1][1] < size, restarted  # the last new process served this connection too
    assert link.stats.clients == 1 and link.stats.down.queue_drops == 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


async def test_kill9_behind_five_percent_loss(
    www: tuple[Path, dict[str, str]], c3: Cluster, tmp_path: Path
) -> None:
    """Loss (both ways) and a dead replica at once: both look like loss to the client."""
    victim = c3.replicas()[2]
    killed: list[int] = []
    size = FILES["400k.bin"]
    async with lossy_link((HOST, c3.port), seed=9, loss=0.05) as link:
        digest, got, stats = await one_connection(
            link.address[1], "/400k.bin", kill9_at(c3, victim["name"], size // 3, killed)
        )
    print(f"\n5 % loss + kill -9 at {killed}: losses {stats.losses_declared}, timeouts {stats.timeouts}, "
          f"link {link.stats.up.lost} + {link.stats.down.lost} lost")  # fmt: skip
    assert killed, "the transfer ended before the kill"
    assert (digest, got) == (www[1]["400k.bin"], size)
    assert link.stats.up.lost > 0 and link.stats.down.lost > 0 and link.stats.clients == 1
    assert stats.losses_declared > 0
    restart_replica(c3, victim, c3.state / "key", tmp_path / "victim.log")
    wait_all_up(c3)
