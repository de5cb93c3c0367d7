"""The replicated cluster on real processes and loopback sockets: ``trickles cluster up`` starts a
sprayer and replicas sharing a key; one connection's packets are served by every replica; a replica
killed mid-transfer costs nothing; an odd key is caught; replays meet the policy's replay filters."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trickles.client.trickles_transport import TricklesTransport
from trickles.connection import ClientConnection
from trickles.server.cluster import probe

from .conftest import HOST, TRICKLES, free_port, run, sha256, stop_process

BIG = 2 << 20


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cluster-www")
    files = {"small.bin": os.urandom(300_000), "big.bin": os.urandom(BIG)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root, {name: sha256(data) for name, data in files.items()}


class Cluster:
    def __init__(self, state: Path, port: int, root: Path) -> None:
        self.state, self.port, self.root = state, port, root
        self.restarted: list[subprocess.Popen[bytes]] = []  # replicas this test started: reaped at the end
        self.metrics = 0  # the sprayer's metrics port, when it has one

    def members(self) -> list[dict[str, Any]]:
        return list(json.loads((self.state / "cluster.json").read_text())["members"])

    def replicas(self) -> list[dict[str, Any]]:
        return [m for m in self.members() if m["role"] == "replica"]

    def pid(self, name: str) -> int:
        return int((self.state / f"{name}.pid").read_text())

    def replica_status(self) -> list[dict[str, Any]]:
        out = []
        for m in self.replicas():
            st = probe(m["addr"], timeout=1.0)
            assert st is not None, f"{m['name']} does not answer probes"
            out.append(st)
        return out

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run([TRICKLES, "cluster", *args, str(self.state)], timeout=60)


def restart_replica(c: Cluster, m: dict[str, Any], key: Path, log: Path) -> None:
    """(Re)start replica ``m`` with ``key``; recorded in its pid file so that ``down`` stops it."""
    cmd = [TRICKLES, "serve", str(c.root), "--listen", m["addr"], "--key-file", str(key)]
    cmd += ["--trust-proxy", HOST, "--no-tcp"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    c.restarted.append(proc)
    (c.state / f"{m['name']}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 20
    while probe(m["addr"]) is None:
        assert time.monotonic() < deadline and proc.poll() is None, "replica did not start"
        time.sleep(0.05)


def stop_replica(c: Cluster, m: dict[str, Any]) -> None:
    pid = c.pid(m["name"])
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while probe(m["addr"], timeout=0.1) is not None and time.monotonic() < deadline:
            pass


@contextmanager
def cluster(tmp_path: Path, root: Path, *extra: str, replicas: int = 3) -> Iterator[Cluster]:
    port = free_port(span=replicas + 1)
    state = tmp_path / "state"
    up = [TRICKLES, "cluster", "up", str(state), "--root", str(root), "--replicas", str(replicas)]
    r = run([*up, "--listen", f"{HOST}:{port}", *extra], timeout=60)
    c = Cluster(state, port, root)
    try:
        assert r.returncode == 0, r.stderr.decode() + _logs(state)
        yield c
    finally:
        pids = [c.pid(m["name"]) for m in c.members() if (state / f"{m['name']}.pid").exists()]
        run([TRICKLES, "cluster", "down", str(state)], timeout=60)
        for proc in c.restarted:
            stop_process(proc)
        for pid in pids:  # down must have stopped them all
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} survived cluster down"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _logs(state: Path) -> str:
    return "".join(f"\n== {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in state.glob("*.log"))


async def download(port: int, path: str, on_progress: Any = None, timeout: float = 60) -> str:
    """One connection, one request: the body's sha256 (no reconnect anywhere)."""
    with trio.fail_after(timeout):
        conn = await TricklesTransport(probe_timeout=5).connect(HOST, port, timeout=5)
        try:
            resp = await conn.request("GET", path, [])
            assert resp.status == 200
            h, got = hashlib.sha256(), 0
            async for chunk in resp.body:
                h.update(chunk)
                got += len(chunk)
                if on_progress is not None:
                    on_progress(got)
            return h.hexdigest()
        finally:
            await conn.aclose()


@pytest.fixture(scope="module")
def rr(www: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One round-robin cluster (sprayer metrics on ``rr.metrics``) for the tests below; each leaves
    it as it found it."""
    mport = free_port()
    with cluster(tmp_path_factory.mktemp("rr"), www[0], "--metrics", f"{HOST}:{mport}") as c:
        c.metrics = mport
        yield c


async def test_one_connection_sprayed_across_three_replicas(
    www: tuple[Path, dict[str, str]], rr: Cluster
) -> None:
    _, digests = www
    c = rr
    before = [s["decapsulated"] for s in c.replica_status()]
    assert await download(c.port, "/big.bin") == digests["big.bin"]
    after = c.replica_status()
    served = [s["decapsulated"] - b for s, b in zip(after, before, strict=True)]
    print(f"\nrequest datagrams per replica for one connection: {served}")
    total = sum(served)
    # Round robin: each replica takes about a third of the one connection's requests.
    assert all(n > total // 5 for n in served), served
    # Shared key: no replica rejected another's continuation.
    assert all(s["dropped"].get("bad_mac", 0) == 0 for s in after), after
    assert len({tuple(s["keys"]) for s in after}) == 1
    st = c.cli("status")
    assert st.returncode == 0 and st.stdout.decode().count(" up ") == 4, st.stdout.decode()


async def test_replica_killed_mid_transfer(
    www: tuple[Path, dict[str, str]], rr: Cluster, tmp_path: Path
) -> None:
    _, digests = www
    c = rr
    victim = c.replicas()[1]
    killed: list[int] = []

    def kill_at_a_quarter(got: int) -> None:
        if not killed and got >= BIG // 4:
            pid = c.pid(victim["name"])
            os.kill(pid, signal.SIGKILL)
            killed.append(got)

    assert await download(c.port, "/big.bin", kill_at_a_quarter) == digests["big.bin"]
    assert killed, "the transfer ended before the kill"
    time.sleep(0.5)  # the sprayer's health check marks it down within ~300 ms
    st = c.cli("status")
    assert st.returncode == 1 and "dead" in st.stdout.decode(), st.stdout.decode()
    restart_replica(c, victim, c.state / "key", tmp_path / "victim.log")


async def test_unshared_key_is_caught(rr: Cluster, tmp_path: Path) -> None:
    """One replica restarted with its own key: continuations sealed elsewhere fail its MAC check
    (and its own fail everywhere else), so requests sprayed across the replicas meet ``bad_mac``."""
    c = rr
    odd = c.replicas()[2]
    stop_replica(c, odd)
    other_key = tmp_path / "other.key"
    assert run([TRICKLES, "keygen", "-o", str(other_key)]).returncode == 0
    restart_replica(c, odd, other_key, tmp_path / "odd.log")
    try:
        sock, req = _capture_request(c.port)
        with sock:
            counts = [_answers(sock, req, c.port) for _ in range(3)]
        dropped = [s["dropped"] for s in c.replica_status()]
        print(f"\nanswers {counts}; drops per replica: {dropped}")
        assert sum(d.get("bad_mac", 0) for d in dropped) > 0
    finally:
        stop_replica(c, odd)
        restart_replica(c, odd, c.state / "key", tmp_path / "odd.log")


def _capture_request(port: int) -> tuple[socket.socket, bytes]:
    """A real handshake through the sprayer, then the client's first REQUEST datagram (unsent)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(2.0)
    conn = ClientConnection(client_nonce=int.from_bytes(os.urandom(8)))
    conn.connect(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", time.time())
    for d in conn.datagrams_to_send(time.time()):
        sock.sendto(d, (HOST, port))
    conn.receive_datagram(sock.recv(4096), time.time())
    reqs = [d for d in conn.datagrams_to_send(time.time()) if d[1] == 2]
    assert reqs, "no REQUEST after the SYNACK"
    return sock, reqs[0]


def _answers(sock: socket.socket, data: bytes, port: int, quiet: float = 0.25) -> int:
    """Send ``data`` once; count the datagrams that come back until ``quiet`` s of silence."""
    sock.sendto(data, (HOST, port))
    n = 0
    sock.settimeout(quiet)
    try:
        while True:
            sock.recv(4096)
            n += 1
    except TimeoutError:
        return n


def _replays(c: Cluster) -> tuple[list[int], int]:
    """Send one captured request datagram 4 times: answers per send, replay drops in the cluster."""
    before = sum(s["dropped"].get("replay", 0) for s in c.replica_status())
    sock, req = _capture_request(c.port)
    with sock:
        counts = [_answers(sock, req, c.port) for _ in range(4)]
    return counts, sum(s["dropped"].get("replay", 0) for s in c.replica_status()) - before


async def test_replay_round_robin_meets_each_replica_once(rr: Cluster) -> None:
    """Round robin takes the same datagram to 3 different replicas, each of whose replay filters
    answers it once: it is answered 3 times (once per replica), the 4th copy is dropped."""
    counts, replays = _replays(rr)
    print(f"\nround-robin: answers per send {counts}, replay drops {replays}")
    assert [n > 0 for n in counts] == [True, True, True, False] and replays == 1, (counts, replays)


async def test_replay_mac_hash_meets_one_replica(www: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """mac-hash takes every copy to the replica that answered the first: answered once."""
    with cluster(tmp_path, www[0], "--policy", "mac-hash") as c:
        counts, replays = _replays(c)
    print(f"\nmac-hash: answers per send {counts}, replay drops {replays}")
    assert [n > 0 for n in counts] == [True, False, False, False] and replays == 3, (counts, replays)


async def test_key_rotation_during_a_transfer(www: tuple[Path, dict[str, str]], rr: Cluster) -> None:
    """``cluster rotate-key`` (SIGHUP to every process) in the middle of a download: it completes,
    and every replica now seals with the new key and still opens the old one."""
    _, digests = www
    rotated: list[subprocess.CompletedProcess[bytes]] = []

    def rotate_at_a_quarter(got: int) -> None:
        if not rotated and got >= BIG // 4:
            rotated.append(rr.cli("rotate-key", "--force"))

    keys_before = {tuple(s["keys"]) for s in rr.replica_status()}
    assert await download(rr.port, "/big.bin", rotate_at_a_quarter) == digests["big.bin"]
    assert rotated and rotated[0].returncode == 0, rotated
    (old,) = keys_before
    assert {tuple(s["keys"]) for s in rr.replica_status()} == {(old[0] % 255 + 1, old[0])}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The sprayer's /metrics as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def per_backend(samples: dict[Any, float], name: str, **labels: str) -> dict[str, float]:
    return {
        dict(lab)["backend"]: v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    }


async def test_sprayer_metrics_during_a_transfer(www: tuple[Path, dict[str, str]], rr: Cluster) -> None:
    """``--metrics``: scraped in the middle of a download, every replica is up, answers health checks
    and has been sent some of the connection's datagrams; at the end the figures equal the
    sprayer's own counters; ``/healthz`` answers; a killed replica's gauge drops to 0."""
    _, digests = www
    backends = [m["addr"] for m in rr.replicas()]
    mid: list[dict[Any, float]] = []

    def scrape_at_half(got: int) -> None:
        if not mid and got >= BIG // 2:
            mid.append(scrape(rr.metrics))

    before = per_backend(scrape(rr.metrics), "trickles_spray_datagrams_total", direction="to_replica")
    assert await download(rr.port, "/big.bin", scrape_at_half) == digests["big.bin"]
    (m,) = mid
    sent = per_backend(m, "trickles_spray_datagrams_total", direction="to_replica")
    print(f"\nmid-transfer: datagrams to each replica {sent}")
    assert sorted(sent) == sorted(backends) and all(sent[b] > before[b] for b in backends), (before, sent)
    assert per_backend(m, "trickles_spray_backend_up") == dict.fromkeys(backends, 1.0)
    rtt = per_backend(m, "trickles_spray_health_check_last_seconds")
    assert all(0 < rtt[b] < 0.3 for b in backends), rtt
    assert all(n > 0 for n in per_backend(m, "trickles_spray_health_check_seconds_count").values())
    end = scrape(rr.metrics)
    st = probe(f"{HOST}:{rr.port}")
    assert st is not None
    to_replica = per_backend(end, "trickles_spray_datagrams_total", direction="to_replica")
    assert [to_replica[b] for b in backends] == st["forwarded"]
    to_client = per_backend(end, "trickles_spray_bytes_total", direction="to_client")
    assert sum(to_client.values()) > BIG  # every byte of the body came back through it
    with urllib.request.urlopen(f"http://{HOST}:{rr.metrics}/healthz", timeout=5) as resp:
        health = json.load(resp)
    assert resp.status == 200 and health["status"] == "ok" and health["component"] == "spray[0]", health
    victim = rr.replicas()[0]
    os.kill(rr.pid(victim["name"]), signal.SIGKILL)
    try:
        deadline = time.monotonic() + 5
        while per_backend(scrape(rr.metrics), "trickles_spray_backend_up")[victim["addr"]] != 0:
            assert time.monotonic() < deadline, "the killed replica still counts as up"
            time.sleep(0.05)
    finally:
        restart_replica(rr, victim, rr.state / "key", rr.state / "victim-metrics.log")
