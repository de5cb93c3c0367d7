"""Logging of unexpected exceptions that a hostile peer might trigger at will.

A flood that hits a bug must not turn into a disk-filling log: the first exception is logged with
its traceback, then at most one per ``period`` seconds, saying how many were suppressed meanwhile.
The counting of every occurrence is the caller's (a counter or a drop reason).
"""

from __future__ import annotations

import logging

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log unexpected exceptions with their traceback, at most once per ``period`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = 10.0,
        what: str = "internal error handling a datagram; dropped it",
    ) -> None:
        self.logger, self.period, self.what = logger, period, what
        self._next = 0.0
        self._suppressed = 0

    def report(self, exc: BaseException | None, now: float) -> None:
        """Log `exc` (with traceback) unless one was logged less than ``period`` before `now`."""
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.period
        more = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        self._suppressed = 0
        self.logger.error("%s%s", self.what, more, exc_info=exc if exc else None)
