"""Encapsulation between a packet sprayer and the replicas: PROXY protocol headers on datagrams.

A sprayer forwards each client datagram to a replica with a PROXY protocol v2 header in front
(docs/PROTOCOL.md, "Cluster encapsulation")::

    header  = sig(12) 0x21 fam:8 len:16 src_ip dst_ip src_port:16 dst_port:16 tlv*
    fam     = 0x12 (UDP over IPv4, 12 address bytes) | 0x22 (UDP over IPv6, 36 address bytes)
    tlv     = RETURN: 0xE0 0x0000  -- "send your replies back to me, behind this same header"

``src`` is the client, ``dst`` the sprayer's public address. A replica binds continuations to the
client's address taken from ``src`` and, when the RETURN TLV is present, sends each reply to the
sprayer with the request's header echoed verbatim in front: the header is the reply's return ticket,
so the sprayer needs no per-flow table. Without RETURN (an engine such as nginx that keeps its own
per-datagram session, and sends the text PROXY v1 line) replies go back raw to the sender.

The LOCAL command (``0x20``, family ``0x00``) carries health probes: a replica answers a trusted
sender's probe with the probe's header and a small JSON status. Headers are honoured only from the
trusted addresses given with ``trickles serve --trust-proxy``; from anyone else the bytes are an
ordinary (and undecodable) Trickles datagram, so a forged header gains nothing.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

SIG: Final = b"\r\n\r\n\x00\r\nQUIT\n"
CMD_LOCAL: Final = 0x20
CMD_PROXY: Final = 0x21
FAM_UNSPEC: Final = 0x00
FAM_UDP4: Final = 0x12
FAM_UDP6: Final = 0x22
TLV_RETURN: Final = 0xE0
"""Custom TLV type (PP2_TYPE_MIN_CUSTOM): the sender wants replies encapsulated back to it."""
RETURN_TLV: Final = bytes((TLV_RETURN, 0, 0))
HEAD: Final = struct.Struct(">12sBBH")
V1_MAX: Final = 107
"""Longest PROXY v1 line, CRLF included (the spec's bound)."""
PROBE_MAGIC: Final = b"trickles-probe/1"
STATUS_MAX: Final = 512
"""A status answer never exceeds this many bytes of JSON."""

_ADDR_LEN = {FAM_UDP4: 4, FAM_UDP6: 16}
_TCP_OR_UDP = {"TCP4", "TCP6", "UDP4", "UDP6"}


class BadHeader(ValueError):
    """A trusted sender's datagram without a usable PROXY header."""


def _norm_host(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def pack_addr(addr: tuple[str, int] | tuple[str, int, int, int]) -> bytes:
    """Packed IP then 2-byte port (the address bytes continuations are bound to)."""
    host = _norm_host(addr[0])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(fam, host) + int(addr[1]).to_bytes(2, "big")


def unpack_addr(ab: bytes) -> tuple[str, int]:
    fam = socket.AF_INET if len(ab) == 6 else socket.AF_INET6
    return socket.inet_ntop(fam, ab[:-2]), int.from_bytes(ab[-2:], "big")


def encode_proxy(client: bytes, public: bytes, ret: bool = True) -> bytes:
    """The v2 PROXY header for a datagram from ``client`` to ``public`` (both packed addresses).

    If the families differ (an IPv4 client on a dual-stack socket), ``dst`` is the unspecified
    address of the client's family with the public port: replicas never read ``dst``.
    """
    ip_len = len(client) - 2
    if len(public) != len(client):
        public = bytes(ip_len) + public[-2:]
    fam = FAM_UDP4 if ip_len == 4 else FAM_UDP6
    tlv = RETURN_TLV if ret else b""
    body = client[:-2] + public[:-2] + client[-2:] + public[-2:] + tlv
    return HEAD.pack(SIG, CMD_PROXY, fam, len(body)) + body


def encode_local(payload: bytes) -> bytes:
    """A LOCAL header (a probe, or the answer to one) followed by ``payload``."""
    return HEAD.pack(SIG, CMD_LOCAL, FAM_UNSPEC, 0) + payload


class Decoded:
    """One decapsulated datagram: the client's address, where its payload starts, and the header to
    put in front of replies (``b""``: reply raw)."""

    __slots__ = ("client", "local", "offset", "reply_head")

    def __init__(self, client: bytes, offset: int, reply_head: bytes, local: bool = False) -> None:
        self.client, self.offset, self.reply_head, self.local = client, offset, reply_head, local


def decode_untrusted(data: bytes) -> Decoded:
    """Parse the PROXY header (v2, or the v1 text line) at the start of ``data``; raise BadHeader."""
    if data.startswith(SIG):
        return _decode_v2(data)
    if data.startswith(b"PROXY "):
        return _decode_v1(data)
    raise BadHeader("no PROXY header")


def _decode_v2(data: bytes) -> Decoded:
    if len(data) < HEAD.size:
        raise BadHeader("truncated PROXY v2 header")
    _, cmd, fam, length = HEAD.unpack_from(data)
    end = HEAD.size + length
    if end > len(data):
        raise BadHeader("PROXY v2 length beyond the datagram")
    if cmd == CMD_LOCAL:
        return Decoded(b"", end, data[:end], local=True)
    n = _ADDR_LEN.get(fam)
    if cmd != CMD_PROXY or n is None or length < 2 * n + 4:
        raise BadHeader(f"unsupported PROXY v2 command/family {cmd:#x}/{fam:#x}")
    p = HEAD.size
    client = data[p : p + n] + data[p + 2 * n : p + 2 * n + 2]
    ret = _has_return(data, p + 2 * n + 4, end)
    return Decoded(client, end, data[:end] if ret else b"")


def _has_return(data: bytes, p: int, end: int) -> bool:
    while p + 3 <= end:
        t, ln = data[p], int.from_bytes(data[p + 1 : p + 3], "big")
        if t == TLV_RETURN:
            return True
        p += 3 + ln
    return False


def _decode_v1(data: bytes) -> Decoded:
    eol = data.find(b"\r\n", 0, V1_MAX)
    if eol < 0:
        raise BadHeader("PROXY v1 line without CRLF within 107 bytes")
    parts = data[6:eol].split(b" ")
    if len(parts) != 5 or parts[0].decode("ascii", "replace") not in _TCP_OR_UDP:
        raise BadHeader("unsupported PROXY v1 line")
    try:
        ip = ipaddress.ip_address(parts[1].decode("ascii"))
        port = int(parts[3])
    except (UnicodeDecodeError, ValueError):
        raise BadHeader("bad address in PROXY v1 line") from None
    if not 0 <= port <= 65535 or not parts[3].isdigit():
        raise BadHeader("bad port in PROXY v1 line")
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return Decoded((mapped or ip).packed + port.to_bytes(2, "big"), eol + 2, b"")


@dataclass
class ProxyStats:
    """Replica-side counters (plain ints; metrics read them at scrape time)."""

    decapsulated: int = 0
    bad_header: int = 0
    probes: int = 0


def trusted_hosts(addrs: Iterable[str]) -> frozenset[str]:
    """The set of source hosts whose headers are honoured (each also in its IPv4-mapped form)."""
    out: set[str] = set()
    for a in addrs:
        ip = ipaddress.ip_address(a.strip("[]"))
        out.add(str(ip))
        if isinstance(ip, ipaddress.IPv4Address):
            out.add(f"::ffff:{ip}")
    return frozenset(out)


class ReplicaProxy:
    """The replica's side: decapsulate datagrams from trusted senders (one call per datagram)."""

    def __init__(self, trusted: Iterable[str], status: Callable[[], dict[str, Any]]) -> None:
        self.trusted = trusted_hosts(trusted)
        self.stats = ProxyStats()
        self._status = status

    def inbound(
        self, data: bytes, addr: Any, sendto: Callable[[bytes, Any], int]
    ) -> tuple[bytes, bytes, bytes]:
        """(payload, client address bytes, reply header) for a trusted sender's datagram.

        Probes are answered here; a datagram without a valid header is counted and yields an empty
        client address, which the caller skips.
        """
        try:
            d = decode_untrusted(data)
        except BadHeader:
            self.stats.bad_header += 1
            return b"", b"", b""
        if d.local:
            self.stats.probes += 1
            probe = data[d.offset : d.offset + len(PROBE_MAGIC) + 8]
            if probe.startswith(PROBE_MAGIC):
                st = self._status() | asdict(self.stats)
                body = json.dumps(st, separators=(",", ":")).encode()[:STATUS_MAX]
                try:
                    sendto(d.reply_head + probe + body, addr)
                except OSError:
                    pass
            return b"", b"", b""
        self.stats.decapsulated += 1
        return data[d.offset :], d.client, d.reply_head


def status_of(stats: object, **extra: Any) -> dict[str, Any]:
    """A flat status dict from a stats dataclass plus fields (for probe answers)."""
    out: dict[str, Any] = dict(extra)
    for f in fields(stats):  # type: ignore[arg-type]
        v = getattr(stats, f.name)
        if isinstance(v, int | float):  # counters only: not sketches or histograms
            out[f.name] = v
    return out
