"""``trickles spray``: a stateless per-packet UDP sprayer in front of Trickles replicas.

This is the paper's NAT (section 6.3): clients talk to one public address; every datagram goes to
some replica, chosen per packet; every reply comes back out of the same public address. Nothing is
kept per flow: the client's address travels to the replica in a PROXY v2 header
(:mod:`trickles.server.proxy`) and comes back echoed in front of each reply, which tells the sprayer
where to send it.

Policies:

* ``round-robin``: the next healthy replica for every datagram (the paper's setup). Load spreads
  evenly, but a replayed datagram meets another replica's replay filter each time: it can be
  answered once per replica within the freshness horizon.
* ``mac-hash``: the replica is chosen by a keyed hash of the request's continuation MAC (of the
  client nonce for a SYN). MACs are uniform, so load still spreads; a replay, a REGEN and every RTO
  attempt of one continuation meet the same replica, whose filter answers it once. The hash is keyed
  so that nobody can aim forged datagrams at one replica.

Health: each worker probes every replica (a PROXY LOCAL datagram) every ``interval`` seconds; one
that has not answered for ``timeout`` seconds leaves the rotation and returns with its next answer.
If no replica answers, datagrams go to all of them by policy (probes may be what is lost).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import trio

from .keyfile import KeyFileError, load_ring
from .proxy import (
    CMD_LOCAL,
    FAM_UDP4,
    HEAD,
    PROBE_MAGIC,
    SIG,
    BadHeader,
    decode_untrusted,
    encode_local,
    encode_proxy,
    pack_addr,
    unpack_addr,
)
from .udp import SOCKBUF, open_udp_socket
from .workers import run_command, worker_entry

if TYPE_CHECKING:
    from .metrics import Health

log = logging.getLogger("trickles.spray")

LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
_V4_REPLY = SIG + bytes((0x21, FAM_UDP4))
_CONT_TYPES = frozenset({2, 3, 4, 5})  # REQUEST, RTO, CLOSE, REGEN: body starts with the continuation
_MAC_AT = slice(8 + 31, 8 + 47)  # the continuation's MAC (docs/PROTOCOL.md section 4.1)
_SYN_NONCE_AT = slice(8, 16)


class Policy(StrEnum):
    ROUND_ROBIN = "round-robin"
    MAC_HASH = "mac-hash"


@dataclass
class SprayStats:
    """Plain counters of one sprayer worker (metrics and ``cluster status`` read them)."""

    from_clients: int = 0
    to_replicas: int = 0
    from_replicas: int = 0
    to_clients: int = 0
    bad_replies: int = 0
    """Datagrams on the replica side from an unknown sender or without a valid header."""
    looped: int = 0
    """Datagrams on the public side from a replica's address (never relayed back in)."""
    send_errors: int = 0
    probes_sent: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    forwarded: list[int] = field(default_factory=list)
    """Datagrams sent to each replica, in --backend order (the lists below too)."""
    forwarded_bytes: list[int] = field(default_factory=list)
    """Bytes of client datagrams sent to each replica (without the PROXY header)."""
    replies: list[int] = field(default_factory=list)
    """Datagrams each replica sent back to clients through the sprayer."""
    reply_bytes: list[int] = field(default_factory=list)
    healthy: list[bool] = field(default_factory=list)
    probe_rtt: list[float] = field(default_factory=list)
    """Each replica's latest health-check round trip in seconds (NaN until it answers)."""
    probe_rtt_sum: list[float] = field(default_factory=list)
    probe_answers: list[int] = field(default_factory=list)

    @classmethod
    def for_backends(cls, n: int) -> SprayStats:
        return cls(
            forwarded=[0] * n,
            forwarded_bytes=[0] * n,
            replies=[0] * n,
            reply_bytes=[0] * n,
            healthy=[False] * n,
            probe_rtt=[math.nan] * n,
            probe_rtt_sum=[0.0] * n,
            probe_answers=[0] * n,
        )


class Picker:
    """Which replica gets a datagram: pure, given the health marks."""

    def __init__(self, n: int, policy: Policy, hash_key: bytes) -> None:
        self.n, self.policy, self._key = n, policy, hash_key
        self._rr = 0
        self.set_up(list(range(n)))

    def set_up(self, up: list[int]) -> None:
        """The replicas in rotation (all of them if none is)."""
        self.up = up or list(range(self.n))
        self._up_set = frozenset(self.up)

    def pick(self, data: bytes) -> int:
        up = self.up
        if self.policy is Policy.ROUND_ROBIN:
            self._rr = (self._rr + 1) % len(up)
            return up[self._rr]
        h = int.from_bytes(hashlib.blake2b(_hash_field(data), key=self._key, digest_size=8).digest())
        i = h % self.n
        return i if i in self._up_set else up[h % len(up)]


def _hash_field(data: bytes) -> bytes:
    if len(data) >= _MAC_AT.stop and data[0] == 1 and data[1] in _CONT_TYPES:
        return data[_MAC_AT]
    if len(data) >= _SYN_NONCE_AT.stop and data[0] == 1 and data[1] == 1:
        return data[_SYN_NONCE_AT]
    return data[:64]


@dataclass(frozen=True)
class SprayOptions:
    listen: tuple[str, int]
    backends: tuple[tuple[str, int], ...]
    policy: Policy
    hash_key: bytes
    interval: float = 0.1
    timeout: float = 0.3
    workers: int = 1
    metrics: tuple[str, int] | None = None
    """Worker i serves /metrics and /healthz on this port + i."""


class Sprayer:
    """One worker: the public socket, the replica-side socket, and the health checker."""

    def __init__(self, opts: SprayOptions, worker: int = 0) -> None:
        self.opts, self.worker = opts, worker
        self.pub = open_udp_socket(*opts.listen, reuse_port=opts.workers > 1)
        fam = self.pub.family
        bhost = "::" if any(":" in h for h, _ in opts.backends) else "0.0.0.0"
        self.back = socket.socket(socket.AF_INET6 if ":" in bhost else socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.back.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
            except OSError:
                pass
        self.back.bind((bhost, 0))
        self.back.setblocking(False)
        self.backends = [self._resolve(b) for b in opts.backends]
        self.index = {b: i for i, b in enumerate(self.backends)}
        self.public = pack_addr(self.pub.getsockname())
        self._v6_out = fam == socket.AF_INET6
        self.picker = Picker(len(self.backends), opts.policy, opts.hash_key)
        self.stats = SprayStats.for_backends(len(self.backends))
        self._last_pong = [-math.inf] * len(self.backends)
        self._probe_key = secrets.token_bytes(16)
        self._round, self._round_sent = 0, 0.0

    def _resolve(self, hp: tuple[str, int]) -> tuple[str, int]:
        """The backend's address as recvfrom on the replica-side socket will report it."""
        fam = self.back.family
        info = socket.getaddrinfo(hp[0], hp[1], fam if fam == socket.AF_INET else 0, socket.SOCK_DGRAM)
        addr = info[0][4]
        host = str(addr[0])
        if fam == socket.AF_INET6 and "." in host:
            host = "::ffff:" + host
        return host, int(addr[1])

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._clients_to_replicas)
            nursery.start_soon(self._replicas_to_clients)
            nursery.start_soon(self._health)
            task_status.started()

    def close(self) -> None:
        self.pub.close()
        self.back.close()

    def status(self) -> dict[str, Any]:
        st = self.stats
        return {
            "role": "sprayer",
            "pid": os.getpid(),
            "worker": self.worker,
            "from_clients": st.from_clients,
            "to_clients": st.to_clients,
            "forwarded": st.forwarded,
            "healthy": st.healthy,
            "busy_seconds": round(st.busy_seconds, 6),
        }

    async def _clients_to_replicas(self) -> None:
        pub, st, backs = self.pub, self.stats, self.backends
        recvfrom, sendmsg, pick, index = pub.recvfrom, self.back.sendmsg, self.picker.pick, self.index
        heads: dict[Any, bytes] = {}
        perf = time.perf_counter
        while True:
            await trio.lowlevel.wait_readable(pub)
            t0 = perf()
            st.batches += 1
            for _ in range(256):
                try:
                    data, addr = recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                st.from_clients += 1
                if data.startswith(SIG) and addr[0] in LOOPBACK:
                    self._answer_status(data, addr)
                    continue
                head = heads.get(addr)
                if head is None:
                    if addr in index:
                        st.looped += 1
                        continue
                    if len(heads) > 4096:
                        heads.clear()
                    try:
                        head = heads[addr] = encode_proxy(pack_addr(addr), self.public)
                    except (OSError, ValueError):
                        continue
                i = pick(data)
                try:
                    sendmsg((head, data), (), 0, backs[i])
                    st.to_replicas += 1
                    st.forwarded[i] += 1
                    st.forwarded_bytes[i] += len(data)
                except OSError:  # full buffer or an unreachable replica: a lost packet
                    st.send_errors += 1
            st.busy_seconds += perf() - t0
            await trio.lowlevel.checkpoint()

    async def _replicas_to_clients(self) -> None:
        back, st, index = self.back, self.stats, self.index
        recvfrom, sendto = back.recvfrom, self.pub.sendto
        clients: dict[bytes, tuple[str, int]] = {}
        perf = time.perf_counter
        while True:
            await trio.lowlevel.wait_readable(back)
            t0 = perf()
            for _ in range(256):
                try:
                    data, addr = recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                st.from_replicas += 1
                i = index.get(addr)
                if i is None:
                    st.bad_replies += 1
                    continue
                if data.startswith(_V4_REPLY) and len(data) >= 28:  # fast path: UDP over IPv4
                    cab, off = data[16:20] + data[24:26], 16 + int.from_bytes(data[14:16])
                else:
                    try:
                        d = decode_untrusted(data)
                    except BadHeader:
                        st.bad_replies += 1
                        continue
                    if d.local:
                        self._pong(i, data[d.offset :])
                        continue
                    if not d.reply_head:
                        st.bad_replies += 1
                        continue
                    cab, off = d.client, d.offset
                dest = clients.get(cab)
                if dest is None:
                    if len(clients) > 4096:
                        clients.clear()
                    dest = clients[cab] = self._dest(cab)
                try:
                    sendto(data[off:], dest)
                    st.to_clients += 1
                    st.replies[i] += 1
                    st.reply_bytes[i] += len(data) - off
                except OSError:
                    st.send_errors += 1
            st.busy_seconds += perf() - t0
            await trio.lowlevel.checkpoint()

    def _dest(self, cab: bytes) -> tuple[str, int]:
        host, port = unpack_addr(cab)
        if self._v6_out and "." in host:
            host = "::ffff:" + host
        return host, port

    def _token(self, n: int) -> bytes:
        """A probe's 8 bytes: its round number and a MAC of it (nobody else can fake an answer)."""
        seq = (n & 0xFFFFFFFF).to_bytes(4)
        return seq + hashlib.blake2b(seq, key=self._probe_key, digest_size=4).digest()

    def _pong(self, i: int, payload: bytes) -> None:
        token = payload[len(PROBE_MAGIC) : len(PROBE_MAGIC) + 8]
        n = int.from_bytes(token[:4])
        if len(token) != 8 or token != self._token(n):
            self.stats.bad_replies += 1
            return
        now = time.monotonic()
        self._last_pong[i] = now
        st = self.stats
        if n == self._round & 0xFFFFFFFF:  # an answer to an older round has no send time kept
            rtt = now - self._round_sent
            st.probe_rtt[i] = rtt
            st.probe_rtt_sum[i] += rtt
            st.probe_answers[i] += 1
        if not st.healthy[i]:
            self._mark()

    def _mark(self) -> None:
        now = time.monotonic()
        healthy = [now - t <= self.opts.timeout for t in self._last_pong]
        if healthy != self.stats.healthy:
            for i, (was, now_up) in enumerate(zip(self.stats.healthy, healthy, strict=True)):
                if was != now_up:
                    log.info("replica %s:%d %s", *self.opts.backends[i], "up" if now_up else "down")
            self.stats.healthy = healthy
            self.picker.set_up([i for i, h in enumerate(healthy) if h])

    async def _health(self) -> None:
        while True:
            self._round += 1
            self._round_sent = time.monotonic()
            probe = encode_local(PROBE_MAGIC + self._token(self._round))
            for b in self.backends:
                try:
                    self.back.sendto(probe, b)
                    self.stats.probes_sent += 1
                except OSError:
                    pass
            await trio.sleep(self.opts.interval)
            self._mark()

    def _answer_status(self, data: bytes, addr: Any) -> None:
        _, cmd, _, length = HEAD.unpack_from(data) if len(data) >= HEAD.size else (b"", 0, 0, 0)
        probe = data[HEAD.size + length : HEAD.size + length + len(PROBE_MAGIC) + 8]
        if cmd != CMD_LOCAL or not probe.startswith(PROBE_MAGIC):
            return
        body = json.dumps(self.status(), separators=(",", ":")).encode()[:512]
        try:
            self.pub.sendto(encode_local(probe + body), addr)
        except OSError:
            pass


def start_metrics(sp: Sprayer) -> Health:
    """Serve this worker's /metrics and /healthz (on the --metrics port + worker); the Health to
    beat. A port that cannot be bound is a MetricsBindError."""
    from .cli import MetricsBindError
    from .metrics import Health, SprayCollector, serve_metrics, standard_collectors

    assert sp.opts.metrics is not None
    health = Health(f"spray[{sp.worker}]")
    addr = (sp.opts.metrics[0], sp.opts.metrics[1] + sp.worker)
    names = [f"{h}:{p}" for h, p in sp.opts.backends]
    collectors = [SprayCollector(sp.stats, names, sp.worker), *standard_collectors("spray")]
    try:
        serve_metrics(addr, collectors, health)
    except OSError as e:
        sp.close()
        raise MetricsBindError(addr, e) from None
    return health


async def run_worker(opts: SprayOptions, worker: int) -> None:
    sp = Sprayer(opts, worker)
    health = start_metrics(sp) if opts.metrics is not None else None
    log.info(
        "sprayer %d on udp %s:%d -> %s (%s)",
        worker,
        *opts.listen,
        " ".join(f"{h}:{p}" for h, p in opts.backends),
        opts.policy.value,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sp.serve)
            if health is not None:
                from .metrics import heartbeat

                nursery.start_soon(heartbeat, health)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for sig in signals:
                    if sig == signal.SIGHUP:  # rotate-key signals every process; the hash key stays
                        log.info("sprayer %d: SIGHUP: nothing to reload", worker)
                        continue
                    nursery.cancel_scope.cancel()
                    break
    finally:
        sp.close()


def _worker_main(opts: SprayOptions, worker: int) -> None:
    worker_entry(run_worker, opts, worker, "trickles-spray")


def add_spray_parser(sub: Any) -> None:
    p = sub.add_parser("spray", help="stateless per-packet UDP sprayer in front of replicas")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="public UDP address")
    p.add_argument("--backend", action="append", required=True, metavar="HOST:PORT", help="a replica")
    p.add_argument("--policy", choices=[x.value for x in Policy], default=Policy.ROUND_ROBIN.value)
    p.add_argument("--workers", type=int, default=1, metavar="N")
    p.add_argument("--key-file", metavar="F", help="cluster key (keys the mac-hash policy)")
    p.add_argument("--health-interval", type=float, default=0.1, metavar="S")
    p.add_argument("--health-timeout", type=float, default=0.3, metavar="S")
    p.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics and /healthz here (worker i: PORT+i)"
    )


def options_from(args: argparse.Namespace) -> SprayOptions:
    from .cli import UsageError, parse_hostport

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if not 0 < args.health_interval < args.health_timeout:
        raise UsageError("need 0 < --health-interval < --health-timeout")
    if args.key_file:
        try:
            hash_key = load_ring(args.key_file).current.derive(b"spray mac-hash")
        except KeyFileError as e:
            raise UsageError(str(e)) from None
    else:
        hash_key = secrets.token_bytes(32)
    metrics = parse_hostport(args.metrics, "127.0.0.1") if args.metrics else None
    if metrics is not None and metrics[1] + args.workers - 1 > 65535:
        raise UsageError(f"--metrics port {metrics[1]} + {args.workers} workers exceeds 65535")
    return SprayOptions(
        parse_hostport(args.listen),
        tuple(parse_hostport(b, "127.0.0.1") for b in args.backend),
        Policy(args.policy),
        hash_key,
        args.health_interval,
        args.health_timeout,
        args.workers,
        metrics,
    )


def run_spray(args: argparse.Namespace) -> int:
    opts = options_from(args)
    where = f"spray on {opts.listen[0]}:{opts.listen[1]}"
    return run_command(run_worker, _worker_main, opts, opts.workers, where)


def spread_packets(sock: socket.socket, n: int) -> None:
    """Make the kernel hand each datagram to a random one of the ``n`` SO_REUSEPORT sockets bound
    with ``sock`` (a classic BPF program: ``return random() % n``) instead of hashing the 4-tuple.

    This is per-packet spraying across local workers, as ``trickles spray`` does across hosts.
    """
    skf_ad_random = -0x1000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM
    ld_w_abs, alu_mod_k, ret_a = 0x20, 0x94, 0x16
    prog = [(ld_w_abs, 0, 0, skf_ad_random & 0xFFFFFFFF), (alu_mod_k, 0, 0, n), (ret_a, 0, 0, 0)]
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


SO_ATTACH_REUSEPORT_CBPF = 51
