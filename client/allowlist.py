"""The gateway's trust boundary: where it may listen, and which destinations it forwards to.

A forward proxy that reaches anything is a way into every service its host can reach (a database
on loopback, an admin page on the private network, the cloud metadata address).  So the gateway
listens on loopback unless told otherwise, and forwards only to destinations on an allowlist:

``HOST`` / ``HOST:PORT``
    a host name, matched against the request URL's host as written (case-insensitive);
``ADDRESS`` / ``NETWORK`` (``10.0.0.5``, ``10.0.0.0/8``, ``[::1]:8080``, ``[fd00::/8]:80``)
    matched against the address the URL's host resolves to;
``*`` / ``*:PORT``
    any *public* address: loopback, private, link-local, shared, reserved and multicast addresses
    are refused unless another entry names them.

Without ``:PORT`` an entry allows every port.  The gateway connects to the very address it checked,
so a name cannot resolve to one address for the check and to another for the connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from .api import ResolveError

__all__ = ["Allowlist", "Refused", "check_listen", "is_public", "parse_allow"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d; never public


class Refused(Exception):
    """A listen address or a destination the policy does not allow; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Rule:
    """One ``--allow`` entry: exactly one of ``name``, ``network`` or ``any_public`` is set."""

    name: str | None = None
    network: IPNetwork | None = None
    any_public: bool = False
    port: int | None = None  # None: every port

    def matches(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            return self.name == _normalise_name(host)
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return self.any_public and is_public(address)


def parse_allow(text: str) -> Rule:
    """Parse one ``--allow`` value; ValueError with a readable message if it is malformed."""
    hostpart, port = _split_port(text.strip())
    if hostpart == "*":
        return Rule(any_public=True, port=port)
    try:
        return Rule(network=ipaddress.ip_network(hostpart, strict=False), port=port)
    except ValueError:
        pass
    name = _normalise_name(hostpart)
    if not name or "/" in name or not all(part.replace("-", "").isalnum() for part in name.split(".")):
        raise ValueError(f"--allow {text!r}: expected HOST[:PORT], ADDRESS[/BITS][:PORT] or *[:PORT]")
    return Rule(name=name, port=port)


def _split_port(text: str) -> tuple[str, int | None]:
    """``host:80`` -> (host, 80); ``[v6]:80`` -> (v6, 80); a bare IPv6 address has no port."""
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"--allow {text!r}: bad [IPv6] form")
        return host, _parse_port(text, rest[1:]) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _parse_port(text, port)
    return text, None


def _parse_port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--allow {text!r}: the port must be a number from 1 to 65535")
    return int(port)


def _normalise_name(host: str) -> str:
    return host.strip().rstrip(".").lower()


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address (IPv4 embedded in IPv6 is judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address in _NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address in _V4_COMPATIBLE:
            return False
    return address.is_global and not address.is_multicast


class Allowlist:
    """The ``--allow`` rules; :meth:`admit` turns a request's host into the address to connect to."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        return cls(parse_allow(entry) for entry in entries)

    async def admit(self, host: str, port: int) -> str:
        """The address to connect to for ``host:port``; Refused if no rule allows it.

        Raises :class:`~trickles.client.api.ResolveError` if the host does not resolve.
        """
        address = await _resolve(host, port)
        if not any(rule.matches(host, address, port) for rule in self.rules):
            raise Refused(f"destination not allowed by the gateway: {host} port {port} ({address})")
        return str(address)


async def _resolve(host: str, port: int) -> IPAddress:
    """One address for ``host`` (IPv4 preferred, as the transports do); literals as they are."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ResolveError(f"Could not resolve host: {host}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    # getaddrinfo returns scope-less text for these families; ip_address cannot fail on it.
    return ipaddress.ip_address(str(infos[0][4][0]).split("%", 1)[0])


def check_listen(host: str, allow_remote: bool) -> None:
    """Refuse a listen address other machines can reach, unless ``allow_remote``."""
    if allow_remote or _is_loopback(host):
        return
    shown = (f"[{host}]" if ":" in host else host) or "every interface"
    raise Refused(
        f"refusing to listen on {shown}: other machines could use the gateway as a proxy into "
        "every network this host reaches; listen on 127.0.0.1 (the default) or pass --allow-remote"
    )


def _is_loopback(host: str) -> bool:
    if _normalise_name(host) == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything
