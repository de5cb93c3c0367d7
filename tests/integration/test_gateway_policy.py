"""The gateway's trust boundary, against a real ``trickles gateway`` process on loopback.

Where it may listen (loopback unless ``--allow-remote``), where it forwards (the ``--allow`` list;
loopback and private addresses only when listed), and what (GET and HEAD).  "Not forwarded" is
observed, not assumed: an observer port (a UDP socket and a TCP listener) records whether anything
arrived from the gateway.
"""

from __future__ import annotations

import select
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from trickles.client.allowlist import Allowlist, Refused, check_listen, is_public, parse_allow

from .conftest import (
    CURL,
    HOST,
    TRICKLES,
    GatewayProcess,
    ServerProcess,
    Site,
    file_sha256,
    free_port,
    run,
    stop_process,
    tail,
    wait_tcp,
)


@dataclass
class Observer:
    """A UDP socket and a TCP listener on one loopback port: did anything reach it?"""

    port: int
    udp: socket.socket
    tcp: socket.socket

    def reached(self, wait: float = 0.0) -> bool:
        readable, _, _ = select.select([self.udp, self.tcp], [], [], wait)
        return bool(readable)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def open_observer() -> Observer:
    port = free_port()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((HOST, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind((HOST, port))
    tcp.listen(8)
    return Observer(port, udp, tcp)


@pytest.fixture(scope="module")
def listed() -> Iterator[Observer]:
    """An observer on the allowlist: methods other than GET/HEAD must still not reach it."""
    obs = open_observer()
    yield obs
    obs.close()


@pytest.fixture(scope="module")
def unlisted() -> Iterator[Observer]:
    """An observer on loopback that no --allow names: nothing may reach it."""
    obs = open_observer()
    yield obs
    obs.close()


@pytest.fixture(scope="module")
def policy_gateway(
    server: ServerProcess, listed: Observer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Any public address, plus two loopback ports named explicitly."""
    log = tmp_path_factory.mktemp("gateway-policy") / "gateway.log"
    port = free_port()
    allow = ["*", f"{HOST}:{server.port}", f"{HOST}:{listed.port}"]
    cmd = [TRICKLES, "gateway", "--listen", f"{HOST}:{port}", *(a for x in allow for a in ("--allow", x))]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_tcp(port, proc, log)
        yield GatewayProcess(port, proc, log)
    finally:
        stop_process(proc)


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the gateway and read its reply to EOF (it closes after an error)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def get(port: int, url: str, method: str = "GET") -> bytes:
    return exchange(port, f"{method} {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())


# -- where it listens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0", "[::]", "example.org"])
def test_non_loopback_listen_refused_without_allow_remote(listen: str) -> None:
    port = free_port()
    r = run([TRICKLES, "gateway", "--listen", f"{listen}:{port}", "--allow", "*"], timeout=30)
    assert r.returncode == 2, r.stderr
    message = r.stderr.decode()
    assert "refusing to listen on" in message and "--allow-remote" in message
    assert "Traceback" not in message
    with pytest.raises(OSError):  # and it never bound the port
        socket.create_connection((HOST, port), timeout=1).close()


def test_allow_remote_lifts_the_listen_check() -> None:
    check_listen("127.0.0.1", allow_remote=False)
    check_listen("::1", allow_remote=False)
    check_listen("localhost", allow_remote=False)
    check_listen("0.0.0.0", allow_remote=True)
    with pytest.raises(Refused):
        check_listen("", allow_remote=False)  # every interface


def test_no_allowlist_is_a_usage_error() -> None:
    r = run([TRICKLES, "gateway", "--listen", f"{HOST}:{free_port()}"], timeout=30)
    assert r.returncode == 2
    assert "no destination allowed" in r.stderr.decode() and "--allow" in r.stderr.decode()
    r = run([TRICKLES, "gateway", "--allow", "[::1"], timeout=30)
    assert r.returncode == 2 and b"bad [IPv6] form" in r.stderr


# -- where it forwards ----------------------------------------------------------------------------------


def test_listed_loopback_destination_is_forwarded(
    policy_gateway: GatewayProcess, server: ServerProcess, site: Site, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    r = run([CURL, "-s", "-S", "-f", "-o", str(out), "-x", policy_gateway.proxy, server.url("1m.bin")])
    assert r.returncode == 0, r.stderr.decode(errors="replace") + tail(policy_gateway.log)
    assert file_sha256(out) == site.digests["1m.bin"]
    assert policy_gateway.wait_log(f"GET {server.url('1m.bin')} -> 200 via trickles")


def test_unlisted_loopback_and_private_destinations_refused(
    policy_gateway: GatewayProcess, unlisted: Observer
) -> None:
    """``*`` admits public addresses only: loopback in any spelling, private, link-local and
    unspecified addresses get 403, and nothing reaches them."""
    q = unlisted.port
    urls = [
        f"http://{HOST}:{q}/",
        f"http://localhost:{q}/",
        f"http://127.1:{q}/",  # a legacy spelling that resolves to 127.0.0.1
        f"http://[::ffff:127.0.0.1]:{q}/",
        f"http://[::1]:{q}/",
        f"http://0.0.0.0:{q}/",
        "http://10.0.0.1/",
        "http://192.168.1.1:8080/",
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata address
        "http://[fd00::1]/",
    ]
    for url in urls:
        reply = get(policy_gateway.port, url)
        assert reply.startswith(b"HTTP/1.1 403 "), (url, reply)
        assert b"destination not allowed" in reply, reply
    assert not unlisted.reached(wait=0.2)
    assert policy_gateway.wait_log(f"GET http://{HOST}:{q}/ -> 403")


# -- what it forwards -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_only_get_and_head_are_forwarded(
    policy_gateway: GatewayProcess, listed: Observer, method: str
) -> None:
    reply = get(policy_gateway.port, f"http://{HOST}:{listed.port}/x", method)
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 405 "), reply
    assert b"\r\nallow: get, head" in head, reply
    assert not listed.reached(wait=0.1)


async def test_get_does_reach_a_listed_port(policy_gateway: GatewayProcess, listed: Observer) -> None:
    """The observer works: a GET to the listed port is forwarded (its Trickles SYN arrives)."""
    stream = await trio.open_tcp_stream(HOST, policy_gateway.port)
    try:
        await stream.send_all(f"GET http://{HOST}:{listed.port}/x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert await trio.to_thread.run_sync(listed.reached, 5.0)
        datagram = listed.udp.recv(65536)
        assert len(datagram) > 0
    finally:
        await stream.aclose()


# -- the rules themselves (no sockets) ------------------------------------------------------------------


def test_rules_and_public_addresses() -> None:
    import ipaddress

    assert parse_allow("*:80").port == 80 and parse_allow("*").any_public
    assert parse_allow("Example.ORG.").name == "example.org"
    assert str(parse_allow("10.0.0.0/8:8080").network) == "10.0.0.0/8"
    assert str(parse_allow("[fd00::/8]:80").network) == "fd00::/8"
    assert parse_allow("::1").port is None
    for bad in ("", "a b", "h:0", "h:x", "[::1", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            parse_allow(bad)
    public = ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
    private = ["127.0.0.1", "10.1.2.3", "100.64.0.1", "169.254.169.254", "224.0.0.1", "::1",
               "::ffff:10.0.0.1", "64:ff9b::a00:1", "::127.0.0.1", "fe80::1", "0.0.0.0"]  # fmt: skip
    assert [is_public(ipaddress.ip_address(a)) for a in public] == [True] * len(public)
    assert [is_public(ipaddress.ip_address(a)) for a in private] == [False] * len(private)


async def test_admit_returns_the_checked_address() -> None:
    allow = Allowlist.parse(["*:80", "LocalHost:8080", "10.0.0.0/8"])
    assert await allow.admit("8.8.8.8", 80) == "8.8.8.8"
    assert await allow.admit("10.9.9.9", 1234) == "10.9.9.9"
    assert await allow.admit("localhost", 8080) in ("127.0.0.1", "::1")  # named: loopback is fine
    for host, port in [("8.8.8.8", 81), ("localhost", 8081), ("127.0.0.1", 80), ("192.168.0.1", 80)]:
        with pytest.raises(Refused):
            await allow.admit(host, port)
