"""``trickles serve DIR --listen HOST:PORT``: the Trickles file server (UDP) with its TCP fallback.

Exit codes: 0 clean shutdown, 2 bad command line, 1 runtime failure (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing as mp
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from trickles import build_info
from trickles.apps.httpapp import StaticHttpApp
from trickles.apps.static import StaticSite
from trickles.engine import ServerConfig, ServerEngine
from trickles.keys import KeyRing, ServerKey

from .udp import UdpStats, open_udp_socket, serve_udp

log = logging.getLogger("trickles.server")


class UsageError(Exception):
    pass


def parse_hostport(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = default_host, value
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"bad address {value!r}: expected HOST:PORT")
    return host, int(port)


def load_key(path: str | None) -> tuple[bytes, str]:
    """The master secret (hex in a file, 32 bytes), or a fresh one if no file is given."""
    if path is None:
        return secrets.token_bytes(32), "generated a fresh key (restarts and replicas need --key-file)"
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read key file {path}: {e.strerror}") from e
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"key file {path} must hold hex (e.g. from `trickles keygen`)") from None
    if len(key) < 16:
        raise UsageError(f"key in {path} is too short ({len(key)} bytes, need at least 16)")
    return key, f"key loaded from {path}"


@dataclass
class Options:
    root: str
    host: str
    port: int
    workers: int
    master: bytes
    cache: bool
    delta: bool
    tcp: bool
    metrics: tuple[str, int] | None
    listing: bool


def build_engine(opts: Options) -> tuple[ServerEngine, StaticHttpApp, StaticSite]:
    ring = KeyRing(ServerKey(1, opts.master))
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
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_udp, engine, sock, stats=stats))
        if opts.tcp and worker == 0:  # one TCP listener; UDP workers share the port via SO_REUSEPORT
            from .tcp import serve_tcp

            await nursery.start(serve_tcp, site, opts.host, opts.port)
        if opts.metrics is not None:
            from .metrics import start_metrics

            start_metrics(opts.metrics, engine, app, stats, worker)
        log.info(
            "worker %d serving %s on udp%s %s:%d",
            worker,
            opts.root,
            "+tcp" if opts.tcp else "",
            opts.host,
            opts.port,
        )
        task_status.started()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                log.info("worker %d: %s, shutting down", worker, signal.Signals(sig).name)
                nursery.cancel_scope.cancel()
                break
    sock.close()


def _worker_main(opts: Options, worker: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s trickles[{worker}] %(message)s")
    trio.run(run_worker, opts, worker)


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="trickles", description="Trickles stateless file server")
    info = build_info()
    p.add_argument("--version", action="version", version=f"trickles {info['version']} ({info['build']})")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve a directory over Trickles (UDP) and HTTP (TCP)")
    s.add_argument("root", metavar="DIR")
    s.add_argument("--listen", default="0.0.0.0:8080", metavar="HOST:PORT")
    s.add_argument("--workers", type=int, default=1, metavar="N")
    s.add_argument("--key-file", metavar="F")
    s.add_argument("--no-cache", action="store_true", help="turn off the soft-state continuation cache")
    s.add_argument("--no-delta", action="store_true", help="send full continuations (no delta encoding)")
    s.add_argument("--no-tcp", action="store_true", help="no TCP fallback listener")
    s.add_argument("--no-listing", action="store_true", help="403 for directories without index.html")
    s.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    k = sub.add_parser("keygen", help="print a fresh master secret (hex) for --key-file")
    k.add_argument("-o", "--output", metavar="F")
    g = sub.add_parser("gateway", help="local HTTP proxy (TCP) that carries requests over Trickles")
    g.add_argument("--listen", default="127.0.0.1:8118", metavar="HOST:PORT")
    args = p.parse_args(argv)
    if args.cmd == "keygen":
        raise _Keygen(args.output)
    if args.cmd == "gateway":
        raise _Gateway(*parse_hostport(args.listen, "127.0.0.1"))
    if not os.path.isdir(args.root):
        raise UsageError(f"{args.root}: not a directory")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    host, port = parse_hostport(args.listen)
    master, how = load_key(args.key_file)
    log.info("%s", how)
    metrics = parse_hostport(args.metrics, "127.0.0.1") if args.metrics else None
    return Options(
        args.root,
        host,
        port,
        args.workers,
        master,
        not args.no_cache,
        not args.no_delta,
        not args.no_tcp,
        metrics,
        not args.no_listing,
    )


class _Gateway(Exception):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class _Keygen(Exception):
    def __init__(self, output: str | None) -> None:
        self.output = output


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s trickles %(message)s", stream=sys.stderr)
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except _Keygen as k:
        hexkey = secrets.token_hex(32)
        if k.output:
            fd = os.open(k.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(hexkey + "\n")
        else:
            print(hexkey)
        return 0
    except _Gateway as g:
        from trickles.client.gateway import serve_gateway

        try:
            trio.run(serve_gateway, g.host, g.port)
        except KeyboardInterrupt:
            return 0
        except OSError as e:
            print(f"trickles: cannot listen on {g.host}:{g.port}: {e.strerror}", file=sys.stderr)
            return 1
        return 0
    except UsageError as e:
        print(f"trickles: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse already printed the message
        return int(e.code or 0)
    try:
        if opts.workers == 1:
            trio.run(run_worker, opts, 0)
            return 0
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(opts, i), daemon=False) for i in range(opts.workers)]
        for pr in procs:
            pr.start()

        def forward(sig: int, _frame: object) -> None:
            for pr in procs:
                if pr.pid is not None:
                    os.kill(pr.pid, sig)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for pr in procs:
            pr.join()
        return 0 if all(pr.exitcode == 0 for pr in procs) else 1
    except OSError as e:
        print(f"trickles: cannot serve on {opts.host}:{opts.port}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
