"""Hold many connections open mid-transfer, in steps, for the memory experiment (fig. 11).

    python -m bench.hold MODE HOST PORT PATH COUNT[,COUNT...] [--seconds S]

MODE ``trickles`` or ``tcp``. For each COUNT in turn, opens connections (50 at a time) until COUNT
are held, each having received ``PART`` bytes of the (large) object and then left alone: a Trickles
client that stops asking, a TCP client that stops reading (the server's send buffer and the
client's receive buffer stay full). Prints ``held N`` and waits for a line on stdin before the next
step; stops early (printing what it holds) once ``S`` seconds are spent opening. Exits on stdin EOF.
"""

from __future__ import annotations

import argparse
import resource
import sys

import trio

from bench.load import request
from trickles.client.endpoint import Endpoint

PART = 4096
PARALLEL_OPENS = 50


async def open_trickles(host: str, port: int, path: str, held: list[object]) -> None:
    ep = await Endpoint.open(host, port, first_request=request(host, port, path, False), probe_timeout=10)
    held.append(ep)
    r = ep.conn.regions[0]
    await ep.run_until(lambda: len(r.ready) >= PART or r.complete or r.error is not None)


async def open_tcp(host: str, port: int, path: str, held: list[object]) -> None:
    s = await trio.open_tcp_stream(host, port)
    held.append(s)
    await s.send_all(request(host, port, path, False))
    got = 0
    while got < PART:
        data = await s.receive_some(PART)
        if not data:
            raise OSError("server closed")
        got += len(data)


async def run(args: argparse.Namespace) -> None:
    opener = open_trickles if args.mode == "trickles" else open_tcp
    held: list[object] = []
    limiter = trio.CapacityLimiter(PARALLEL_OPENS)
    stdin = trio.wrap_file(sys.stdin)

    async def one() -> None:
        async with limiter:
            try:
                await opener(args.host, args.port, args.path, held)
            except (OSError, RuntimeError, trio.TooSlowError):
                pass  # not held; the step reports what it holds

    with trio.move_on_after(args.seconds):
        for target in (int(c) for c in args.counts.split(",")):
            async with trio.open_nursery() as n:
                for _ in range(target - len(held)):
                    n.start_soon(one)
            print(f"held {len(held)}", flush=True)
            if not await stdin.readline():
                return
    print(f"held {len(held)} (time budget spent)", flush=True)
    await stdin.readline()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("trickles", "tcp"))
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("path")
    ap.add_argument("counts")
    ap.add_argument("--seconds", type=float, default=120.0)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
