"""Trickles first, TCP when the origin does not answer Trickles: the one connection policy.

``tcurl`` and the gateway both open their connections through :class:`Dialer`, so both probe the
same way, share one connect deadline between the probe and the TCP attempt, and remember for the
same time that an origin only speaks TCP.  :func:`close_quietly` is how both let a connection go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

from .api import Connection, NotTrickles, Transport, TransportError

__all__ = ["TCP_ONLY_TTL", "Dialer", "close_quietly"]

# Origins that did not answer Trickles are reached over TCP without a probe for this long; an
# origin that starts speaking Trickles later is picked up again after it.
TCP_ONLY_TTL = 60.0
MAX_TCP_ONLY = 4096  # origins remembered at most (the gateway's clients choose them)
CLOSE_TIMEOUT = 1.0


def _ignore(message: str) -> None:
    """The default ``note``: say nothing."""


class Dialer:
    """Opens HTTP connections: over ``trickles`` unless the origin is known not to answer it."""

    def __init__(self, trickles: Transport | None, tcp: Transport) -> None:
        self.trickles = trickles  # None: TCP only (``tcurl --tcp``)
        self.tcp = tcp
        self._tcp_only: dict[tuple[str, int], float] = {}  # origin -> when it failed the probe

    async def connect(
        self, host: str, port: int, *, timeout: float, note: Callable[[str], None] = _ignore
    ) -> tuple[Connection, str]:
        """(connection, transport name) to ``host:port`` within ``timeout`` seconds in all.

        Only :class:`NotTrickles` (no Trickles answer) falls back to TCP; any other failure is
        the caller's.  ``note`` receives curl's ``-v`` lines (trying, connected, falling back).
        """
        deadline = trio.current_time() + timeout
        if self.trickles is not None and self._should_probe(host, port):
            note(f"  Trying {host}:{port} ({self.trickles.name})...")
            try:
                connection = await self.trickles.connect(host, port, timeout=timeout)
            except NotTrickles as exc:
                self._remember_tcp_only(host, port)
                note(f"{exc.message}; falling back to TCP")
            else:
                note(f"Connected to {host} port {port} ({self.trickles.name})")
                return connection, self.trickles.name
        note(f"  Trying {host}:{port} ({self.tcp.name})...")
        remaining = max(deadline - trio.current_time(), 0.0)
        connection = await self.tcp.connect(host, port, timeout=remaining)
        note(f"Connected to {host} port {port} ({self.tcp.name})")
        return connection, self.tcp.name

    def _should_probe(self, host: str, port: int) -> bool:
        failed = self._tcp_only.get((host, port))
        if failed is None:
            return True
        if trio.current_time() - failed > TCP_ONLY_TTL:
            del self._tcp_only[host, port]
            return True
        return False

    def _remember_tcp_only(self, host: str, port: int) -> None:
        if len(self._tcp_only) >= MAX_TCP_ONLY:
            del self._tcp_only[next(iter(self._tcp_only))]  # the oldest entry
        self._tcp_only[host, port] = trio.current_time()


async def close_quietly(connection: Connection) -> None:
    """Close even while cancelled (after a timeout), but never hang or raise doing so."""
    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
        scope.shield = True
        with contextlib.suppress(TransportError, OSError, trio.BrokenResourceError):
            await connection.aclose()
