"""The cluster on loopback: one download through ``trickles spray`` with 1, 2 and 3 replicas, beside
the same download from one server directly; the sprayer's packets per second and CPU per packet
beside the replicas'. With ``--figure``, the paper's cluster figures instead:

* ``failover`` (Fig. 16): throughput over time (100 ms bins) of one long download while a replica
  dies at ``--kill-at`` s (10; 3 with ``--quick``; kill -9, or SIGSTOP with ``--fail stop``: a hung
  host that resets nothing): Trickles through the sprayer (3 replicas, round robin) against TCP through
  a least-connections connection balancer (3 replicas' TCP fallback), whose client reconnects and
  resumes with a Range request. Both paced to ``--rate`` MB/s so the two curves are comparable and
  the figure is about the gap. The gap is the longest stretch without a byte after the kill.
* ``balance`` (Fig. 17): Jain's fairness index of per-replica load, 2 replicas x 2 clients:
  per-packet round robin (Trickles; load = request datagrams each replica took) against
  least-connections (TCP; load = bytes each replica sent), with equal and with unequal downloads.
* ``ceiling``: the sprayer's own packets/s: a flood of small valid-looking REQUEST datagrams at it for
  ``--flood`` s from another process, replicas being UDP sinks; counted by its forward counters.

    .venv/bin/python bench/cluster.py [--quick] [--size MB] [--figure failover|balance|ceiling]

CPU is read from /proc (utime + stime of each process) before and after the transfer; the
sprayer's packets are the datagrams it relayed both ways (its status counters), a replica's the
datagrams it received. Writes ``bench/results/cluster.json`` (``cluster_quick.json`` with
``--quick``; ``cluster_FIGURE[_stop][_quick].json`` and ``.png`` with ``--figure``). Runs ``trickles cluster
up/down`` as a user would.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from trickles.server.cluster import probe

BIN = Path(sys.executable).parent
TRICKLES, TCURL = str(BIN / "trickles"), str(BIN / "tcurl")
RESULTS = Path(__file__).parent / "results"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fetch(port: int, out: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([TCURL, "-s", "-S", "-v", "-o", str(out), f"http://127.0.0.1:{port}/big.bin"],
                       capture_output=True, timeout=600)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"tcurl failed: {r.stderr.decode()[-500:]}")
    transport = [ln for ln in r.stderr.decode().splitlines() if "Transport:" in ln]
    return time.perf_counter() - t0, transport[-1].lstrip("* ") if transport else ""


def through_sprayer(root: Path, work: Path, n: int, port: int, size: int) -> dict[str, Any]:
    state = work / f"state{n}"
    up = [TRICKLES, "cluster", "up", str(state), "--root", str(root), "--replicas", str(n)]
    subprocess.run([*up, "--listen", f"127.0.0.1:{port}"], check=True, timeout=120)
    try:
        members = json.loads((state / "cluster.json").read_text())["members"]
        pids = {m["name"]: int((state / f"{m['name']}.pid").read_text()) for m in members}
        before_st = {m["name"]: probe(m["addr"]) or {} for m in members}
        before_cpu = {k: cpu_s(p) for k, p in pids.items()}
        secs, transport = fetch(port, work / "out.bin")
        after_cpu = {k: cpu_s(p) for k, p in pids.items()}
        after_st = {m["name"]: probe(m["addr"]) or {} for m in members}
    finally:
        subprocess.run([TRICKLES, "cluster", "down", str(state)], timeout=120)
    procs = {}
    for name in pids:
        a, b = after_st[name], before_st[name]
        if name == "sprayer":
            pk = a["from_clients"] + a["to_clients"] - b["from_clients"] - b["to_clients"]
        else:
            pk = a["datagrams_in"] + a["datagrams_out"] - b["datagrams_in"] - b["datagrams_out"]
        cpu = after_cpu[name] - before_cpu[name]
        procs[name] = {
            "packets": pk,
            "packets_per_s": round(pk / secs),
            "cpu_s": round(cpu, 3),
            "cpu_us_per_packet": round(cpu / pk * 1e6, 2) if pk else None,
        }
    return {"replicas": n, "seconds": round(secs, 3), "MBps": round(size / secs / 1e6, 2),
            "client": transport, "processes": procs}  # fmt: skip


def direct(root: Path, work: Path, port: int, size: int) -> dict[str, Any]:
    key = work / "direct.key"
    subprocess.run([TRICKLES, "keygen", "-o", str(key)], check=True)
    cmd = [TRICKLES, "serve", str(root), "--listen", f"127.0.0.1:{port}", "--key-file", str(key), "--no-tcp"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(1.5)
        c0 = cpu_s(proc.pid)
        secs, transport = fetch(port, work / "out.bin")
        cpu = cpu_s(proc.pid) - c0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"replicas": 0, "seconds": round(secs, 3), "MBps": round(size / secs / 1e6, 2),
            "client": transport, "server_cpu_s": round(cpu, 3)}  # fmt: skip


# -- the paper's figures ------------------------------------------------------------------------------

BIN_S = 0.1


def bins(events: list[tuple[float, int]], end: float) -> list[float]:
    """MB/s in BIN_S bins from (time, bytes) arrivals."""
    out = [0.0] * (int(end / BIN_S) + 1)
    for t, n in events:
        out[min(int(t / BIN_S), len(out) - 1)] += n / BIN_S / 1e6
    return out


def gap_after(events: list[tuple[float, int]], t_kill: float) -> float:
    """The longest stretch without a byte arriving, among those that end after the kill."""
    times = [t for t, _ in events]
    gaps = [b - a for a, b in itertools.pairwise(times) if b > t_kill]
    return max(gaps, default=0.0)


class ClusterProcs:
    """``trickles cluster up`` for a figure; ``down`` on exit."""

    def __init__(self, root: Path, state: Path, n: int, port: int) -> None:
        self.state, self.port = state, port
        up = [TRICKLES, "cluster", "up", str(state), "--root", str(root), "--replicas", str(n)]
        subprocess.run([*up, "--listen", f"127.0.0.1:{port}"], check=True, timeout=120)
        self.members = json.loads((state / "cluster.json").read_text())["members"]
        self.replicas = [m for m in self.members if m["role"] == "replica"]

    def pid(self, name: str) -> int:
        return int((self.state / f"{name}.pid").read_text())

    def down(self) -> None:
        subprocess.run([TRICKLES, "cluster", "down", str(self.state)], timeout=120, capture_output=True)


def tcp_replicas(root: Path, work: Path, ports: list[int]) -> list[subprocess.Popen[bytes]]:
    key = work / "tcp.key"
    subprocess.run([TRICKLES, "keygen", "-o", str(key)], check=True)
    procs = [subprocess.Popen([TRICKLES, "serve", str(root), "--listen", f"127.0.0.1:{p}", "--key-file", str(key)],
                              stderr=subprocess.DEVNULL, start_new_session=True) for p in ports]  # fmt: skip
    for p in ports:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"TCP replica on {p} did not start") from None
                time.sleep(0.05)
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


class LeastConnBalancer:
    """A connection-level TCP balancer: each new connection goes to the healthy backend with the
    fewest open connections, then bytes are piped both ways (the paper's TCP comparison point).
    Health checks as fair as the sprayer's: an HTTP HEAD every 100 ms, out after 300 ms without an
    answer. Counts the bytes each backend sent; one that refuses a connection is skipped for it."""

    def __init__(self, backends: list[int], rate: float | None = None) -> None:
        self.backends, self.rate = backends, rate
        self.active = [0] * len(backends)
        self.sent = [0] * len(backends)
        self.last_ok = [time.monotonic()] * len(backends)
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as n:
            for i in range(len(self.backends)):
                n.start_soon(self._check, i)
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def _check(self, i: int) -> None:
        while True:
            with trio.move_on_after(0.3), contextlib.suppress(OSError, trio.BrokenResourceError):
                async with await trio.open_tcp_stream("127.0.0.1", self.backends[i]) as s:
                    await s.send_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if await s.receive_some(4096):
                        self.last_ok[i] = time.monotonic()
            await trio.sleep(0.1)

    def _order(self) -> list[int]:
        now = time.monotonic()
        up = [i for i in range(len(self.backends)) if now - self.last_ok[i] <= 0.3]
        return sorted(up or range(len(self.backends)), key=lambda k: self.active[k])

    async def _handle(self, client: trio.SocketStream) -> None:
        for i in self._order():
            self.active[i] += 1  # counted before connecting: simultaneous arrivals spread
            try:
                up = await trio.open_tcp_stream("127.0.0.1", self.backends[i])
                break
            except OSError:
                self.active[i] -= 1
        else:
            await client.aclose()
            return
        try:
            async with client, up, trio.open_nursery() as n:
                n.start_soon(self._pipe, client, up, None, n.cancel_scope)
                n.start_soon(self._pipe, up, client, i, n.cancel_scope)
        finally:
            self.active[i] -= 1

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream, i: int | None,
                    scope: trio.CancelScope) -> None:  # fmt: skip
        t0, moved = time.monotonic(), 0
        try:
            while data := await src.receive_some(16384):
                await dst.send_all(data)
                if i is not None:
                    self.sent[i] += len(data)
                    moved += len(data)
                    if self.rate:  # pace like the Trickles link: the same bytes/s on both paths
                        ahead = moved / self.rate - (time.monotonic() - t0)
                        if ahead > 0:
                            await trio.sleep(ahead)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()  # one side gone: the connection is over


async def tcp_download(port: int, size: int, events: list[tuple[float, int]], t0: float,
                       idle_timeout: float) -> int:  # fmt: skip
    """GET /big.bin over TCP, reconnecting with ``Range: bytes=N-`` whenever the connection ends
    early or stays silent ``idle_timeout`` s. Returns the number of connections used."""
    got, conns = 0, 0
    while got < size:
        conns += 1
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)
            continue
        async with stream:
            req = f"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes={got}-\r\nConnection: close\r\n\r\n"
            await stream.send_all(req.encode())
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    with trio.fail_after(idle_timeout):
                        chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    head += chunk
                if b"\r\n\r\n" not in head:
                    continue
                status = head.split(b" ", 2)[1]
                if status not in (b"200", b"206") or (got and status != b"206"):
                    raise SystemExit(f"TCP replica answered {status!r} to a Range request")
                body = head.partition(b"\r\n\r\n")[2]
                while True:
                    if body:
                        got += len(body)
                        events.append((time.monotonic() - t0, len(body)))
                    if got >= size:
                        break
                    with trio.fail_after(idle_timeout):
                        body = await stream.receive_some(65536)
                    if not body:
                        break
            except (trio.TooSlowError, trio.BrokenResourceError, OSError):
                pass
    return conns


async def trickles_download(port: int, rate: float, events: list[tuple[float, int]], t0: float,
                            stats: dict[str, Any]) -> None:  # fmt: skip
    from trickles.client.trickles_transport import TricklesTransport
    from trickles.server.link import Impairment, lossy_link

    async with lossy_link(
        ("127.0.0.1", port), up=Impairment(), down=Impairment(rate=rate, queue=8000)
    ) as link:
        conn = await TricklesTransport(probe_timeout=5).connect("127.0.0.1", link.address[1], timeout=5)
        core = conn.ep.conn
        try:
            resp = await conn.request("GET", "/big.bin", [])
            async for chunk in resp.body:
                events.append((time.monotonic() - t0, len(chunk)))
        finally:
            await conn.aclose()
    st = core.stats
    stats.update(
        connections=1, timeouts=st.timeouts, losses=st.losses_declared, link_clients=link.stats.clients
    )


def failover(args: argparse.Namespace, root: Path, work: Path, size: int, kill_at: float) -> dict[str, Any]:
    rate = args.rate * 1e6
    out: dict[str, Any] = {"kill_at_s": kill_at, "rate_MBps": args.rate, "bin_s": BIN_S, "size_bytes": size}
    # Trickles: 3 replicas behind the sprayer, replica-2 killed -9 at kill_at.
    fail = signal.SIGSTOP if args.fail == "stop" else signal.SIGKILL
    out["failure"] = args.fail
    c = ClusterProcs(root, work / "fo", 3, args.port)
    victim = [c.pid("replica-2")]
    try:
        events: list[tuple[float, int]] = []
        stats: dict[str, Any] = {}

        async def run() -> None:
            t0 = time.monotonic()
            async with trio.open_nursery() as n:

                async def killer() -> None:
                    await trio.sleep(kill_at)
                    os.kill(victim[0], fail)
                    victim.append(c.pid("replica-2"))

                n.start_soon(killer)
                await trickles_download(args.port, rate, events, t0, stats)

        trio.run(run)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim[0], signal.SIGKILL)  # a stopped one too
        c.down()
    end = events[-1][0]
    out["trickles"] = {"seconds": round(end, 3), "gap_s": round(gap_after(events, kill_at), 3), **stats,
                       "MBps": [round(x, 3) for x in bins(events, end)]}  # fmt: skip
    # TCP: 3 replicas' TCP fallback behind the least-connections balancer, the serving one killed.
    ports = [args.port + 20 + i for i in range(3)]
    procs = tcp_replicas(root, work, ports)
    try:
        lb = LeastConnBalancer(ports, rate)
        tevents: list[tuple[float, int]] = []
        conns = [0]

        async def run_tcp() -> None:
            async with trio.open_nursery() as n:
                await n.start(lb.serve)
                t0 = time.monotonic()

                async def killer() -> None:
                    await trio.sleep(kill_at)
                    (busy,) = [i for i, a in enumerate(lb.active) if a]
                    os.kill(procs[busy].pid, fail)

                n.start_soon(killer)
                conns[0] = await tcp_download(lb.port, size, tevents, t0, args.idle_timeout)
                n.cancel_scope.cancel()

        trio.run(run_tcp)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        stop(procs)
    tend = tevents[-1][0]
    out["tcp"] = {"seconds": round(tend, 3), "gap_s": round(gap_after(tevents, kill_at), 3),
                  "connections": conns[0], "MBps": [round(x, 3) for x in bins(tevents, tend)]}  # fmt: skip
    return out


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if any(xs) else 0.0


def balance(args: argparse.Namespace, root: Path, work: Path, size: int) -> dict[str, Any]:
    """2 replicas x 2 clients: the clients' downloads equal, then one twice the other."""
    half = root / "half.bin"
    half.write_bytes((root / "big.bin").read_bytes()[: size // 2])
    out: dict[str, Any] = {}
    for label, paths in (("equal", ["/big.bin", "/big.bin"]), ("unequal", ["/big.bin", "/half.bin"])):
        c = ClusterProcs(root, work / f"bal-{label}", 2, args.port)
        try:
            before = [probe(m["addr"]) or {} for m in c.replicas]
            trio.run(_two_trickles_clients, args.port, paths)
            after = [probe(m["addr"]) or {} for m in c.replicas]
        finally:
            c.down()
        load = [float(a["decapsulated"] - b["decapsulated"]) for a, b in zip(after, before, strict=True)]
        ports = [args.port + 20, args.port + 21]
        procs = tcp_replicas(root, work, ports)
        try:
            lb = LeastConnBalancer(ports)
            trio.run(_two_tcp_clients, lb, paths, size)
        finally:
            stop(procs)
        tload = [float(x) for x in lb.sent]
        out[label] = {"trickles_load": load, "trickles_jain": round(jain(load), 4),
                      "tcp_load": tload, "tcp_jain": round(jain(tload), 4)}  # fmt: skip
        print(label, json.dumps(out[label]), flush=True)
    return out


async def _two_trickles_clients(port: int, paths: list[str]) -> None:
    from trickles.client.trickles_transport import TricklesTransport

    async def one(path: str) -> None:
        conn = await TricklesTransport(probe_timeout=5).connect("127.0.0.1", port, timeout=5)
        try:
            resp = await conn.request("GET", path, [])
            async for _ in resp.body:
                pass
        finally:
            await conn.aclose()

    async with trio.open_nursery() as n:
        for p in paths:
            n.start_soon(one, p)


async def _two_tcp_clients(lb: LeastConnBalancer, paths: list[str], size: int) -> None:
    async def one(path: str) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", lb.port) as s:
            await s.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while await s.receive_some(65536):
                pass

    async with trio.open_nursery() as n:
        await n.start(lb.serve)
        async with trio.open_nursery() as clients:
            for p in paths:
                clients.start_soon(one, p)
        n.cancel_scope.cancel()


def ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The sprayer alone: replicas are sinks that never read; a flooder process sends for a bounded
    time; the sprayer's status counters say how many it took in and forwarded."""
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
    backends = [a for s in sinks for a in ("--backend", f"127.0.0.1:{s.getsockname()[1]}")]
    port = args.port
    sp = subprocess.Popen([TRICKLES, "spray", "--listen", f"127.0.0.1:{port}", *backends],
                          stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while (before := probe(f"127.0.0.1:{port}")) is None:
            if time.monotonic() > deadline:
                raise SystemExit("the sprayer did not start")
            time.sleep(0.1)
        c0 = cpu_s(sp.pid)
        flood = subprocess.run([sys.executable, __file__, "--flood-child", str(port), str(args.flood)],
                               capture_output=True, timeout=args.flood + 60)  # fmt: skip
        time.sleep(0.2)
        after = probe(f"127.0.0.1:{port}") or {}
        cpu = cpu_s(sp.pid) - c0
    finally:
        sp.terminate()
        sp.wait(timeout=10)
        for s in sinks:
            s.close()
    sent = int(flood.stdout.decode().split()[-1])
    fwd = sum(after["forwarded"]) - sum(before["forwarded"])
    took = after["from_clients"] - before["from_clients"]
    return {"flood_s": args.flood, "sent": sent, "received": took, "forwarded": fwd,
            "forwarded_per_s": round(fwd / args.flood), "cpu_s": round(cpu, 3),
            "cpu_us_per_packet": round(cpu / fwd * 1e6, 2) if fwd else None,
            "datagram_bytes": len(FLOOD_DATAGRAM)}  # fmt: skip


# A REQUEST-looking datagram (version 1, type 2) of a typical request's size: the sprayer reads only
# the bytes its policy hashes, so its content does not matter to its cost.
FLOOD_DATAGRAM = bytes((1, 2)) + os.urandom(98)


def flood_child(port: int, secs: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    dest, data, n = ("127.0.0.1", port), FLOOD_DATAGRAM, 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for _ in range(100):
            try:
                s.sendto(data, dest)
                n += 1
            except OSError:
                pass
    print(n)


def plot_failover(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, style in (("trickles", "-"), ("tcp", "--")):
        r = res[name]
        xs = [i * BIN_S for i in range(len(r["MBps"]))]
        label = (
            f"{'Trickles, sprayer' if name == 'trickles' else 'TCP, least-conn + Range'}: gap {r['gap_s']} s"
        )
        ax.plot(xs, r["MBps"], style, label=label)
    what = "replica hung (SIGSTOP)" if res.get("failure") == "stop" else "replica killed (-9)"
    ax.axvline(res["kill_at_s"], color="red", lw=0.8, label=what)
    ax.set(xlabel="time (s)", ylabel=f"MB/s ({int(BIN_S * 1000)} ms bins)", title="Failover (Fig. 16)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_balance(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [k for k, v in res.items() if isinstance(v, dict)]
    xs = range(len(labels))
    ax.bar(
        [x - 0.2 for x in xs], [res[k]["trickles_jain"] for k in labels], 0.4, label="Trickles, per-packet RR"
    )
    ax.bar([x + 0.2 for x in xs], [res[k]["tcp_jain"] for k in labels], 0.4, label="TCP, least-connections")
    ax.set_xticks(list(xs), [f"{k} downloads" for k in labels])
    ax.axhline(0.99, color="grey", lw=0.8, ls=":")
    ax.set(
        ylim=(0.5, 1.02), ylabel="Jain's fairness index", title="Balance, 2 replicas x 2 clients (Fig. 17)"
    )
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_figure(args: argparse.Namespace) -> None:
    kill_at = 3.0 if args.quick and args.kill_at == 10.0 else args.kill_at
    size = int(args.rate * 1e6 * kill_at * 2)  # the download lasts about twice the kill time
    if args.figure == "balance":
        size = (2 if args.quick else args.size) << 20
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "www"
        root.mkdir()
        (root / "big.bin").write_bytes(os.urandom(size))
        if args.figure == "failover":
            res = failover(args, root, work, size, kill_at)
        elif args.figure == "balance":
            res = balance(args, root, work, size)
        else:
            res = ceiling(args)
    res = {"machine": f"{platform.node()} {os.cpu_count()} cpus", **res}
    RESULTS.mkdir(exist_ok=True)
    hang = "_stop" if args.figure == "failover" and args.fail == "stop" else ""
    stem = f"cluster_{args.figure}{hang}{'_quick' if args.quick else ''}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    if args.figure == "failover":
        plot_failover(res, RESULTS / f"{stem}.png")
    elif args.figure == "balance":
        plot_balance(res, RESULTS / f"{stem}.png")
    summary = {k: v for k, v in res.items() if not isinstance(v, dict)}
    summary |= {
        k: {kk: vv for kk, vv in v.items() if kk != "MBps"} for k, v in res.items() if isinstance(v, dict)
    }
    print(json.dumps(summary))
    print(f"wrote {RESULTS / stem}.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=20, metavar="MB")
    ap.add_argument("--port", type=int, default=39700)
    ap.add_argument("--figure", choices=["failover", "balance", "ceiling"])
    ap.add_argument("--kill-at", type=float, default=10.0, metavar="S", help="failover: kill time")
    ap.add_argument("--rate", type=float, default=2.0, metavar="MB/s", help="failover: pacing")
    ap.add_argument("--flood", type=float, default=3.0, metavar="S", help="ceiling: flood duration")
    ap.add_argument("--idle-timeout", type=float, default=1.0, metavar="S",
                    help="failover: the TCP client's reconnect-after-silence timeout")  # fmt: skip
    ap.add_argument("--fail", choices=["kill", "stop"], default="kill",
                    help="failover: kill -9 (the kernel resets its TCP connections) or SIGSTOP (a hung "
                    "host: no reset; the TCP client waits --idle-timeout)")  # fmt: skip
    ap.add_argument("--flood-child", nargs=2, metavar=("PORT", "S"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood_child:
        flood_child(int(args.flood_child[0]), float(args.flood_child[1]))
        return
    if args.figure:
        run_figure(args)
        return
    size = (2 if args.quick else args.size) << 20
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "www"
        root.mkdir()
        (root / "big.bin").write_bytes(os.urandom(size))
        cases = [direct(root, work, args.port, size)]
        for n in (1, 2, 3):
            cases.append(through_sprayer(root, work, n, args.port + 10 * n, size))
            print(json.dumps(cases[-1]), flush=True)
    out = {"machine": f"{platform.node()} {os.cpu_count()} cpus", "size_bytes": size, "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("cluster_quick.json" if args.quick else "cluster.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
