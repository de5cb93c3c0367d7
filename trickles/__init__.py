"""Trickles: a stateless, TCP-friendly transport (Shieh, Myers, Sirer, NSDI 2005) over UDP.

This package is the pure core: no sockets, no trio, no clock reads. Time, keys and randomness are
arguments. ``trickles.server``, ``trickles.client`` and ``trickles.apps`` wrap it with I/O.
"""

from __future__ import annotations

__version__ = "0.1.0"

BUILDS = {"compiled": "compiled (mypyc)", "pure": "pure Python"}
"""The values of ``build_info()["build"]``, and how ``trickles --version`` says them."""


def build_info() -> dict[str, str]:
    """``{"version": ..., "build": "compiled" | "pure"}``: which build is running (see ``BUILDS``).

    The core is compiled with mypyc when the installer had a C compiler (see ``setup.py``); the
    server step lives in ``engine``, so that module's file tells.
    """
    from importlib.machinery import EXTENSION_SUFFIXES

    from trickles import engine

    compiled = (engine.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
    return {"version": __version__, "build": "compiled" if compiled else "pure"}
