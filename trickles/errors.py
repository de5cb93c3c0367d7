"""Typed errors of the Trickles core.

Everything that arrives from the network is hostile. Decoding and verification raise one of these,
never a bare ``Exception``; the server turns each into a drop with a named :class:`DropReason`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class DropReason(StrEnum):
    """Why a datagram was dropped. Values double as Prometheus label values (bounded set)."""

    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    BAD_MAC = "bad_mac"
    STALE = "stale"
    UNKNOWN_KEY = "unknown_key"
    FORGED_PROOF = "forged_proof"
    REPLAY = "replay"
    PROTOCOL = "protocol"
    TERMINATED = "terminated"
    SYN_TOO_SMALL = "syn_too_small"
    APP = "app"
    INTERNAL = "internal"
    """A bug: an unexpected exception while handling one datagram (counted, logged, survived)."""


class TricklesError(Exception):
    """Root of all core errors."""

    reason: ClassVar[DropReason] = DropReason.PROTOCOL  # ClassVar: mypyc makes a bare one per-instance


class MalformedPacket(TricklesError, ValueError):
    """The bytes do not parse as a Trickles datagram (truncated, bad lengths, bad enum values)."""

    reason = DropReason.MALFORMED


class UnsupportedVersion(MalformedPacket):
    """The version byte names a protocol version we do not speak."""

    reason = DropReason.BAD_VERSION


class InvalidContinuation(TricklesError):
    """A sealed continuation failed to open."""


class BadMac(InvalidContinuation):
    """The continuation's MAC does not verify: it was tampered with or forged."""

    reason = DropReason.BAD_MAC


class Stale(InvalidContinuation):
    """The continuation is older than the freshness horizon (or too far in the future)."""

    reason = DropReason.STALE


class UnknownKeyId(InvalidContinuation):
    """The continuation was sealed under a key id this key ring does not hold."""

    reason = DropReason.UNKNOWN_KEY


class BadSackProof(TricklesError):
    """A SACK proof claims a packet the client did not receive, or is not well formed."""

    reason = DropReason.FORGED_PROOF


class ProtocolViolation(TricklesError):
    """Well-formed and authentic, but not a request the protocol allows."""

    reason = DropReason.PROTOCOL


class Replay(TricklesError):
    """The continuation was already used within the freshness horizon."""

    reason = DropReason.REPLAY
