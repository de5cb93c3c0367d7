"""Load generator for the experiments: fetch one path over and over, bounded in count and time.

    python -m bench.load MODE HOST PORT PATH [--concurrency C] [--count N] [--duration S] [--window W]

Modes (every fetch a fresh connection unless said otherwise):

* ``trickles``: the Trickles client with the request as SYN data (:class:`Endpoint` ``first_request``).
* ``tcp``: kernel TCP, a minimal HTTP/1.1 client (``Connection: close``, read to EOF); the same for
  the project's TCP fallback and nginx, and as cheap on the client's CPU as Python gets.
* ``trickles-pipe``: one Trickles connection keeping ``W`` requests outstanding, each in its own
  region (the paper's parallel continuation requests, section 5.2); ``W=1`` is one at a time.
* ``tcp-pipe``: one kernel TCP connection with ``W`` pipelined HTTP/1.1 keep-alive requests.

``C`` workers run in this one trio process until ``N`` fetches in all completed or ``S`` seconds
passed. Prints one JSON line: bytes received (also of fetches cut by the deadline), completed
fetches, errors, seconds, and the completion time of each completed fetch (first 2,000).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass, field

import trio

from trickles.client.endpoint import Endpoint
from trickles.client.trickles_transport import encode_request
from trickles.regions import Region

MAX_TIMES = 2000


@dataclass
class Tally:
    bytes: int = 0
    fetches: int = 0
    errors: int = 0
    left: int = 0  # fetches still to start
    times: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def done(self, seconds: float) -> None:
        self.fetches += 1
        if len(self.times) < MAX_TIMES:
            self.times.append(round(seconds, 6))

    def failed(self, e: BaseException) -> None:
        self.errors += 1
        kind = type(e).__name__
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def request(host: str, port: int, path: str, close: bool) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()


async def fetch_trickles(host: str, port: int, path: str, t: Tally) -> None:
    ep = await Endpoint.open(host, port, first_request=request(host, port, path, False), probe_timeout=5)
    try:
        r = ep.conn.regions[0]
        while not (r.complete and not r.ready):
            await ep.run_until(lambda: bool(r.ready) or r.complete or r.error is not None)
            if r.error is not None:
                raise RuntimeError(f"refused: {r.error}")
            t.bytes += len(ep.conn.read(0))
    finally:
        ep.close()


async def fetch_tcp(host: str, port: int, path: str, t: Tally) -> None:
    async with await trio.open_tcp_stream(host, port) as s:
        await s.send_all(request(host, port, path, True))
        while data := await s.receive_some(262144):
            t.bytes += len(data)


def _any_progress(regions: list[Region]) -> bool:
    return any(r.ready or r.complete or r.error for r in regions)


async def pipe_trickles(host: str, port: int, path: str, window: int, t: Tally) -> None:
    ep = await Endpoint.open(host, port, probe_timeout=5)
    req = encode_request("GET", path, f"{host}:{port}", [])
    started: dict[int, float] = {}
    try:
        while t.left > 0 or started:
            while t.left > 0 and len(started) < window:
                t.left -= 1
                started[ep.conn.open_region(req)] = time.perf_counter()
            regions = [ep.conn.regions[rid] for rid in started]
            await ep.run_until(functools.partial(_any_progress, regions))
            for r in regions:
                if r.error is not None:
                    raise RuntimeError(f"refused: {r.error}")
                t.bytes += len(ep.conn.read(r.rid))
                if r.complete and not r.ready:
                    t.done(time.perf_counter() - started.pop(r.rid))
    finally:
        ep.close()


async def pipe_tcp(host: str, port: int, path: str, window: int, t: Tally) -> None:
    req = request(host, port, path, False)
    async with await trio.open_tcp_stream(host, port) as s:
        started: list[float] = []
        buf = bytearray()
        need: int | None = None  # bytes left of the current response, once its head is parsed
        while t.left > 0 or started:
            burst = min(t.left, window - len(started))
            if burst > 0:
                t.left -= burst
                started += [time.perf_counter()] * burst
                await s.send_all(req * burst)
            data = await s.receive_some(262144)
            if not data:
                raise RuntimeError("server closed the keep-alive connection")
            t.bytes += len(data)
            buf += data
            while True:
                if need is None:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = bytes(buf[:end]).lower()
                    need = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                    del buf[: end + 4]
                take = min(need, len(buf))
                del buf[:take]
                need -= take
                if need:
                    break
                need = None
                t.done(time.perf_counter() - started.pop(0))


async def worker(args: argparse.Namespace, t: Tally) -> None:
    if args.mode in ("trickles-pipe", "tcp-pipe"):
        pipe = pipe_trickles if args.mode == "trickles-pipe" else pipe_tcp
        try:
            await pipe(args.host, args.port, args.path, args.window, t)
        except (OSError, RuntimeError, trio.BrokenResourceError) as e:
            t.failed(e)
        return
    fetch = fetch_trickles if args.mode == "trickles" else fetch_tcp
    while t.left > 0:
        t.left -= 1
        t0 = time.perf_counter()
        try:
            await fetch(args.host, args.port, args.path, t)
        except Exception as e:  # counted and reported; a load loop goes on
            t.failed(e)
            await trio.sleep(0.05)
            continue
        t.done(time.perf_counter() - t0)


async def run(args: argparse.Namespace) -> Tally:
    t = Tally(left=args.count)
    t0 = time.perf_counter()
    with trio.move_on_after(args.duration):
        async with trio.open_nursery() as n:
            for _ in range(args.concurrency):
                n.start_soon(worker, args, t)
    t.times.sort()
    print(
        json.dumps(
            {
                "bytes": t.bytes,
                "fetches": t.fetches,
                "errors": t.errors,
                "error_kinds": t.error_kinds,
                "seconds": round(time.perf_counter() - t0, 4),
                "times": t.times,
            }
        ),
        flush=True,
    )
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("trickles", "tcp", "trickles-pipe", "tcp-pipe"))
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("path")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=1)
    args = ap.parse_args(argv)
    if not (0 < args.duration <= 600 and 0 < args.concurrency <= 5000 and 0 < args.window <= 64):
        ap.error("--duration must be in (0, 600], --concurrency in (0, 5000], --window in (0, 64]")
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
