"""A user-space delay line for IP packets: two TUN devices, each packet forwarded ``DELAY`` later.

    python -m bench.delayline TUN_A TUN_B DELAY_S

This kernel has no ``netem``; :func:`bench.netns.bottleneck` with a delay joins its two namespaces
through this instead of a veth pair, so kernel TCP, nginx and Trickles all see the same round trip
(and TCP's slow start runs at it). It creates both devices (``IFF_TUN | IFF_NO_PI``), prints
``ready``, and the caller moves them into the namespaces (the open descriptors follow the devices).
Constant delay, so each direction is a FIFO; bounded at 20,000 packets waiting per direction (beyond:
dropped, like a full queue). Runs until SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import sys
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_WAITING = 20_000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def run(a: int, b: int, delay: float) -> None:
    queues: dict[int, deque[tuple[float, bytes]]] = {a: deque(), b: deque()}
    peer = {a: b, b: a}
    while True:
        now = time.monotonic()
        for src, q in queues.items():
            while q and q[0][0] <= now:
                try:
                    os.write(peer[src], q.popleft()[1])
                except OSError:
                    pass  # the device is down or full: a loss
        heads = [q[0][0] for q in queues.values() if q]
        timeout = max(min(heads) - now, 0.0) if heads else 1.0
        ready, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            for _ in range(256):
                try:
                    pkt = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if len(queues[fd]) < MAX_WAITING:
                    queues[fd].append((now + delay, pkt))


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = open_tun(sys.argv[1]), open_tun(sys.argv[2])
    print("ready", flush=True)
    run(a, b, float(sys.argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
