"""The lossy link: the sans-IO pipe's statistics, determinism and rate limit, then the relay on real
loopback sockets (in-process and as ``trickles link``)."""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trickles.server.link import Impairment, Pipe, lossy_link

N = 100_000


def run_pipe(
    imp: Impairment, seed: int, n: int, gap: float = 1e-4, size: int = 100
) -> tuple[Pipe, list[tuple[float, int]]]:
    """Push n numbered datagrams ``gap`` apart; returns the pipe and (time, id) of each departure."""
    pipe = Pipe(imp, random.Random(seed))
    out: list[tuple[float, int]] = []
    for i in range(n):
        now = i * gap
        pipe.push(i.to_bytes(4, "big") + bytes(size - 4), i, now)
        out += [(now, dest) for _, dest in pipe.pop_due(now)]
    while (t := pipe.next_due()) is not None:
        out += [(t, dest) for _, dest in pipe.pop_due(t)]
    return pipe, out


def within(count: int, p: float, n: int = N, sigmas: float = 5.0) -> bool:
    """``count`` is a plausible Binomial(n, p) outcome."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_statistics_match_the_probabilities() -> None:
    imp = Impairment(loss=0.05, duplicate=0.01, reorder=0.05, reorder_delay=0.001)
    pipe, out = run_pipe(imp, seed=1, n=N)
    st = pipe.stats
    assert st.received == N
    assert within(st.lost, 0.05)
    assert within(st.duplicated, 0.01 * 0.95)
    survivors = N - st.lost + st.duplicated
    assert within(st.reordered, 0.05, n=survivors)
    assert len(out) == survivors and st.queue_drops == 0
    ids = [dest for _, dest in out]
    assert len(set(ids)) == N - st.lost  # every survivor once, plus its duplicate
    # A datagram held back 1 ms is overtaken by the ~10 sent in that time.
    assert st.out_of_order >= st.reordered * 0.9
    assert sum(a > b for a, b in itertools.pairwise(ids)) > 0


def test_no_impairment_is_a_wire() -> None:
    pipe, out = run_pipe(Impairment(), seed=1, n=1000)
    assert out == [(i * 1e-4, i) for i in range(1000)]
    assert pipe.stats.sent == 0  # only the I/O layer counts sends


def test_same_seed_same_fates_whatever_the_timing() -> None:
    imp = Impairment(loss=0.1, duplicate=0.05, reorder=0.1)
    _, a = run_pipe(imp, seed=7, n=5000)
    _, b = run_pipe(imp, seed=7, n=5000)
    _, c = run_pipe(imp, seed=7, n=5000, gap=1e-2)  # slower arrivals: less overtaking, same fates
    _, d = run_pipe(imp, seed=8, n=5000)
    assert a == b
    assert sorted(x for _, x in a) == sorted(x for _, x in c)
    assert sorted(x for _, x in a) != sorted(x for _, x in d)


def test_delay_and_jitter_bounds() -> None:
    imp = Impairment(delay=0.01, jitter=0.005)
    _, out = run_pipe(imp, seed=3, n=2000, gap=0.0)
    delays = [t for t, _ in out]
    assert min(delays) >= 0.01 and max(delays) < 0.015
    assert max(delays) - min(delays) > 0.004  # the jitter is really spread over [0, 5 ms)


def test_rate_limit_paces_and_the_full_queue_drops_the_tail() -> None:
    # 1000-byte datagrams at 100 kB/s: one every 10 ms once the 3000-byte bucket is spent.
    imp = Impairment(rate=100_000, queue=1000, burst=3000)
    _, out = run_pipe(imp, seed=1, n=200, gap=0.0, size=1000)
    times = [t for t, _ in out]
    assert len(out) == 200 and times[:3] == [0.0, 0.0, 0.0]
    assert times[-1] == pytest.approx(197 * 0.01)
    assert all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(times[3:]))
    # A 10-datagram queue: the burst passes, 10 wait, the other 187 are dropped at the tail.
    pipe, out = run_pipe(Impairment(rate=100_000, queue=10), 1, 200, 0.0, 1000)
    assert pipe.stats.queue_drops == 200 - len(out)
    assert [dest for _, dest in out] == list(range(len(out)))  # FIFO, the tail dropped
    assert 10 <= len(out) <= 14
    # Arrivals at the rate: nothing is dropped.
    pipe, out = run_pipe(Impairment(rate=100_000, queue=10), 1, 200, 0.01, 1000)
    assert (len(out), pipe.stats.queue_drops) == (200, 0)


def test_bad_parameters_are_refused() -> None:
    for bad in ({"loss": 1.5}, {"reorder": -0.1}, {"delay": math.inf}, {"rate": 0}, {"queue": 0}):
        with pytest.raises(ValueError):
            Impairment(**bad).check()


# -- real sockets ----------------------------------------------------------------------------------


async def echo_server(task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname())
        while True:
            data, addr = await sock.recvfrom(65536)
            await sock.sendto(data, addr)


async def exchange(
    addr: tuple[str, int], n: int, gap: float = 0.0005, times: list[float] | None = None, linger: float = 0.3
) -> list[int]:
    """Send n numbered datagrams through the link to the echo server; the numbers that came back
    (read as they come, so the socket buffer never overflows), waiting ``linger`` s for stragglers.
    ``times`` receives each arrival's time since the first send."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[int] = []

    async def read() -> None:
        while True:
            got.append(int.from_bytes(await sock.recv(64), "big"))
            if times is not None:
                times.append(trio.current_time() - t0)

    with sock:
        await sock.connect(addr)
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for i in range(n):
                await sock.send(i.to_bytes(4, "big"))
                await trio.sleep(gap)
            await trio.sleep(linger)
            nursery.cancel_scope.cancel()
    return got


async def test_relay_on_loopback() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(echo_server)
            async with lossy_link(target, seed=5, loss=0.1, duplicate=0.05, reorder=0.1) as link:
                got = await exchange(link.address, 400)
            nursery.cancel_scope.cancel()
    up, down = link.stats.up, link.stats.down
    assert up.received == 400 and down.received == up.sent
    assert len(got) == down.sent  # every datagram the link sent arrived: loopback loses nothing
    assert up.lost > 10 and down.lost > 5 and up.duplicated + down.duplicated > 5
    assert up.out_of_order + down.out_of_order > 0
    assert len(got) > len(set(got))  # duplicates came back
    assert set(got) < set(range(400))  # losses did not
    assert link.stats.clients == 1


async def test_delay_and_rate_on_loopback() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(echo_server)
            times: list[float] = []
            async with lossy_link(target, delay=0.05) as link:
                assert await exchange(link.address, 1, times=times) == [0]
            assert 0.1 <= times[0] < 0.2  # 50 ms each way
            slow = Impairment(rate=2_000, burst=100, queue=1000)
            times.clear()
            async with lossy_link(target, up=slow, down=Impairment()) as link:
                got = await exchange(link.address, 50, gap=0, times=times)
            assert got == list(range(50))
            # 100 bytes pass at once, then 200 bytes at 2 kB/s: the last one 0.05 s later.
            assert 0.045 <= times[-1] < 0.25
            nursery.cancel_scope.cancel()


async def test_client_mapping_is_bounded() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(echo_server)
            async with lossy_link(target, max_clients=2) as link:
                for _ in range(5):
                    assert await exchange(link.address, 3, gap=0, linger=0.05) == [0, 1, 2]
                assert len(link._clients) == 2
            nursery.cancel_scope.cancel()
    assert (link.stats.clients, link.stats.evicted) == (5, 3)


def test_command_line(tmp_path: Path) -> None:
    """``trickles link`` says where it listens, relays, and prints its counters when stopped."""
    trickles = str(Path(sys.executable).parent / "trickles")
    bad = subprocess.run([trickles, "link", "--to", "127.0.0.1:9", "--loss", "2"], capture_output=True)
    assert bad.returncode == 2 and bad.stderr == b"trickles link: loss must be a probability in [0, 1]\n"
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(5)
    cmd = [trickles, "link", "--to", "{}:{}".format(*echo.getsockname()), "--loss", "0,1", "--seed", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with client, echo:
            client.settimeout(0.5)
            client.sendto(b"ping", ("127.0.0.1", port))
            data, addr = echo.recvfrom(64)
            assert data == b"ping"
            echo.sendto(b"pong", addr)  # the way back loses everything (--loss 0,1)
            with pytest.raises(TimeoutError):
                client.recv(64)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["up"]["sent"] == 1 and stats["down"]["lost"] == 1 and stats["clients"] == 1
