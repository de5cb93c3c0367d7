"""PROXY headers between the sprayer and the replicas, and the sprayer's choice of replica."""

from __future__ import annotations

import json
import os

import pytest

from trickles.server.proxy import (
    PROBE_MAGIC,
    BadHeader,
    ReplicaProxy,
    decode_untrusted,
    encode_local,
    encode_proxy,
    pack_addr,
    unpack_addr,
)
from trickles.server.spray import Picker, Policy

CLIENT4 = pack_addr(("192.0.2.7", 40000))
PUBLIC4 = pack_addr(("198.51.100.1", 8080))
CLIENT6 = pack_addr(("2001:db8::7", 40001))


def test_v2_round_trip_and_return_ticket() -> None:
    head = encode_proxy(CLIENT4, PUBLIC4)
    assert len(head) == 31 and head[12:14] == b"\x21\x12"
    d = decode_untrusted(head + b"payload")
    assert (d.client, d.reply_head, (head + b"payload")[d.offset :]) == (CLIENT4, head, b"payload")
    assert unpack_addr(d.client) == ("192.0.2.7", 40000)


def test_v2_without_return_tlv_replies_raw_and_ipv6() -> None:
    head = encode_proxy(CLIENT6, PUBLIC4, ret=False)  # families differ: dst becomes ::
    d = decode_untrusted(head + b"x")
    assert d.client == CLIENT6 and d.reply_head == b"" and head[13] == 0x22


def test_mapped_ipv4_is_bound_as_ipv4() -> None:
    assert pack_addr(("::ffff:192.0.2.7", 40000)) == CLIENT4


@pytest.mark.parametrize(
    "line",
    [b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 8080\r\n", b"PROXY UDP4 192.0.2.7 10.0.0.1 40000 53\r\n"],
)
def test_v1_line_from_nginx(line: bytes) -> None:
    d = decode_untrusted(line + b"\x01body")
    assert d.client == CLIENT4 and d.reply_head == b"" and (line + b"\x01body")[d.offset :] == b"\x01body"


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x02 plain trickles",
        encode_proxy(CLIENT4, PUBLIC4)[:20],  # truncated
        encode_proxy(CLIENT4, PUBLIC4)[:14] + b"\xff\xff" + bytes(40),  # length beyond the datagram
        b"PROXY UNKNOWN\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 8080\r\n",
        b"PROXY TCP4 not-an-ip 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 " + b"1" * 200,
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\x00",  # AF_UNIX
    ],
)
def test_bad_headers_are_refused(data: bytes) -> None:
    with pytest.raises(BadHeader):
        decode_untrusted(data)


def test_replica_side_counts_and_answers_probes() -> None:
    sent: list[tuple[bytes, object]] = []
    rp = ReplicaProxy(["127.0.0.1"], lambda: {"role": "replica"})
    assert "127.0.0.1" in rp.trusted and "::ffff:127.0.0.1" in rp.trusted

    def sendto(d: bytes, a: object) -> int:
        sent.append((d, a))
        return len(d)

    assert rp.inbound(b"\x01junk", ("127.0.0.1", 1), sendto)[1] == b""
    payload, client, head = rp.inbound(encode_proxy(CLIENT4, PUBLIC4) + b"req", ("127.0.0.1", 1), sendto)
    assert (payload, client) == (b"req", CLIENT4) and head
    probe = encode_local(PROBE_MAGIC + b"12345678" + b"x" * 1000)
    assert rp.inbound(probe, ("127.0.0.1", 1), sendto)[1] == b""
    answer = sent[-1][0]
    assert answer.startswith(encode_local(PROBE_MAGIC + b"12345678"))
    status = json.loads(answer[16 + len(PROBE_MAGIC) + 8 :])
    assert status["role"] == "replica" and status["bad_header"] == 1 and status["decapsulated"] == 1
    assert len(answer) < len(probe)  # the junk after the token is not echoed


def _request(mac: bytes, rtype: int = 2, attempt: int = 0) -> bytes:
    return bytes((1, rtype, 0, attempt)) + os.urandom(4) + os.urandom(31) + mac + os.urandom(20)


def test_mac_hash_sends_every_copy_and_attempt_of_a_continuation_to_one_replica() -> None:
    p = Picker(3, Policy.MAC_HASH, b"k" * 32)
    for _ in range(50):
        mac = os.urandom(16)
        picks = {p.pick(_request(mac, t, a)) for t, a in ((2, 0), (3, 0), (3, 5), (5, 0), (2, 0))}
        assert len(picks) == 1
    spread = [0, 0, 0]
    for _ in range(3000):
        spread[p.pick(_request(os.urandom(16)))] += 1
    assert min(spread) > 800, spread
    other = Picker(3, Policy.MAC_HASH, b"j" * 32)  # keyed: another key, another mapping
    macs = [os.urandom(16) for _ in range(64)]
    assert [p.pick(_request(m)) for m in macs] != [other.pick(_request(m)) for m in macs]


def test_unhealthy_replicas_leave_the_rotation() -> None:
    for policy in Policy:
        p = Picker(3, policy, b"k" * 32)
        p.set_up([0, 2])
        assert {p.pick(_request(os.urandom(16))) for _ in range(200)} == {0, 2}
        p.set_up([])  # nobody answers probes: everyone gets traffic
        assert {p.pick(_request(os.urandom(16))) for _ in range(200)} == {0, 1, 2}
