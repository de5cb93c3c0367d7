"""The test vectors of docs/PROTOCOL.md section 14, read from the document and checked byte for
byte against the reference code: the spec and the code cannot drift apart silently, and a second
implementation can be validated against the same text."""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from trickles.continuation import Continuation, Phase, encode_delta, seal
from trickles.keys import ServerKey
from trickles.nonces import packet_nonces, piece_id, prf, range_summary

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
SECTION = DOC[DOC.index("## 14. Test vectors") : DOC.index("## Appendix A")]
KEY = ServerKey(1, b"k" * 32)
CONN = 0x0123456789ABCDEF
ADDR = bytes.fromhex("0a0000021388")


def value(label: str) -> str:
    """The hex after ``label =`` (or ``label:``) in section 14, spaces removed."""
    m = re.search(re.escape(label) + r"\s*[=:]\s*([0-9a-f ]+?)\s*(?:\(|$|,)", SECTION, re.M)
    assert m, f"no vector {label!r} in PROTOCOL.md section 14"
    return m.group(1).replace(" ", "")


def test_derived_keys() -> None:
    assert KEY.mac.hex() == value("K_mac")
    assert KEY.nonce.hex() == value("K    ")
    assert KEY.renonce.hex() == value("K'   ")


def test_sealing() -> None:
    c = Continuation(1, Phase.NORMAL, 2, CONN, 9, 0, 1, 3, 16383, 1_000_000_100, 100)
    sealed = seal(c, KEY, ADDR)
    assert sealed[:31].hex() == value("fields")
    assert sealed[31:].hex() == value("mac   ")


def test_nonces() -> None:
    p = piece_id(CONN, 0, 1, 3, 16383)
    assert p.hex() == value("piece_id       ")
    assert (p + bytes(4)).hex() == value("block(0) input ")
    assert KEY.prf_blocks(p + bytes(4)).hex() == value("block(0) output")
    assert "".join(f"{g:08x}" for g in prf(KEY, p, range(8))) == value("g(0..7)        ")
    n = packet_nonces(KEY, p, [1, 2, 3])
    assert "".join(f"{x:08x}" for x in n) == value("n(1), n(2), n(3)")
    assert f"{range_summary(n):08x}" == value("summary [1,3]  ")
    assert f"{packet_nonces(KEY, p, [2], retransmit=True)[0]:08x}" == value("n'(2) under K' ")
    assert f"{packet_nonces(KEY, piece_id(CONN, 1, 1, 3, 16383), [1])[0]:08x}" == value("n(1) in epoch 1")
    other = piece_id(CONN, 0, 40, 8, 8)
    assert other.hex() == value("piece_id of (epoch 0, base 40, start 8, ssthresh 8)")
    assert f"{packet_nonces(KEY, other, [41])[0]:08x}" == value("n(41) in that piece")


def test_delta() -> None:
    child = Continuation(1, Phase.NORMAL, 2, CONN, 9, 0, 1, 3, 16383, 1_000_000_100, 100)
    parent = child._replace(phase=Phase.SYNACK, seq=5, ts=999, rtt=7)
    sealed = seal(child, KEY, ADDR)
    expected = re.search(r"^([0-9a-f ]+?)\s+\(25 bytes\)", SECTION, re.M)
    assert expected
    assert encode_delta(child, sealed, parent).hex() == expected.group(1).replace(" ", "")


def test_conn_id() -> None:
    m = re.search(r"`now_ms 3b9aca00`:\s*`([0-9a-f]+)`", SECTION)
    assert m
    msg = b"conn" + bytes.fromhex("0102030405060708") + ADDR + bytes.fromhex("3b9aca00")
    assert hmac.digest(KEY.mac, msg, "sha256")[:8].hex() == m.group(1)
