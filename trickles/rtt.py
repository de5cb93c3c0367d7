"""The retransmission timer's estimator (RFC 6298), shared by the Trickles client and the TCP Reno
reference so that both time out alike."""

from __future__ import annotations


class RttEstimator:
    """Smoothed RTT and variance from samples; ``rto`` clamped to ``[min_rto, max_rto]``."""

    __slots__ = ("max_rto", "min_rto", "rto", "rttvar", "srtt")

    def __init__(self, initial_rto: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto

    def sample(self, r: float) -> None:
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar += (abs(self.srtt - r) - self.rttvar) / 4
            self.srtt += (r - self.srtt) / 8
        self.rto = min(max(self.srtt + max(4 * self.rttvar, 0.001), self.min_rto), self.max_rto)

    def backoff(self) -> None:
        """Exponential backoff after a timeout (until the next sample)."""
        self.rto = min(self.rto * 2, self.max_rto)
