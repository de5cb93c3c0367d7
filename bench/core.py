"""Core micro-benchmarks: the stateless server step, its crypto pieces, wire overhead, the client.

Run ``.venv/bin/python bench/core.py`` (about a minute) or ``--quick`` (a few seconds, for CI smoke
tests). Results go to ``bench/results/core.json`` (raw samples and machine info) and the cProfile
listing of the server step to ``bench/results/core_profile.txt``; a readable table is printed. A
``--quick`` run writes ``core_quick.json`` / ``core_quick_profile.txt`` instead, so a smoke test
never overwrites the real results. Nothing is asserted: the 20 µs step target is only reported.

*Builds.* The figures are those of the build this interpreter imports (``build`` in the JSON: pure
Python or compiled by mypyc). ``--other PYTHON`` runs the same benchmark again under another
interpreter, e.g. the compiled build's venv (``make bench-core`` does
``.venv/bin/python bench/core.py --other .venv-compiled/bin/python``), embeds its results under
``other_build`` and prints the two builds side by side. The builds take turns (``--rounds``, 5 by
default; each round a full set of samples from each, the samples pooled), so a change of machine
load hits both alike; still, compare the min columns when the machine is busy.

The machine is shared and noisy: every figure is the median and the min of repeated samples, and
the variants are sampled round-robin. Tight-loop figures for the step's parts (section 2) add up to
about half the measured step: run one after another, the parts run at a lower instructions-per-cycle
rate than each alone in a tight loop (the interpreter's branch predictors and caches no longer hold a
single small loop), so the step figures of section 1 are the ones to plan with.

Method
------
Inputs are real: a seeded simulated transfer (``trickles.sim.network``: the real ClientConnection against the
real ServerEngine serving a MemoryApp object) is run once per protocol configuration and every
datagram is recorded. The configurations reach congestion avoidance quickly and loss-free
(``initial_ssthresh=8``): ``d1`` (``ack_div=1``: a request acknowledges one packet, 1 child per
request, 2 when the window grows) and ``d2`` (the default delayed-ACK ``ack_div=2``: 2 children per
request, the second a minimal packet without a continuation, 3 when the window grows).

*Server step.* Each timing pass replays the whole recorded request stream, in order, into a fresh
ServerEngine (same key, same ``now`` as recorded, so freshness checks pass and the replay filter
never sees a datagram twice); the steps whose request is a steady-state congestion-avoidance data
request answered by full 1372-byte data packets are timed one by one with ``perf_counter_ns`` (the
timer's own cost, measured, is subtracted) and grouped by their number of children. A sample is the
mean over one or more passes; each measurement is repeated (7 by default) and the median and min
reported. The first pass of every configuration is checked: nothing dropped, and with delta encoding
on the responses are byte-identical to the recorded ones. The engine is measured with delta encoding
on and off and, if the engine has a soft-state continuation cache (``ServerConfig.cache_size``), with
the cache off (the stateless step proper: what any replica or a restarted server does) and on (the
request's continuation was sealed by this engine, which is the case in the in-order replay).

*Primitives* are timed with ``timeit.Timer(timer=perf_counter_ns)`` on values taken from a real
steady-state request. *Overhead* is measured on the recorded (and delta-off replayed) response
datagrams: length minus the data bytes they carry. *Client* cost replays the recorded server
datagrams, at their recorded times, into a fresh ClientConnection (same client nonce), calling
``receive_datagram`` then ``datagrams_to_send`` per packet; the replay is checked to emit exactly the
recorded requests. Only the steady-state part (from the first timed server request on) is timed.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime
import gc
import hmac
import io
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns, thread_time_ns
from typing import Any

from trickles import build_info, wire
from trickles.congestion import ProtocolConfig, plan_request
from trickles.connection import ClientConnection
from trickles.continuation import (
    FIELDS_LEN,
    SEALED_LEN,
    Continuation,
    encode_delta,
    open_untrusted,
    parse_unverified,
    seal,
)
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing
from trickles.minisocket import EventKind, Minisocket
from trickles.nonces import packet_nonces, piece_id, proof_and_nonces
from trickles.reno import tcp_cwnd
from trickles.replay import ReplayFilter, ack_key
from trickles.sim.memapp import MemoryApp
from trickles.sim.network import Link, Sim, TricklesClientHost, TricklesServerHost

MASTER = b"simulation master secret 0123456"
ADDR = b"\x0a\x00\x00\x02\x13\x88"
SERVER_CLOCK = 1_000_000.0  # TricklesServerHost passes 1e6 + sim.now to the engine
TARGET_STEP_US = 20.0
PAPER_CONT_BYTES = 75  # + 12 m (m loss reports), paper section 5.3
RESULTS = Path(__file__).resolve().parent / "results"

_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}
HAS_CACHE = "cache_size" in _CONFIG_FIELDS


# --- recording a real transfer ----------------------------------------------------------------------


class _RecordingLink(Link):
    """The client's uplink: remembers every datagram the client sends."""

    recorded: list[bytes]

    def send(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        self.recorded.append(data)
        super().send(data, deliver)


class _RecordingClient(TricklesClientHost):
    """A client host that remembers every datagram delivered to it, with its time."""

    rx: list[tuple[bytes, float]]

    def receive(self, data: bytes) -> None:
        self.rx.append((data, self.sim.now))
        super().receive(data)


@dataclasses.dataclass
class Capture:
    name: str
    proto: ProtocolConfig
    objects: dict[bytes, bytes]
    requests: list[tuple[bytes, float]]  # (datagram, engine clock)
    responses: list[list[bytes]]
    client_nonce: int
    client_rx: list[tuple[bytes, float]]  # (datagram, client clock)
    client_tx: list[bytes]
    done_at: float | None
    tags: list[int] = dataclasses.field(default_factory=list)  # scenario index per request, -1 untimed
    counts: list[int] = dataclasses.field(default_factory=list)  # timed requests per scenario
    scenarios: list[str] = dataclasses.field(default_factory=list)
    scen_children: list[int] = dataclasses.field(default_factory=list)
    scen_conts: list[int] = dataclasses.field(default_factory=list)  # sealed continuations per request


def capture(name: str, proto: ProtocolConfig, size: int, seed: int) -> Capture:
    sim = Sim(seed)
    obj = random.Random(seed ^ 0x5EED).randbytes(size)
    objects = {b"obj": obj}
    engine = new_engine(objects, proto, delta=True, cache=True)
    server = TricklesServerHost(sim, engine)
    reqs: list[tuple[bytes, float]] = []
    resps: list[list[bytes]] = []

    def observe(data: bytes, out: list[bytes]) -> None:
        reqs.append((data, SERVER_CLOCK + sim.now))
        resps.append(list(out))

    server.observer = observe
    down = Link(sim, 10e6, 0.010, 400)
    up = _RecordingLink(sim, 10e6, 0.010, 400)
    up.recorded = []
    client = _RecordingClient(sim, ADDR, up, server.receive, b"obj", proto)
    client.rx = []
    server.attach(ADDR, down, client.receive)
    sim.run(600.0, stop=lambda: client.finished)
    if bytes(client.data) != obj:
        raise SystemExit(f"capture {name}: transfer did not complete correctly")
    if client.conn.stats.timeouts or engine.stats.retransmits:
        raise SystemExit(f"capture {name}: the recorded transfer had losses; pick another setting")
    cap = Capture(
        name, proto, objects, reqs, resps, client.conn.client_nonce, client.rx, up.recorded, client.done_at
    )
    classify(cap)
    return cap


def data_bytes(datagram: bytes) -> int:
    r = wire.decode_response_untrusted(datagram)
    return sum(len(ch.data) for ch in r.chunks if ch.type == wire.ChunkType.DATA)


def classify(cap: Capture) -> None:
    """Tag steady-state congestion-avoidance data requests by their number of children."""
    raw: list[int] = []
    for data, out in zip((d for d, _ in cap.requests), cap.responses, strict=True):
        tag = -1
        if data[1] == wire.ReqType.REQUEST and out and data[4 + 4 + SEALED_LEN] == 1:
            c = parse_unverified(bytes(data[8 : 8 + SEALED_LEN]))
            ca = tcp_cwnd(c.seq, c.base, c.start, c.ssthresh, c.ack_div) >= c.ssthresh
            if (
                ca
                and c.phase == 1
                and c.seq - c.base > 16
                and all(d[1] == 0x12 and data_bytes(d) == wire.MSS for d in out)
            ):
                tag = len(out)
        raw.append(tag)
    order = sorted({t for t in raw if t >= 0})
    index = {n: j for j, n in enumerate(order)}
    cap.tags = [index[t] if t >= 0 else -1 for t in raw]
    cap.scenarios = [f"{cap.name}/{n}ch" for n in order]
    cap.scen_children = order
    cap.counts = [cap.tags.count(j) for j in range(len(order))]
    cap.scen_conts = []
    for j in range(len(order)):
        i = cap.tags.index(j)
        cap.scen_conts.append(sum(1 for d in cap.responses[i] if d[2] != 0))


def new_engine(
    objects: dict[bytes, bytes], proto: ProtocolConfig, *, delta: bool, cache: bool
) -> ServerEngine:
    kw: dict[str, Any] = {"protocol": proto, "delta": delta}
    if HAS_CACHE:
        kw["cache_size"] = _CONFIG_FIELDS["cache_size"].default if cache else 0
    return ServerEngine(KeyRing.from_master(MASTER), MemoryApp(objects), ServerConfig(**kw))


# --- timing helpers --------------------------------------------------------------------------------


def timer_overhead_ns(n: int = 200_000) -> float:
    """What ``t0 = pc(); ...; acc += pc() - t0`` adds around a timed call (median of 5 runs)."""
    pc = perf_counter_ns
    runs = []
    for _ in range(5):
        acc = 0
        for _ in range(n):
            t0 = pc()
            acc += pc() - t0
        runs.append(acc / n)
    return statistics.median(runs)


def summarize(samples_us: list[float]) -> dict[str, Any]:
    return {
        "median_us": statistics.median(samples_us),
        "min_us": min(samples_us),
        "samples_us": [round(s, 4) for s in samples_us],
    }


def time_stmt(stmt: str, globs: dict[str, Any], repeat: int, target_ns: float) -> dict[str, Any]:
    """timeit-style: a compiled loop of ``number`` executions, ``repeat`` times; µs per execution."""
    t = timeit.Timer(stmt, timer=perf_counter_ns, globals=globs)
    number = 1
    while True:
        took = t.timeit(number)
        if took >= target_ns / 4:
            break
        number *= 4
    number = max(1, int(number * target_ns / max(took, 1)))
    samples = [t.timeit(number) / number / 1000 for _ in range(repeat)]
    out = summarize(samples)
    out["number"] = number
    return out


# --- 1. the server step ----------------------------------------------------------------------------


def _pass(cap: Capture, engine: ServerEngine, acc: list[int]) -> None:
    pc = perf_counter_ns
    step = engine.step
    tags = cap.tags
    for i, (data, now) in enumerate(cap.requests):
        t = tags[i]
        if t < 0:
            step(data, ADDR, now)
        else:
            t0 = pc()
            step(data, ADDR, now)
            acc[t] += pc() - t0


def validate_server(cap: Capture, delta: bool, cache: bool) -> list[list[bytes]]:
    eng = new_engine(cap.objects, cap.proto, delta=delta, cache=cache)
    outs = []
    for i, (data, now) in enumerate(cap.requests):
        res = eng.step(data, ADDR, now)
        if res.drop is not None:
            raise SystemExit(f"{cap.name}: replayed request {i} dropped ({res.drop!r})")
        if delta and res.datagrams != cap.responses[i]:
            raise SystemExit(f"{cap.name}: replayed request {i} answered differently from the recording")
        if len(res.datagrams) != len(cap.responses[i]):
            raise SystemExit(f"{cap.name}: replayed request {i} gave a different number of packets")
        outs.append(res.datagrams)
    return outs


def server_sample(
    cap: Capture, delta: bool, cache: bool, target_ns: float, overhead: float
) -> tuple[list[float], float, int, int]:
    """One sample: µs per step for each scenario (timer cost subtracted), the CPU share of the wall
    time (below 1 when the OS ran something else meanwhile), cache hits and misses."""
    n_scen = len(cap.scenarios)
    acc = [0] * n_scen
    passes = spent = cpu = hits = misses = 0
    while passes == 0 or spent < target_ns:
        eng = new_engine(cap.objects, cap.proto, delta=delta, cache=cache)
        gc.collect()
        gc.disable()
        c0 = thread_time_ns()
        t0 = perf_counter_ns()
        try:
            _pass(cap, eng, acc)
        finally:
            t1 = perf_counter_ns()
            c1 = thread_time_ns()
            gc.enable()
        spent += t1 - t0
        cpu += c1 - c0
        passes += 1
        hits += getattr(eng, "cache_hits", 0)
        misses += getattr(eng, "cache_misses", 0)
    counts = cap.counts
    per = [(acc[j] / (counts[j] * passes) - overhead) / 1000 for j in range(n_scen)]
    return per, cpu / spent, hits, misses


def time_servers(
    caps: list[Capture],
    variants: list[tuple[str, bool, bool]],
    repeat: int,
    target_ns: float,
    overhead: float,
) -> dict[str, Any]:
    """All (capture, variant) combinations, interleaved round-robin so that a change of machine load
    during the run hits every variant alike rather than biasing the one measured at that moment."""
    samples: dict[tuple[str, str], list[list[float]]] = {}
    shares: dict[tuple[str, str], list[float]] = {}
    cache_stats: dict[str, list[int]] = {}
    for _ in range(repeat):
        for cap in caps:
            for label, delta, cache in variants:
                per, share, hits, misses = server_sample(cap, delta, cache, target_ns, overhead)
                key = (label, cap.name)
                samples.setdefault(key, [[] for _ in cap.scenarios])
                for j, v in enumerate(per):
                    samples[key][j].append(v)
                shares.setdefault(key, []).append(share)
                hm = cache_stats.setdefault(label, [0, 0])
                hm[0] += hits
                hm[1] += misses
    out: dict[str, Any] = {}
    for label, _, _ in variants:
        res: dict[str, Any] = {}
        for cap in caps:
            key = (label, cap.name)
            for j, name in enumerate(cap.scenarios):
                e = summarize(samples[key][j])
                e["requests_per_pass"] = cap.counts[j]
                e["packets_per_request"] = cap.scen_children[j]
                e["sealed_per_request"] = cap.scen_conts[j]
                e["per_packet_median_us"] = e["median_us"] / cap.scen_children[j]
                e["per_packet_min_us"] = e["min_us"] / cap.scen_children[j]
                e["cpu_share_samples"] = [round(x, 3) for x in shares[key]]
                res[name] = e
        if HAS_CACHE:
            h, m = cache_stats[label]
            res["cache_hit_ratio"] = h / max(h + m, 1)
        out[label] = res
    return out


# --- 2. primitives ---------------------------------------------------------------------------------


def primitives(cap: Capture, repeat: int, target_ns: float) -> dict[str, Any]:
    """The step's pieces, on values from a real steady-state 1-child request of ``cap``."""
    i = cap.tags.index(0)
    data, now = cap.requests[i]
    eng = new_engine(cap.objects, cap.proto, delta=True, cache=False)
    ring = eng.ring
    key = ring.current
    now_ms = int(now * 1000) & 0xFFFFFFFF
    horizon, skew = int(eng.config.horizon_s * 1000), int(eng.config.skew_s * 1000)
    req = wire.decode_request_untrusted(data)
    parent, mac = open_untrusted(req.cont, 0, ring, ADDR, now_ms, horizon, skew)
    ranges = [(first, last) for first, last, _ in req.proof]
    plan = plan_request(parent, ranges, cap.proto.burst_limit)
    child = Continuation(
        key.key_id, plan.phase, parent.ack_div, parent.conn_id, plan.lo, plan.epoch, plan.base,
        plan.start, plan.ssthresh, now_ms, 20,
    )  # fmt: skip
    sealed = seal(child, key, ADDR)
    conn, epoch = parent.conn_id, parent.epoch
    piece = piece_id(conn, epoch, parent.base, parent.start, parent.ssthresh)
    base, k = parent.base, parent.seq
    # A valid 8-block SACK proof over [base, k]: 8 received runs separated by 1-packet holes.
    step = max((k - base + 1) // 8, 2)
    blocks8: list[tuple[int, int, int]] = []
    for b in range(8):
        lo = base + b * step
        hi = min(lo + step - 2, k) if b < 7 else k
        if b == 7:
            lo = max(lo, blocks8[-1][1] + 2)
        ns = packet_nonces(key, piece, range(lo, hi + 1))
        x = 0
        for n in ns:
            x ^= n
        blocks8.append((lo, hi, x))
    ok1, _ = proof_and_nonces(key, piece, req.proof, plan.lo, plan.hi)
    ok8, _ = proof_and_nonces(key, piece, tuple(blocks8), plan.lo, plan.hi)
    if not (ok1 and ok8):
        raise SystemExit("primitives: SACK proofs do not verify")
    app = MemoryApp(cap.objects)
    fetches = [s for s in req.segments if isinstance(s, wire.FetchSeg)]
    rf = ReplayFilter(horizon + skew, 1 << 20)
    head_pack = wire.RESP_HEAD.pack
    chunk = wire.data_chunk(0, cap.objects[b"obj"][: wire.MSS])
    cbytes = encode_delta(child, sealed, parent)
    aes_block = b"\x00" * 16
    g = {
        "seal": seal, "open_untrusted": open_untrusted, "proof_and_nonces": proof_and_nonces,
        "packet_nonces": packet_nonces, "encode_delta": encode_delta, "plan_request": plan_request,
        "decode_request_untrusted": wire.decode_request_untrusted, "Minisocket": Minisocket,
        "EventKind": EventKind, "app": app, "fetches": fetches, "rf": rf, "head_pack": head_pack,
        "chunk": chunk, "cbytes": cbytes, "child": child, "key": key, "ring": ring, "addr": ADDR,
        "sealed": sealed, "now_ms": now_ms, "horizon": horizon, "skew": skew, "conn": conn,
        "epoch": epoch, "piece": piece, "piece_id": piece_id, "ack_key": ack_key, "base": base, "k": k, "proof1": req.proof, "proof8": tuple(blocks8), "lo": plan.lo, "hi": plan.hi,
        "parent": parent, "ranges": ranges, "data": data, "mac": mac, "cap": wire.SLOT_CAPACITY,
        "plan": plan, "now": now, "two": [plan.lo, plan.lo + 1], "hmac": hmac,
        "mackey": key.mac, "msg37": sealed[:FIELDS_LEN] + ADDR, "aes_block": aes_block,
    }  # fmt: skip
    stmts = {
        # asked for
        "seal (HMAC-SHA256, 47 B)": "seal(child, key, addr)",
        "open_untrusted": "open_untrusted(sealed, 0, ring, addr, now_ms, horizon, skew)",
        "proof_and_nonces, 1 block + 1 child": "proof_and_nonces(key, piece, proof1, lo, hi)",
        "proof_and_nonces, 1 block + 2 children": "proof_and_nonces(key, piece, proof1, lo, lo + 1)",
        "proof_and_nonces, 8 blocks + 1 child": "proof_and_nonces(key, piece, proof8, lo, hi)",
        "packet_nonces, 2 children": "packet_nonces(key, piece, two)",
        "piece_id (BLAKE2b, 12 B)": "piece_id(conn, epoch, lo, 3, 100)",
        # the rest of the step, for the breakdown
        "decode_request_untrusted": "decode_request_untrusted(data)",
        "plan_request": "plan_request(parent, ranges, 20)",
        "replay check (no add)": "rf.check([ack_key(conn, epoch, base, k)], now_ms, now_ms)",
        "Minisocket + MemoryApp.handle, 1 slot": (
            "m = Minisocket(EventKind.REQUEST, conn, [], fetches, [cap], now, plan); app.handle(m)"
        ),
        "encode_delta": "encode_delta(child, sealed, parent)",
        "RESP_HEAD.pack + join": "b''.join((head_pack(1, 0x12, 2, 0, lo, 5, 4, 3, 0), cbytes, chunk))",
        # floors
        "floor: hmac.digest sha256 37 B": "hmac.digest(mackey, msg37, 'sha256')",
        "floor: AES-ECB update 1 block": "key.prf_blocks(aes_block)",
        "floor: empty loop iteration": "pass",
    }
    out: dict[str, Any] = {}
    for name, stmt in stmts.items():
        try:
            out[name] = time_stmt(stmt, g, repeat, target_ns)
        except Exception as e:  # an API changed under us: report it, measure the rest
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    parts = [
        "decode_request_untrusted", "open_untrusted", "plan_request", "replay check (no add)",
        "proof_and_nonces, 1 block + 1 child", "Minisocket + MemoryApp.handle, 1 slot",
        "seal (HMAC-SHA256, 47 B)", "encode_delta", "RESP_HEAD.pack + join",
    ]  # fmt: skip
    if all("median_us" in out[p] for p in parts):
        out["sum of the 1-child step's parts (tight loops)"] = {
            "median_us": sum(out[p]["median_us"] for p in parts),
            "min_us": sum(out[p]["min_us"] for p in parts),
            "samples_us": [],
        }
    return out


# --- 3. overhead -----------------------------------------------------------------------------------


def _cont_class(d: bytes) -> str:
    return {0: "none (minimal)", wire.RespFlags.FULL: "full", wire.RespFlags.DELTA: "delta"}[d[2]]


def overhead(cap: Capture, outs_nodelta: list[list[bytes]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for label, outs in (("delta", cap.responses), ("no_delta", outs_nodelta)):
        by: dict[str, list[int]] = {}
        cont: dict[str, list[int]] = {}
        total = pkts = 0
        for i, out in enumerate(outs):
            if cap.tags[i] < 0:
                continue
            for d in out:
                cls = _cont_class(d)
                ov = len(d) - data_bytes(d)
                by.setdefault(cls, []).append(ov)
                cont.setdefault(cls, []).append(ov - wire.RESP_HEAD.size - wire.CHUNK_DATA.size)
                total += ov
                pkts += 1
        res[label] = {
            cls: {
                "packets": len(v),
                "overhead_bytes_median": statistics.median(v),
                "overhead_bytes_min": min(v),
                "overhead_bytes_max": max(v),
                "continuation_bytes_median": statistics.median(cont[cls]),
                "continuation_bytes_max": max(cont[cls]),
            }
            for cls, v in sorted(by.items())
        }
        res[label]["mean_overhead_per_packet"] = total / max(pkts, 1)
    sizes = [len(cap.requests[i][0]) for i in range(len(cap.requests)) if cap.tags[i] >= 0]
    res["request_bytes"] = {
        "median": statistics.median(sizes),
        "min": min(sizes),
        "max": max(sizes),
        "breakdown": {
            "header": wire.REQ_HEAD.size,
            "continuation": SEALED_LEN,
            "sack_proof (1 + 12 per block)": 1 + wire.PROOF_BLOCK.size,
            "segments (count, fetch seg + ucont 'obj', 10 per range)": statistics.median(sizes)
            - wire.REQ_HEAD.size
            - SEALED_LEN
            - 1
            - wire.PROOF_BLOCK.size,
        },
    }
    res["response_header"] = wire.RESP_HEAD.size
    res["data_chunk_header"] = wire.CHUNK_DATA.size
    res["payload_per_packet"] = wire.MSS
    return res


# --- 4. the client ---------------------------------------------------------------------------------


def _client_start(cap: Capture) -> tuple[ClientConnection, list[bytes]]:
    conn = ClientConnection(cap.proto, client_nonce=cap.client_nonce)
    conn.connect(b"obj", 0.0)
    return conn, conn.datagrams_to_send(0.0)


def _client_steady_index(cap: Capture) -> int:
    t = cap.requests[cap.tags.index(0)][1] - SERVER_CLOCK
    return next(j for j, (_, now) in enumerate(cap.client_rx) if now >= t)


def validate_client(cap: Capture) -> None:
    conn, sent = _client_start(cap)
    for d, now in cap.client_rx:
        conn.receive_datagram(d, now)
        sent += conn.datagrams_to_send(now)
    if sent != cap.client_tx:
        raise SystemExit(f"{cap.name}: client replay diverged from the recording")


def time_client(cap: Capture, repeat: int, target_ns: float, overhead_ns: float) -> dict[str, Any]:
    start = _client_steady_index(cap)
    warm, steady = cap.client_rx[:start], cap.client_rx[start:]
    n = len(steady)
    loop_s: list[float] = []
    recv_s: list[float] = []
    send_s: list[float] = []
    requests = 0
    pc = perf_counter_ns
    for _ in range(repeat):
        total = passes = 0
        r_acc = s_acc = 0
        while passes == 0 or total < target_ns:
            # pass A: the whole steady-state loop, one timer pair
            conn, _ = _client_start(cap)
            for d, now in warm:
                conn.receive_datagram(d, now)
                conn.datagrams_to_send(now)
            recv, send = conn.receive_datagram, conn.datagrams_to_send
            before = conn.stats.requests_sent
            gc.collect()
            gc.disable()
            t0 = pc()
            for d, now in steady:
                recv(d, now)
                send(now)
            total += pc() - t0
            gc.enable()
            requests = conn.stats.requests_sent - before
            # pass B: the two calls timed separately
            conn, _ = _client_start(cap)
            for d, now in warm:
                conn.receive_datagram(d, now)
                conn.datagrams_to_send(now)
            recv, send = conn.receive_datagram, conn.datagrams_to_send
            gc.collect()
            gc.disable()
            for d, now in steady:
                t0 = pc()
                recv(d, now)
                t1 = pc()
                send(now)
                t2 = pc()
                r_acc += t1 - t0
                s_acc += t2 - t1
            gc.enable()
            passes += 1
        loop_s.append(total / (n * passes) / 1000)
        recv_s.append((r_acc / (n * passes) - overhead_ns) / 1000)
        send_s.append((s_acc / (n * passes) - overhead_ns) / 1000)
    out = summarize(loop_s)
    out["packets_timed"] = n
    out["requests_sent_while_timed"] = requests
    out["per_request_sent_median_us"] = out["median_us"] * n / max(requests, 1)
    out["receive_datagram"] = summarize(recv_s)
    out["datagrams_to_send"] = summarize(send_s)
    return out


# --- profile ---------------------------------------------------------------------------------------


def profile_server(cap: Capture, passes: int, cache: bool) -> tuple[str, str]:
    engines = [new_engine(cap.objects, cap.proto, delta=True, cache=cache) for _ in range(passes)]
    prof = cProfile.Profile()
    prof.enable()
    for eng in engines:
        step = eng.step
        for data, now in cap.requests:
            step(data, ADDR, now)
    prof.disable()
    texts = []
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats(key).print_stats(15)
        texts.append(buf.getvalue())
    return texts[0], texts[1]


# --- report ----------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version,
        "python_config_args": sysconfig.get_config_var("CONFIG_ARGS"),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "build": build_info(),
    }
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend

        info["cryptography"] = cryptography.__version__
        info["openssl"] = backend.openssl_version_text()
    except Exception:  # informational only
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a run of a few seconds (CI smoke test)")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions per measurement (default 7)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default bench/results/core.json, or core_quick.json with --quick)",
    )
    ap.add_argument(
        "--other",
        metavar="PYTHON",
        help="also run under this interpreter (another build, e.g. .venv-compiled/bin/python); side by side",
    )
    ap.add_argument(
        "--rounds", type=int, default=5, help="with --other: take turns this many times (default 5)"
    )
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # the --other child
    args = ap.parse_args(argv)
    quick = args.quick
    out_path: Path = args.out or RESULTS / ("core_quick.json" if quick else "core.json")
    repeat = args.repeat or (3 if quick else 7)
    size = 600_000 if quick else 6_000_000
    target_ns = (0.01 if quick else 0.25) * 1e9  # per sample, server and client
    prim_target_ns = (0.005 if quick else 0.1) * 1e9

    info = machine_info()
    overhead_ns = timer_overhead_ns(50_000 if quick else 200_000)
    caps = [
        capture("d1", ProtocolConfig(ack_div=1, initial_ssthresh=8), size, seed=1),
        capture("d2", ProtocolConfig(ack_div=2, initial_ssthresh=8), size, seed=2),
    ]
    variants = [("delta", True, False), ("no_delta", False, False)]
    if HAS_CACHE:
        variants += [("delta+cache", True, True), ("no_delta+cache", False, True)]

    nodelta_outs: dict[str, list[list[bytes]]] = {}
    for cap in caps:
        for label, delta, cache in variants:
            outs = validate_server(cap, delta, cache)
            if label == "no_delta":
                nodelta_outs[cap.name] = outs
    for cap in caps:
        validate_client(cap)
    over = {cap.name: overhead(cap, nodelta_outs[cap.name]) for cap in caps}
    rounds = args.rounds if args.other else 1
    own: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for _ in range(rounds):  # with --other, the two builds take turns: both see the same load
        if args.other:
            others.append(run_other(args.other, quick, repeat))
        own.append(
            {
                "server_step": time_servers(caps, variants, repeat, target_ns, overhead_ns),
                "primitives": primitives(caps[0], repeat, prim_target_ns),
                "client": {cap.name: time_client(cap, repeat, target_ns, overhead_ns) for cap in caps},
            }
        )
    timed = merge_rounds(own)
    server, prims, client = timed["server_step"], timed["primitives"], timed["client"]
    prof_cum, prof_tot = profile_server(caps[1], 1 if quick else 5, cache=False)
    prof_cum_d1, _ = profile_server(caps[0], 1 if quick else 5, cache=False)

    result: dict[str, Any] = {
        "machine": info,
        "settings": {
            "quick": quick,
            "repeat": repeat,
            "rounds": rounds,
            "object_bytes": size,
            "target_sample_s": target_ns / 1e9,
            "timer_overhead_ns_subtracted": overhead_ns,
            "engine_has_cache": HAS_CACHE,
            "gc_disabled_while_timing": True,
            "captures": {
                c.name: {
                    "protocol": c.proto._asdict(),
                    "requests": len(c.requests),
                    "timed_requests": {s: c.tags.count(j) for j, s in enumerate(c.scenarios)},
                    "client_packets": len(c.client_rx),
                    "sim_transfer_s": c.done_at,
                }
                for c in caps
            },
        },
        "target_step_us": TARGET_STEP_US,
        "server_step": server,
        "primitives": prims,
        "overhead": over,
        "paper_continuation_bytes": f"{PAPER_CONT_BYTES} + 12m",
        "client": client,
        "profile": {
            "what": "cProfile, d2 capture, delta on, cache off, all requests in order",
            "cumulative": prof_cum,
            "tottime": prof_tot,
            "d1_cumulative": prof_cum_d1,
        },
    }
    if others:
        result["other_build"] = merge_rounds(others)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    out_path.with_name(out_path.stem + "_profile.txt").write_text(
        f"# {result['profile']['what']}\n{prof_cum}\n{prof_tot}\n# d1 capture\n{prof_cum_d1}\n"
    )
    if args.no_report:
        return 0
    print_report(result)
    if "other_build" in result:
        print_builds(result, result["other_build"])
    print(f"\nwrote {out_path}")
    return 0


def merge_rounds(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds: every timed figure's samples pooled and summarized again."""
    out: dict[str, Any] = json.loads(json.dumps(docs[0]))

    def walk(node: dict[str, Any], more: list[dict[str, Any]]) -> None:
        pooled = [x for d in [node, *more] for x in d.get("samples_us", [])]
        if pooled:  # a derived figure (no samples of its own) keeps the first round's value
            shares = [x for d in [node, *more] for x in d.get("cpu_share_samples", [])]
            node.update(summarize(pooled))
            if shares:
                node["cpu_share_samples"] = shares
            if "packets_per_request" in node:
                node["per_packet_median_us"] = node["median_us"] / node["packets_per_request"]
                node["per_packet_min_us"] = node["min_us"] / node["packets_per_request"]
            if "packets_timed" in node:
                sent = max(node["requests_sent_while_timed"], 1)
                node["per_request_sent_median_us"] = node["median_us"] * node["packets_timed"] / sent
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, [d[k] for d in more])

    walk(out, docs[1:])
    return out


def run_other(python: str, quick: bool, repeat: int) -> dict[str, Any]:
    """This benchmark's results under another interpreter (another build of trickles)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "other.json"
        cmd = [python, __file__, "--repeat", str(repeat), "--out", str(out), "--no-report"]
        if quick:
            cmd.append("--quick")
        print(f"running the other build: {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True, timeout=1800)
        other: dict[str, Any] = json.loads(out.read_text())
    other.pop("profile", None)
    return other


def print_builds(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Server step and client per data packet, the two builds side by side: median (min), µs.

    The pure build is the left column when one of the two is pure; the speed-up is left / right,
    of the medians and of the mins (below 1: the right one is slower)."""
    if b["machine"]["build"]["build"] == "pure":
        a, b = b, a
    name_a, name_b = a["machine"]["build"]["build"], b["machine"]["build"]["build"]
    print("\n6. Builds side by side, µs per data packet: median (min); speed-up of the medians (of the mins)")
    print(f"   {'':<28} {name_a:>20} {name_b:>20} {'speed-up':>14}")

    def row(label: str, ea: dict[str, Any], eb: dict[str, Any], n: int) -> None:
        ma, mb, na, nb = ea["median_us"] / n, eb["median_us"] / n, ea["min_us"] / n, eb["min_us"] / n
        cells = f"{f'{ma:.2f} ({na:.2f})':>20} {f'{mb:.2f} ({nb:.2f})':>20}"
        print(f"   {label:<28} {cells} {ma / mb:>6.2f}x ({na / nb:.2f}x)")

    for variant, res in a["server_step"].items():
        for sc, e in res.items():
            if isinstance(e, dict) and sc in b["server_step"].get(variant, {}):
                row(f"server {variant} {sc}", e, b["server_step"][variant][sc], e["packets_per_request"])
    for cname, e in a["client"].items():
        if cname in b["client"]:
            row(f"client {cname}", e, b["client"][cname], 1)


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    s = r["settings"]
    print(
        f"Trickles core benchmark  {m['date']}  Python {m['python'].split()[0]}  {m['platform']}  "
        f"{m['cpu_count']} CPU  {m.get('cpu_model', '')}"
    )
    print(f"build: {m['build']['build']}")
    print(
        f"repeat={s['repeat']}  quick={s['quick']}  timer overhead subtracted "
        f"{s['timer_overhead_ns_subtracted']:.0f} ns  gc off while timing"
    )
    print("\n1. Server step (datagram in -> encoded responses out), µs; median (min) of samples")
    print(f"   target: whole stateless step <= {r['target_step_us']:.0f} µs")
    hdr = f"   {'scenario':<10} {'pkts':>4} {'seals':>5}"
    labels = list(r["server_step"])
    for lab in labels:
        hdr += f" | {lab + ' /req':>22} {'/pkt':>6}"
    print(hdr)
    first = r["server_step"][labels[0]]
    for sc in [k for k in first if isinstance(first[k], dict)]:
        row = f"   {sc:<10} {first[sc]['packets_per_request']:>4} {first[sc]['sealed_per_request']:>5}"
        for lab in labels:
            e = r["server_step"][lab][sc]
            row += f" | {e['median_us']:>12.2f} ({e['min_us']:>6.2f}) {e['per_packet_median_us']:>6.2f}"
        print(row)
    shares = [
        x for v in r["server_step"].values() for e in v.values() if isinstance(e, dict)
        for x in e["cpu_share_samples"]
    ]  # fmt: skip
    print(
        f"   CPU share of wall time while sampling: median {statistics.median(shares):.2f}, "
        f"min {min(shares):.2f} (below 1: the OS ran other work meanwhile; trust the min column then)"
    )
    hits = {lab: v["cache_hit_ratio"] for lab, v in r["server_step"].items() if "cache_hit_ratio" in v}
    if hits:
        print("   cache hit ratio: " + ", ".join(f"{k} {v:.2f}" for k, v in hits.items()))
    print("\n2. Primitives, µs per call: median (min)")
    for name, e in r["primitives"].items():
        if "error" in e:
            print(f"   {name:<48} {e['error']}")
        else:
            print(f"   {name:<48} {e['median_us']:>7.3f} ({e['min_us']:.3f})")
    print("\n3. Protocol overhead per full data packet (bytes; payload 1372)")
    for cname, o in r["overhead"].items():
        for lab in ("delta", "no_delta"):
            for cls, e in o[lab].items():
                if not isinstance(e, dict):
                    continue
                print(
                    f"   {cname} {lab:<8} cont={cls:<15} packets={e['packets']:>5}  overhead "
                    f"{e['overhead_bytes_median']:>4} (min {e['overhead_bytes_min']}, max "
                    f"{e['overhead_bytes_max']})  continuation {e['continuation_bytes_median']}"
                )
            print(f"   {cname} {lab:<8} mean overhead per packet {o[lab]['mean_overhead_per_packet']:.1f}")
        rb = o["request_bytes"]
        print(f"   {cname} request bytes median {rb['median']} (min {rb['min']}, max {rb['max']})")
    o = next(iter(r["overhead"].values()))
    print(
        f"   header {o['response_header']} + continuation + chunk header {o['data_chunk_header']};"
        f" paper continuation {r['paper_continuation_bytes']} bytes"
    )
    print("\n4. Client: receive_datagram + datagrams_to_send per received packet, µs")
    for cname, e in r["client"].items():
        print(
            f"   {cname}: {e['median_us']:.2f} ({e['min_us']:.2f}) per packet, "
            f"{e['per_request_sent_median_us']:.2f} per request sent; receive_datagram "
            f"{e['receive_datagram']['median_us']:.2f}, datagrams_to_send "
            f"{e['datagrams_to_send']['median_us']:.2f}"
        )
    print("\n5. Profile (" + r["profile"]["what"] + "), top 15 by cumulative time")
    print(r["profile"]["cumulative"])


if __name__ == "__main__":
    raise SystemExit(main())
