"""Trickles: a stateless, TCP-friendly transport (Shieh, Myers, Sirer, NSDI 2005) over UDP.

This package is the pure core: no sockets, no trio, no clock reads. Time, keys and randomness are
arguments. ``trickles.server``, ``trickles.client`` and ``trickles.apps`` wrap it with I/O.
"""

__version__ = "0.1.0"
