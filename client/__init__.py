"""Trickles clients: ``connect()`` (a trio stream), the HTTP transports, ``tcurl`` and the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stream import TricklesStream


async def connect(host: str, port: int, **kwargs: Any) -> TricklesStream:
    """Open a Trickles connection to ``host:port`` as a ``trio.abc.HalfCloseableStream``."""
    from .stream import connect as _connect

    return await _connect(host, port, **kwargs)


__all__ = ["connect"]
