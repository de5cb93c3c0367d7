"""``trickles serve DIR --listen HOST:PORT``: the Trickles file server (UDP) with its TCP fallback;
also ``keygen``, ``gateway``, ``spray`` (:mod:`.spray`) and ``cluster`` (:mod:`.cluster`).

Exit codes: 0 clean shutdown, 2 bad command line or unusable key file, 1 runtime failure (e.g. the
port is taken). SIGHUP reloads ``--key-file`` (a bad file keeps the old keys).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trickles import BUILDS, build_info
from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey

from .keyfile import KeyFileError, fresh_ring, load_ring, write_keys
from .link import add_link_command
from .proxy import ReplicaProxy, status_of, trusted_hosts
from .spray import spread_packets
from .tcp import HEAD_TIMEOUT, MAX_CONNS, serve_tcp
from .udp import UdpStats, open_udp_socket, serve_udp
from .workers import run_command, worker_entry

if TYPE_CHECKING:
    from trickles.client.allowlist import Allowlist

log = logging.getLogger("trickles.server")


class UsageError(Exception):
    """A bad command line or configuration (exit 2)."""


class MetricsBindError(Exception):
    def __init__(self, addr: tuple[str, int], err: OSError) -> None:
        super().__init__(f"cannot serve metrics on {addr[0]}:{addr[1]}: {err.strerror or err}")


def parse_hostport(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = default_host, value
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"bad address {value!r}: expected HOST:PORT")
    return host, int(port)


def load_keys(path: str | None) -> tuple[list[tuple[int, bytes]], str]:
    """The key file's (id, secret) pairs, current first, or a fresh key if no file is given."""
    if path is None:
        ring = fresh_ring()
        return [(ring.current.key_id, ring.current.master)], (
            "generated a fresh key (restarts and replicas need --key-file)"
        )
    try:
        ring = load_ring(path)
    except KeyFileError as e:
        raise UsageError(str(e)) from None
    keys = [(k.key_id, k.master) for k in (ring.current, ring.previous) if k is not None]
    return keys, f"keys {list(ring.key_ids)} loaded from {path}"


def ring_of(keys: list[tuple[int, bytes]]) -> KeyRing:
    sk = [ServerKey(kid, master) for kid, master in keys]
    return KeyRing(sk[0], sk[1] if len(sk) > 1 else None)


def reload_keys(ring: KeyRing, path: str | None, who: str) -> None:
    """SIGHUP: take the key file's keys into ``ring``; a bad file keeps the old keys (logged)."""
    if path is None:
        log.warning("%s: SIGHUP without --key-file: nothing to reload", who)
        return
    try:
        ring.replace(load_ring(path))
    except (KeyFileError, ValueError) as e:
        log.error("%s: key reload failed, keeping keys %s: %s", who, list(ring.key_ids), e)
        return
    log.info("%s: reloaded %s, keys %s", who, path, list(ring.key_ids))


@dataclass
class Options:
    root: str
    host: str
    port: int
    workers: int
    keys: list[tuple[int, bytes]]
    cache: bool
    delta: bool
    tcp: bool
    metrics: tuple[str, int] | None
    listing: bool
    tcp_max_conns: int = MAX_CONNS
    tcp_head_timeout: float = HEAD_TIMEOUT
    key_file: str | None = None
    trust_proxy: tuple[str, ...] = ()
    spread: bool = False
    watermark: str | None = None  # directory of JPEGs served marked per client under /wm/
    gso: bool = True  # UDP segmentation offload where the kernel has it


def build_engine(opts: Options) -> tuple[ServerEngine, StaticHttpApp, StaticSite]:
    ring = ring_of(opts.keys)
    site: StaticSite
    if opts.watermark is not None:
        from trickles.apps.watermark.site import MountedSite, WatermarkSite

        site = MountedSite(opts.root, WatermarkSite(opts.watermark, ring), listing=opts.listing)
    else:
        site = StaticSite(opts.root, listing=opts.listing)
    app = StaticHttpApp(site, ring)
    cfg = ServerConfig(cache_size=65536 if opts.cache else 0, delta=opts.delta)
    return ServerEngine(ring, app, cfg), app, site


async def run_worker(
    opts: Options, worker: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    engine, app, site = build_engine(opts)
    sock = open_udp_socket(opts.host, opts.port, reuse_port=opts.workers > 1)
    stats = UdpStats()
    health = None
    if opts.metrics is not None:  # before the nursery: a bind error is then a plain exception
        from .metrics import Health, heartbeat, serve_metrics, server_collectors

        health = Health(f"serve[{worker}]")
        addr = (opts.metrics[0], opts.metrics[1] + worker)  # worker i on PORT+i
        try:
            serve_metrics(addr, server_collectors(engine, app, site, stats, worker), health)
        except OSError as e:
            sock.close()
            raise MetricsBindError(addr, e) from None
    if opts.spread:
        spread_packets(sock, opts.workers)
    proxy = None
    if opts.trust_proxy:

        def status() -> dict[str, object]:
            st = status_of(stats, role="replica", pid=os.getpid(), worker=worker)
            return st | {"dropped": engine.stats.dropped, "keys": list(engine.ring.key_ids)}

        proxy = ReplicaProxy(opts.trust_proxy, status)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(serve_udp, engine, sock, stats=stats, proxy=proxy, gso=opts.gso)
        )
        if opts.tcp and worker == 0:  # one TCP listener; UDP workers share the port via SO_REUSEPORT
            serve = functools.partial(
                serve_tcp,
                site,
                opts.host,
                opts.port,
                max_conns=opts.tcp_max_conns,
                head_timeout=opts.tcp_head_timeout,
            )
            await nursery.start(serve)
        if health is not None:
            nursery.start_soon(heartbeat, health)
        log.info(
            "worker %d serving %s on udp%s %s:%d",
            worker,
            opts.root,
            "+tcp" if opts.tcp else "",
            opts.host,
            opts.port,
        )
        task_status.started()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for sig in signals:
                if sig == signal.SIGHUP:
                    reload_keys(engine.ring, opts.key_file, f"worker {worker}")
                    continue
                log.info("worker %d: %s, shutting down", worker, signal.Signals(sig).name)
                nursery.cancel_scope.cancel()
                break
    sock.close()


def _worker_main(opts: Options, worker: int) -> None:
    worker_entry(run_worker, opts, worker, "trickles")


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="trickles", description="Trickles stateless file server")
    info = build_info()
    version = f"trickles {info['version']} ({BUILDS[info['build']]})"
    p.add_argument("--version", action="version", version=version)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve a directory over Trickles (UDP) and HTTP (TCP)")
    s.add_argument("root", metavar="DIR")
    s.add_argument("--listen", default="0.0.0.0:8080", metavar="HOST:PORT")
    s.add_argument("--workers", type=int, default=1, metavar="N")
    s.add_argument("--key-file", metavar="F")
    s.add_argument("--no-cache", action="store_true", help="turn off the soft-state continuation cache")
    s.add_argument("--no-delta", action="store_true", help="send full continuations (no delta encoding)")
    s.add_argument(
        "--no-gso", action="store_true", help="one sendto per datagram (no UDP segmentation offload)"
    )
    s.add_argument("--no-tcp", action="store_true", help="no TCP fallback listener")
    s.add_argument("--no-listing", action="store_true", help="403 for directories without index.html")
    s.add_argument(
        "--tcp-max-conns",
        type=int,
        default=MAX_CONNS,
        metavar="N",
        help=f"TCP connections served at once; more are closed at accept ({MAX_CONNS})",
    )
    s.add_argument(
        "--tcp-head-timeout",
        type=float,
        default=HEAD_TIMEOUT,
        metavar="S",
        help=f"seconds a TCP client has to send a whole request ({HEAD_TIMEOUT:g})",
    )
    s.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    s.add_argument("--watermark", metavar="DIR", help="serve DIR's JPEGs under /wm/, marked per client")
    s.add_argument(
        "--trust-proxy",
        action="append",
        default=[],
        metavar="ADDR",
        help="honour PROXY headers (client addresses) from this sprayer IP; repeatable",
    )
    s.add_argument(
        "--spread-packets",
        action="store_true",
        help="with --workers: any worker takes any datagram (random), not one worker per client",
    )
    k = sub.add_parser("keygen", help="write a fresh master secret (hex) for --key-file")
    k.add_argument("-o", "--output", metavar="F", help="write it to F, mode 0600 (default: stdout)")
    g = sub.add_parser("gateway", help="local HTTP proxy (TCP) that carries requests over Trickles")
    g.add_argument("--listen", default="127.0.0.1:8118", metavar="HOST:PORT", help="loopback only by default")
    g.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a destination to forward to (repeatable): a name, an address or network, or * for any "
        "public address; at least one is required",
    )
    g.add_argument("--allow-remote", action="store_true", help="let --listen be a non-loopback address")
    g.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics and /healthz here")
    add_link_command(sub)
    w = sub.add_parser("watermark", help="watermark tools: `trickles watermark detect FILE --key-file F`")
    w.add_argument("rest", nargs=argparse.REMAINDER)
    from . import top

    top.add_parser(sub)
    from .cluster import add_cluster_parser
    from .spray import add_spray_parser

    add_spray_parser(sub)
    add_cluster_parser(sub)
    args = p.parse_args(argv)
    if args.cmd == "link":
        raise _Link(args)
    if args.cmd == "watermark":
        raise _Watermark(args.rest)
    if args.cmd == "keygen":
        raise _Keygen(args.output)
    if args.cmd == "gateway":
        raise _gateway_options(args)
    if args.cmd == "top":
        raise _Top(args)
    if args.cmd in ("spray", "cluster"):
        raise _Delegate(args)
    if not os.path.isdir(args.root):
        raise UsageError(f"{args.root}: not a directory")
    if args.watermark is not None and not os.path.isdir(args.watermark):
        raise UsageError(f"--watermark {args.watermark}: not a directory")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.tcp_max_conns < 1:
        raise UsageError("--tcp-max-conns must be at least 1")
    if not 0 < args.tcp_head_timeout < float("inf"):
        raise UsageError("--tcp-head-timeout must be a positive number of seconds")
    host, port = parse_hostport(args.listen)
    keys, how = load_keys(args.key_file)
    log.info("%s", how)
    metrics = parse_hostport(args.metrics, "127.0.0.1") if args.metrics else None
    if metrics is not None and metrics[1] + args.workers - 1 > 65535:
        raise UsageError(f"--metrics port {metrics[1]} + {args.workers} workers exceeds 65535")
    try:
        trusted = tuple(sorted(trusted_hosts(args.trust_proxy)))
    except ValueError as e:
        raise UsageError(f"--trust-proxy: {e} (give an IP address)") from None
    return Options(
        args.root,
        host,
        port,
        args.workers,
        keys,
        not args.no_cache,
        not args.no_delta,
        not args.no_tcp,
        metrics,
        not args.no_listing,
        args.tcp_max_conns,
        args.tcp_head_timeout,
        args.key_file,
        trusted,
        args.spread_packets,
        args.watermark,
        not args.no_gso,
    )


class _Delegate(Exception):
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns


class _Gateway(Exception):
    def __init__(
        self, host: str, port: int, allow: Allowlist, allow_remote: bool, metrics: tuple[str, int] | None
    ) -> None:
        self.host, self.port, self.metrics = host, port, metrics
        self.allow, self.allow_remote = allow, allow_remote


def _gateway_options(args: argparse.Namespace) -> _Gateway:
    """The gateway's command line, checked: a loopback listen address (or --allow-remote) and a
    non-empty allowlist."""
    from trickles.client.allowlist import Allowlist, Refused, check_listen  # the server needs none of it

    host, port = parse_hostport(args.listen, "127.0.0.1")
    try:
        check_listen(host, args.allow_remote)
    except Refused as e:
        raise UsageError(f"gateway: {e.message}") from None
    if not args.allow:
        raise UsageError(
            "gateway: no destination allowed; give --allow HOST[:PORT] for each server to reach "
            "(repeatable), or --allow '*' for any public address"
        )
    try:
        allow = Allowlist.parse(args.allow)
    except ValueError as e:
        raise UsageError(f"gateway: {e}") from None
    metrics = parse_hostport(args.metrics, "127.0.0.1") if args.metrics else None
    return _Gateway(host, port, allow, args.allow_remote, metrics)


class _Link(Exception):
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns


class _Watermark(Exception):
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv


class _Top(Exception):
    def __init__(self, args: argparse.Namespace) -> None:
        self.ns = args


async def _run_gateway(g: _Gateway) -> None:
    """The gateway, plus its metrics server (process, build, /healthz) when asked for."""
    from trickles.client.gateway import serve_gateway

    if g.metrics is None:
        await serve_gateway(g.host, g.port, allow=g.allow, allow_remote=g.allow_remote)
        return
    from .metrics import Health, heartbeat, serve_metrics, standard_collectors

    health = Health("gateway")
    try:
        serve_metrics(g.metrics, standard_collectors("gateway"), health)
    except OSError as e:
        raise MetricsBindError(g.metrics, e) from None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat, health)
        await serve_gateway(g.host, g.port, allow=g.allow, allow_remote=g.allow_remote)
        nursery.cancel_scope.cancel()


class _Keygen(Exception):
    def __init__(self, output: str | None) -> None:
        self.output = output


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s trickles %(message)s", stream=sys.stderr)
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except _Keygen as k:
        master = secrets.token_bytes(32)
        if not k.output:
            print(master.hex())
            return 0
        try:
            write_keys(k.output, [(1, master)], bare=True)
        except OSError as e:
            print(f"trickles: cannot write key file {k.output}: {e.strerror}", file=sys.stderr)
            return 1
        return 0
    except _Delegate as d:
        from .cluster import run_cluster
        from .spray import run_spray

        try:
            return run_spray(d.ns) if d.ns.cmd == "spray" else run_cluster(d.ns)
        except (UsageError, KeyFileError) as e:
            print(f"trickles: {e}", file=sys.stderr)
            return 2
    except _Top as t:
        from . import top

        return top.run(t.ns)
    except _Gateway as g:
        try:
            trio.run(_run_gateway, g)
        except KeyboardInterrupt:
            return 0
        except MetricsBindError as e:
            print(f"trickles: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"trickles: cannot listen on {g.host}:{g.port}: {e.strerror}", file=sys.stderr)
            return 1
        return 0
    except _Watermark as w:
        if w.argv[:1] != ["detect"]:
            print("trickles: usage: trickles watermark detect FILE --key-file F", file=sys.stderr)
            return 2
        from trickles.apps.watermark.detect import main as detect_main

        return detect_main(w.argv[1:])
    except _Link as lk:
        from .link import run_cli

        return run_cli(lk.ns)
    except UsageError as e:
        print(f"trickles: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse already printed the message
        return int(e.code or 0)
    return run_command(run_worker, _worker_main, opts, opts.workers, f"serve on {opts.host}:{opts.port}")


if __name__ == "__main__":
    sys.exit(main())
