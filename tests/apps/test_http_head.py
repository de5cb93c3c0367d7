"""Tests for the stateless, incremental request-head parser."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trickles.apps.http_head import (
    MAX_FIELD_VALUE,
    MAX_TARGET,
    RELEVANT_HEADERS,
    HeadError,
    HttpRequest,
    feed_head,
)

SIMPLE = (
    b"GET /a/b?x=1 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"User-Agent: curl/8.0\r\n"
    b"RANGE: bytes=0-99\r\n"
    b"Cookie: a=b\r\n"
    b'If-None-Match: "x"\r\n'
    b'If-None-Match: "y"\r\n'
    b"\r\n"
)


def feed_pieces(pieces: list[bytes], max_head: int = 16384) -> tuple[HttpRequest, int, int]:
    """Feed pieces like packets; returns (request, total consumed, largest state seen)."""
    state, consumed, largest = b"", 0, 0
    for piece in pieces:
        state, request, used = feed_head(state, piece, max_head=max_head)
        consumed += used
        largest = max(largest, len(state))
        if request is not None:
            return request, consumed, largest
        assert used == len(piece)
    raise AssertionError("head never completed")


def status_of(data: bytes, state: bytes = b"", max_head: int = 16384) -> int:
    with pytest.raises(HeadError) as info:
        feed_head(state, data, max_head=max_head)
    return info.value.status


def test_whole_head_keeps_only_relevant_fields() -> None:
    state, request, used = feed_head(b"", SIMPLE + b"BODY")
    assert state == b""
    assert used == len(SIMPLE)
    assert request == HttpRequest(
        "GET",
        "/a/b?x=1",
        "1.1",
        (
            ("host", "example.com"),
            ("range", "bytes=0-99"),
            ("if-none-match", '"x"'),
            ("if-none-match", '"y"'),
        ),
    )
    assert request.get("if-none-match") == '"x", "y"'
    assert request.values("range") == ["bytes=0-99"]
    assert request.get("accept") is None


def test_every_split_point_gives_the_same_request() -> None:
    whole = feed_head(b"", SIMPLE)[1]
    for cut in range(1, len(SIMPLE)):
        request, consumed, largest = feed_pieces([SIMPLE[:cut], SIMPLE[cut:]])
        assert (request, consumed) == (whole, len(SIMPLE))
        assert largest < 600
    byte_by_byte = [SIMPLE[i : i + 1] for i in range(len(SIMPLE))]
    assert feed_pieces(byte_by_byte)[0] == whole


def test_incomplete_head_consumes_everything_and_returns_state() -> None:
    state, request, used = feed_head(b"", SIMPLE[:30])
    assert request is None and used == 30 and state
    state, request, used = feed_head(state, b"")
    assert request is None and used == 0 and state


def test_state_stays_small_for_a_16k_head_full_of_cookies() -> None:
    cookies = b"".join(b"Cookie: session%d=%s\r\n" % (i, b"c" * 300) for i in range(45))
    head = (
        b"GET /big HTTP/1.1\r\nHost: h\r\n"
        + cookies
        + b"X-A-Very-Long-Irrelevant-Header-Name: "
        + b"v" * 1500
        + b"\r\nRange: bytes=1-2\r\n\r\n"
    )
    assert 15000 < len(head) <= 16384
    packets = [head[i : i + 1400] for i in range(0, len(head), 1400)]
    request, used, largest = feed_pieces(packets)
    assert used == len(head)
    assert request.headers == (("host", "h"), ("range", "bytes=1-2"))
    assert largest < 600
    # Unlucky split points inside names and values too.
    request2, _, largest2 = feed_pieces([head[i : i + 7] for i in range(0, len(head), 7)])
    assert request2 == request and largest2 < 600


def test_state_stays_small_for_long_irrelevant_names_and_values() -> None:
    head = b"GET / HTTP/1.1\r\nX-" + b"n" * 3000 + b": " + b"v" * 3000 + b"\r\nHost: h\r\n\r\n"
    request, used, largest = feed_pieces([head[i : i + 100] for i in range(0, len(head), 100)])
    assert request.headers == (("host", "h"),) and used == len(head)
    assert largest < 100


def test_pipelined_requests_are_consumed_one_by_one() -> None:
    second = b"HEAD /two HTTP/1.1\r\nHost: h\r\n\r\n"
    _, first_req, used = feed_head(b"", SIMPLE + second)
    assert first_req is not None and first_req.target == "/a/b?x=1"
    _, second_req, used2 = feed_head(b"", (SIMPLE + second)[used:])
    assert second_req is not None and second_req.method == "HEAD" and used2 == len(second)


def test_leading_empty_lines_and_bare_lf_are_accepted() -> None:
    head = b"\r\n\nGET / HTTP/1.0\nAccept: */*\n\n"
    _, request, used = feed_head(b"", head + b"next")
    assert request == HttpRequest("GET", "/", "1.0", (("accept", "*/*"),))
    assert used == len(head)


def test_version_handling() -> None:
    _, request, _ = feed_head(b"", b"GET / HTTP/1.0\r\n\r\n")
    assert request is not None and request.version == "1.0"  # no Host needed in 1.0
    _, request, _ = feed_head(b"", b"GET / HTTP/1.7\r\nHost: h\r\n\r\n")
    assert request is not None and request.version == "1.1"  # higher minor: treated as 1.1
    assert status_of(b"GET / HTTP/2.0\r\n\r\n") == 505
    assert status_of(b"GET / HTTP/0.9\r\n\r\n") == 505
    assert status_of(b"GET / http/1.1\r\n\r\n") == 400
    assert status_of(b"GET / HTTP/1.10\r\n\r\n") == 400


@pytest.mark.parametrize(
    "head",
    [
        b"GET /\r\n\r\n",  # HTTP/0.9 style
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\rX\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Y: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n: empty name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_malformed_heads_are_400(head: bytes) -> None:
    assert status_of(head) == 400
    # Same verdict when the head arrives in small pieces.
    with pytest.raises(HeadError) as info:
        feed_pieces([head[i : i + 3] for i in range(0, len(head), 3)])
    assert info.value.status == 400


def test_framing_fields() -> None:
    _, request, _ = feed_head(b"", b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n")
    assert request is not None and request.get("content-length") == "5, 5"
    head = b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
    assert feed_head(b"", head)[1] is not None
    assert status_of(b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == 501


def test_size_limits() -> None:
    long_target = b"/" + b"a" * MAX_TARGET
    assert status_of(b"GET " + long_target + b" HTTP/1.1\r\nHost: h\r\n\r\n") == 414
    assert status_of(b"GET " + long_target) == 414  # detected before the line ends
    huge_field = b"GET / HTTP/1.1\r\nHost: h\r\nAccept: " + b"x" * (MAX_FIELD_VALUE + 1)
    assert status_of(huge_field + b"\r\n\r\n") == 431
    assert status_of(huge_field) == 431
    many = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"Accept: a\r\n" * 40 + b"\r\n"
    assert status_of(many) == 431
    cookie = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 2000 + b"\r\n\r\n"
    assert status_of(cookie, max_head=1000) == 413
    state, request, _ = feed_head(b"", cookie[:900], max_head=1000)
    assert request is None
    assert status_of(cookie[900:], state, max_head=1000) == 413


@pytest.mark.parametrize(
    "state",
    [b"\x00", b"\xa1", b"\xa1\xf0\x00\x00\x00", b"\xa1\x00\xff\xff\xff\xff\xff\x00", b"junk"],
)
def test_corrupt_state_is_400(state: bytes) -> None:
    assert status_of(b"GET / HTTP/1.1\r\n", state) == 400


def test_state_tampering_is_detected() -> None:
    state, _, _ = feed_head(b"", SIMPLE[:40])
    assert status_of(b"\r\n", state + b"\x00") == 400  # trailing bytes
    assert status_of(b"\r\n", state[:-1]) == 400  # truncated


# -- properties ---------------------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
_names = st.one_of(
    st.sampled_from(
        [n for n in RELEVANT_HEADERS if n not in ("host", "content-length", "transfer-encoding")]
    ).map(lambda n: "".join(c.upper() if i % 2 else c for i, c in enumerate(n))),
    st.text(_TCHAR, min_size=1, max_size=40),
)
_values = st.text(_VCHAR + " \t", max_size=60).map(lambda v: v.strip(" \t"))


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "X-CUSTOM"]))
    target = "/" + draw(st.text(_VCHAR, max_size=80))
    version = draw(st.sampled_from(["1.0", "1.1"]))
    fields = [("Host", draw(st.text(_TCHAR, min_size=1, max_size=20)))]
    for name, value in draw(st.lists(st.tuples(_names, _values), max_size=8)):
        if name.lower() not in ("host", "content-length", "transfer-encoding"):
            fields.append((name, value))
    fields.insert(draw(st.integers(0, len(fields))), ("Cookie", "k" * draw(st.integers(0, 900))))
    lines = [f"{method} {target} HTTP/{version}"]
    ows = st.sampled_from(["", " ", " \t"])
    lines += [f"{n}:{draw(ows)}{v}{draw(ows)}" for n, v in fields]
    eols = [draw(st.sampled_from(["\r\n", "\n"])) for _ in range(len(lines) + 1)]
    return "".join(line + eol for line, eol in zip([*lines, ""], eols, strict=True)).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_heads(), st.lists(st.integers(0, 3000), max_size=12), st.binary(max_size=20))
def test_split_feeding_equals_whole_feeding(head: bytes, cuts: list[int], tail: bytes) -> None:
    _, whole, used = feed_head(b"", head + tail)
    assert whole is not None and used == len(head)
    points = sorted({c for c in cuts if 0 < c < len(head)})
    pieces = [head[a:b] for a, b in zip([0, *points], [*points, len(head)], strict=True)]
    pieces[-1] += tail
    request, consumed, largest = feed_pieces(pieces)
    assert request == whole
    assert consumed == len(head)
    assert largest < 600


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_arbitrary_bytes_only_raise_head_error(data: bytes, cuts: list[int]) -> None:
    state = b""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    try:
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            state, request, used = feed_head(state, data[a:b], max_head=200)
            if request is not None:
                assert 0 < used <= b - a
                break
    except HeadError as exc:
        assert exc.status in (400, 413, 414, 431, 501, 505)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=80))
def test_arbitrary_state_only_raises_head_error(state: bytes, data: bytes) -> None:
    try:
        feed_head(state, data)
    except HeadError as exc:
        assert exc.status in (400, 413, 414, 431, 501, 505)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, len(SIMPLE) - 2), st.integers(0, 10_000), st.integers(0, 255))
def test_mutated_state_only_raises_head_error(cut: int, where: int, byte: int) -> None:
    state, _, _ = feed_head(b"", SIMPLE[:cut])
    if state:
        i = where % len(state)
        state = state[:i] + bytes([byte]) + state[i + 1 :]
    with contextlib.suppress(HeadError):
        feed_head(state, SIMPLE[cut:])
