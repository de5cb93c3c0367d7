"""``tcurl``'s entry point (being split out of ``transfer.py``)."""

from trickles.client.transfer import *  # noqa: F403
from trickles.client.transfer import main

__all__ = ["main"]
