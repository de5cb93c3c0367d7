"""Tests for static serving: nginx-like semantics and byte-exact regeneration from tokens."""

from __future__ import annotations

import contextlib
import email.message
import email.parser
import email.policy
import html
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trickles.apps.http_head import HttpRequest
from trickles.apps.static import (
    ContentChanged,
    Kind,
    PlanOrigin,
    ResponsePlan,
    StaticSite,
    TokenError,
    http_date,
)

NOW = 1_700_000_000.25
HELLO = b"hello, world\n"
DIGITS = b"0123456789"


def req(target: str, method: str = "GET", version: str = "1.1", **fields: str) -> HttpRequest:
    headers = [("host", "example.test")]
    headers += [(name.replace("_", "-"), value) for name, value in fields.items()]
    return HttpRequest(method, target, version, tuple(headers))


def whole(site: StaticSite, plan: ResponsePlan) -> bytes:
    return site.read(plan, 0, plan.total_length)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no end of head"
    status_line, *lines = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        assert name not in fields, f"duplicate {name}"
        fields[name] = value
    return int(status), fields, body


def get(
    site: StaticSite, target: str, method: str = "GET", **fields: str
) -> tuple[int, dict[str, str], bytes]:
    plan = site.plan(req(target, method, **fields), NOW)
    status, headers, body = parse(whole(site, plan))
    assert status == plan.status
    assert len(body) == plan.body_length
    return status, headers, body


def etag_of(path: Path) -> str:
    s = path.stat()
    return f'"{s.st_ino:x}-{s.st_mtime_ns:x}-{s.st_size:x}"'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "hello.txt").write_bytes(HELLO)
    (r / "digits.txt").write_bytes(DIGITS)
    (r / "empty.txt").write_bytes(b"")
    (r / "blob.bin").write_bytes(bytes(range(256)) * 400)
    (r / "sub").mkdir()
    (r / "sub" / "inner.txt").write_bytes(b"inner\n")
    (r / "site").mkdir()
    (r / "site" / "index.html").write_bytes(b"<h1>index</h1>\n")
    (tmp_path / "outside.txt").write_bytes(b"secret\n")
    (tmp_path / "outside_dir").mkdir()
    return r


@pytest.fixture
def site(root: Path) -> StaticSite:
    return StaticSite(root)


# -- basic GET/HEAD --------------------------------------------------------------------------------


def test_get_file_headers_and_body(site: StaticSite, root: Path) -> None:
    plan = site.plan(req("/hello.txt"), NOW)
    raw = whole(site, plan)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\nServer: trickles\r\n")
    status, headers, body = parse(raw)
    mtime = (root / "hello.txt").stat().st_mtime_ns // 10**9
    assert status == 200 and body == HELLO
    assert headers == {
        "Server": "trickles",
        "Date": "Tue, 14 Nov 2023 22:13:20 GMT",
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": str(len(HELLO)),
        "Last-Modified": http_date(mtime),
        "ETag": etag_of(root / "hello.txt"),
        "Accept-Ranges": "bytes",
    }
    assert plan.total_length == len(plan.header_bytes) + len(HELLO)


def test_head_has_the_same_headers_and_no_body(site: StaticSite) -> None:
    get_plan = site.plan(req("/hello.txt"), NOW)
    head_plan = site.plan(req("/hello.txt", "HEAD"), NOW)
    assert head_plan.header_bytes == get_plan.header_bytes
    assert head_plan.body_length == 0
    assert whole(site, head_plan) == head_plan.header_bytes
    assert site.read(head_plan, 0, 10**9) == head_plan.header_bytes


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get"])
def test_other_methods_get_405(site: StaticSite, method: str) -> None:
    status, headers, body = get(site, "/hello.txt", method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert b"405 Method Not Allowed" in body


def test_unsupported_version_is_505(site: StaticSite) -> None:
    plan = site.plan(req("/hello.txt", version="2.0"), NOW)
    assert plan.status == 505


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("a.html", "text/html; charset=utf-8"),
        ("a.HTM", "text/html; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.TXT", "text/plain; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.JPG", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.gif", "image/gif"),
        ("a.svg", "image/svg+xml"),
        ("a.webp", "image/webp"),
        ("a.pdf", "application/pdf"),
        ("a.wasm", "application/wasm"),
        ("a.mp4", "video/mp4"),
        ("a.zip", "application/zip"),
        ("a.tar.gz", "application/gzip"),
        ("noext", "application/octet-stream"),
        ("a.unknown", "application/octet-stream"),
        (".hidden", "application/octet-stream"),
    ],
)
def test_content_type_by_extension(site: StaticSite, root: Path, name: str, ctype: str) -> None:
    (root / name).write_bytes(b"x")
    status, headers, _ = get(site, "/" + name)
    assert status == 200
    assert headers["Content-Type"] == ctype


def test_absolute_form_target(site: StaticSite) -> None:
    status, _, body = get(site, "http://example.test/hello.txt")
    assert (status, body) == (200, HELLO)


# -- paths -------------------------------------------------------------------------------------------


def test_percent_decoding(site: StaticSite, root: Path) -> None:
    (root / "a b&c.txt").write_bytes(b"spaced")
    assert get(site, "/a%20b%26c.txt")[2] == b"spaced"
    assert get(site, "/sub/%69nner.txt")[2] == b"inner\n"
    assert get(site, "/sub%2finner.txt")[2] == b"inner\n"
    assert get(site, "/hello.txt?x=1#frag")[2] == HELLO


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/missing.txt", 404),
        ("/sub/missing/deeper", 404),
        ("/hello.txt/", 404),  # a file is not a directory
        ("/hello.txt/x", 404),
        ("/../outside.txt", 400),
        ("/%2e%2e/outside.txt", 400),
        ("/sub/../../outside.txt", 400),
        ("/sub/..%2f..%2foutside.txt", 400),
        ("/hello.txt%00.png", 400),
        ("/bad%zzpercent", 400),
        ("/bad%2", 400),
        ("relative", 400),
        ("*", 400),
        ("/" + "a" * 300, 404),  # ENAMETOOLONG is just "not found"
        ("/" + "a" * 5000, 414),
    ],
)
def test_refused_paths(site: StaticSite, target: str, status: int) -> None:
    got, headers, body = get(site, target)
    assert got == status
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert str(status).encode() in body
    assert b"secret" not in body


def test_dotdot_inside_the_root_is_normalised(site: StaticSite) -> None:
    assert get(site, "/sub/../hello.txt")[:1] == (200,)
    assert get(site, "/./sub/./inner.txt")[2] == b"inner\n"


def test_symlinks_leading_outside_are_404(site: StaticSite, root: Path) -> None:
    outside = root.parent
    (root / "leak.txt").symlink_to(outside / "outside.txt")
    (root / "leakdir").symlink_to(outside / "outside_dir")
    (root / "sub" / "up").symlink_to("..")
    (root / "ok.txt").symlink_to("hello.txt")
    assert get(site, "/leak.txt")[0] == 404
    assert get(site, "/leakdir/")[0] == 404
    assert get(site, "/leakdir")[0] == 404
    assert get(site, "/sub/up/up/outside.txt")[0] == 404
    assert get(site, "/sub/up/hello.txt")[2] == HELLO  # stays inside: allowed
    assert get(site, "/ok.txt")[2] == HELLO
    listing = get(site, "/")[2]
    assert b"ok.txt" in listing
    assert b"leak" not in listing


def test_index_symlink_leading_outside_is_404(site: StaticSite, root: Path) -> None:
    (root / "trap").mkdir()
    (root / "trap" / "index.html").symlink_to(root.parent / "outside.txt")
    status, _, body = get(site, "/trap/")
    assert status == 404 and b"secret" not in body


def test_eacces_is_403(site: StaticSite, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: bytes) -> int:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(site, "_open_file", denied)
    site.drop_caches()
    assert get(site, "/hello.txt")[0] == 403


def test_unreadable_directory_is_403(site: StaticSite, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: bytes) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", denied)
    assert get(site, "/sub/")[0] == 403


def test_special_files_are_403(site: StaticSite, root: Path) -> None:
    os.mkfifo(root / "fifo")
    assert get(site, "/fifo")[0] == 403  # and it did not block


# -- directories ---------------------------------------------------------------------------------------


def test_directory_without_slash_redirects(site: StaticSite, root: Path) -> None:
    (root / "a dir").mkdir()
    status, headers, body = get(site, "/sub")
    assert status == 301 and headers["Location"] == "/sub/"
    assert b"301" in body
    assert get(site, "/sub?x=1&y")[1]["Location"] == "/sub/?x=1&y"
    assert get(site, "/a%20dir")[1]["Location"] == "/a%20dir/"
    assert get(site, "/sub/../a%20dir")[1]["Location"] == "/a%20dir/"


def test_directory_index_html(site: StaticSite) -> None:
    status, headers, body = get(site, "/site/")
    assert (status, body) == (200, b"<h1>index</h1>\n")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "ETag" in headers


def test_listing(site: StaticSite, root: Path) -> None:
    d = root / "list"
    d.mkdir()
    (d / "zeta.txt").write_bytes(b"z" * 1234)
    (d / "Alpha.txt").write_bytes(b"a")
    (d / "beta").mkdir()
    (d / "alpha-dir").mkdir()
    (d / "<script>&\"'.txt").write_bytes(b"")
    (d / "a b#c?.txt").write_bytes(b"")
    (d / ".hidden").write_bytes(b"")
    os.utime(d / "zeta.txt", ns=(0, 1_600_000_000 * 10**9))
    status, headers, body = get(site, "/list/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert re.fullmatch(r'"L-[0-9a-f]{32}"', headers["ETag"])
    text = body.decode()
    assert "<title>Index of /list/</title>" in text
    assert '<a href="../">../</a>' in text
    hrefs = [html.unescape(h) for h in re.findall(r'<a href="([^"]*)">', text)]
    assert hrefs == [  # directories first, then files, each by raw name bytes (like nginx)
        "../",
        "alpha-dir/",
        "beta/",
        "%3Cscript%3E&%22'.txt",
        "Alpha.txt",
        "a%20b%23c%3F.txt",
        "zeta.txt",
    ]
    assert "&lt;script&gt;&amp;&#34;&#39;.txt</a>" in text  # autoescaped
    assert "<script>" not in text
    assert ">alpha-dir/</a>" in text
    assert ".hidden" not in text
    zeta_row = next(line for line in text.splitlines() if "zeta.txt" in line)
    assert ">1234<" in zeta_row and "2020-09-13 12:26" in zeta_row


def test_root_listing_has_no_parent_link(site: StaticSite) -> None:
    text = get(site, "/")[2].decode()
    assert "Index of /<" in text
    assert 'href="../"' not in text
    assert 'href="sub/"' in text and 'href="hello.txt"' in text


def test_non_utf8_names(site: StaticSite, root: Path) -> None:
    os.close(os.open(os.fsencode(root) + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    text = get(site, "/")[2].decode()
    assert 'href="caf%E9.txt"' in text and "caf\ufffd.txt" in text
    assert get(site, "/caf%E9.txt")[0] == 200


def test_listing_disabled_is_403(root: Path) -> None:
    site = StaticSite(root, listing=False)
    assert get(site, "/sub/")[0] == 403
    assert get(site, "/site/")[0] == 200


def test_range_ignored_on_listing(site: StaticSite) -> None:
    assert get(site, "/sub/", range="bytes=0-3")[0] == 200


# -- conditionals ----------------------------------------------------------------------------------------


def test_if_none_match(site: StaticSite, root: Path) -> None:
    etag = etag_of(root / "hello.txt")
    for value in (etag, "W/" + etag, f'"nope", {etag}', "*"):
        status, headers, body = get(site, "/hello.txt", if_none_match=value)
        assert status == 304 and body == b""
        assert set(headers) == {"Server", "Date", "Last-Modified", "ETag"}
        assert headers["ETag"] == etag
    assert get(site, "/hello.txt", if_none_match='"other"')[0] == 200
    assert get(site, "/hello.txt", "HEAD", if_none_match=etag)[0] == 304


def test_if_modified_since(site: StaticSite, root: Path) -> None:
    os.utime(root / "hello.txt", ns=(0, 1_500_000_000 * 10**9 + 5))
    exact, later, earlier = http_date(1_500_000_000), http_date(1_600_000_000), http_date(1)
    assert get(site, "/hello.txt", if_modified_since=exact)[0] == 304
    assert get(site, "/hello.txt", if_modified_since=later)[0] == 304
    assert get(site, "/hello.txt", if_modified_since=earlier)[0] == 200
    assert get(site, "/hello.txt", if_modified_since="Sunday, 14-Jul-17 02:40:00 GMT")[0] == 304
    assert get(site, "/hello.txt", if_modified_since="garbage")[0] == 200
    # If-None-Match wins over If-Modified-Since.
    assert get(site, "/hello.txt", if_none_match='"x"', if_modified_since=later)[0] == 200


def test_listing_etag_conditional(site: StaticSite) -> None:
    etag = get(site, "/sub/")[1]["ETag"]
    status, headers, body = get(site, "/sub/", if_none_match=etag)
    assert (status, body, headers["ETag"]) == (304, b"", etag)


# -- ranges ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-4", 0, 4),
        ("bytes=3-", 3, 9),
        ("bytes=-3", 7, 9),
        ("bytes=8-100", 8, 9),
        ("bytes=-100", 0, 9),
        ("BYTES = 2-2", 2, 2),
        ("bytes=0-0,-0", 0, 0),  # the unsatisfiable part is dropped
    ],
)
def test_single_range(site: StaticSite, spec: str, first: int, last: int) -> None:
    status, headers, body = get(site, "/digits.txt", range=spec)
    assert status == 206
    assert headers["Content-Range"] == f"bytes {first}-{last}/10"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body == DIGITS[first : last + 1]
    assert headers["Content-Length"] == str(len(body))


def test_multiple_ranges_are_exact_multipart(site: StaticSite, root: Path) -> None:
    status, headers, body = get(site, "/digits.txt", range="bytes=0-1, 5-7,-2")
    assert status == 206
    ctype = headers["Content-Type"]
    boundary = ctype.removeprefix("multipart/byteranges; boundary=")
    assert boundary != ctype and len(body) == int(headers["Content-Length"])
    # Deterministic: derived from the ETag, same on every plan.
    assert get(site, "/digits.txt", range="bytes=0-0,2-2")[1]["Content-Type"] == ctype
    # By hand, byte for byte.
    expected = b""
    for first, last in ((0, 1), (5, 7), (8, 9)):
        expected += (
            f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Range: bytes {first}-{last}/10\r\n\r\n"
        ).encode() + DIGITS[first : last + 1]
    assert body == expected + f"\r\n--{boundary}--\r\n".encode()
    # And with a real MIME parser.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + body
    )
    parts = message.get_payload()
    assert isinstance(parts, list)
    messages = [p for p in parts if isinstance(p, email.message.Message)]
    assert len(messages) == len(parts)
    assert [p["Content-Range"] for p in messages] == [
        "bytes 0-1/10",
        "bytes 5-7/10",
        "bytes 8-9/10",
    ]
    assert [p.get_payload(decode=True) for p in messages] == [b"01", b"567", b"89"]


def test_multipart_binary_file_regenerates(site: StaticSite, root: Path) -> None:
    data = (root / "blob.bin").read_bytes()
    spec = "bytes=0-99,50000-60000,-7"
    plan = site.plan(req("/blob.bin", range=spec), NOW)
    raw = whole(site, plan)
    assert raw.count(data[50000:60001]) == 1
    assert site.read(site.from_token(plan.to_token()), 0, plan.total_length) == raw


def test_unsatisfiable_range_is_416(site: StaticSite) -> None:
    status, headers, body = get(site, "/digits.txt", range="bytes=10-")
    assert status == 416
    assert headers["Content-Range"] == "bytes */10"
    assert b"416" in body
    assert get(site, "/digits.txt", range="bytes=-0")[0] == 416


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=" + ",".join(f"{i}-{i}" for i in range(17)),  # more than max_ranges
        "bytes=0-9,0-9",  # more bytes than the file: amplification
        "bytes=5-1",  # invalid range-spec
        "bytes=a-b",
        "items=0-1",
        "bytes 0-1",
        "bytes=",
    ],
)
def test_ignored_ranges_give_200(site: StaticSite, spec: str) -> None:
    status, headers, body = get(site, "/digits.txt", range=spec)
    assert (status, body) == (200, DIGITS)
    assert "Content-Range" not in headers


def test_ranges_ignored_for_head_and_empty_files(site: StaticSite) -> None:
    assert get(site, "/digits.txt", "HEAD", range="bytes=0-1")[0] == 200
    assert get(site, "/empty.txt", range="bytes=0-1")[0] == 200
    assert get(site, "/empty.txt", range="bytes=-1")[0] == 200


def test_max_ranges_is_configurable(root: Path) -> None:
    site = StaticSite(root, max_ranges=2)
    assert get(site, "/digits.txt", range="bytes=0-0,2-2")[0] == 206
    assert get(site, "/digits.txt", range="bytes=0-0,2-2,4-4")[0] == 200


def test_if_range(site: StaticSite, root: Path) -> None:
    etag = etag_of(root / "digits.txt")
    modified = http_date((root / "digits.txt").stat().st_mtime_ns // 10**9)
    assert get(site, "/digits.txt", range="bytes=0-1", if_range=etag)[0] == 206
    assert get(site, "/digits.txt", range="bytes=0-1", if_range="W/" + etag)[0] == 200
    assert get(site, "/digits.txt", range="bytes=0-1", if_range='"stale"')[0] == 200
    assert get(site, "/digits.txt", range="bytes=0-1", if_range=modified)[0] == 206
    assert get(site, "/digits.txt", range="bytes=0-1", if_range=http_date(12345))[0] == 200
    assert get(site, "/digits.txt", range="bytes=99-", if_range='"stale"')[0] == 200


# -- error plans ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 413, 414, 431, 501, 505])
def test_error_plans(site: StaticSite, status: int) -> None:
    plan = site.error_plan(status, NOW)
    got, headers, body = parse(whole(site, plan))
    assert got == status
    assert int(headers["Content-Length"]) == len(body) > 0
    assert headers["Date"] == http_date(int(NOW))
    again = site.from_token(plan.to_token())
    assert again == plan and whole(site, again) == whole(site, plan)
    head = site.error_plan(status, NOW, "HEAD")
    assert head.body_length == 0 and head.header_bytes == plan.header_bytes


def test_error_plan_rejects_unknown_status(site: StaticSite) -> None:
    with pytest.raises(ValueError):
        site.error_plan(200, NOW)


# -- regeneration ------------------------------------------------------------------------------------------

REGENERATED = [
    ("/hello.txt", "GET", {}),
    ("/hello.txt", "HEAD", {}),
    ("/blob.bin", "GET", {}),
    ("/blob.bin", "GET", {"range": "bytes=100-30000"}),
    ("/blob.bin", "GET", {"range": "bytes=0-0,10-20,-5"}),
    ("/digits.txt", "GET", {"range": "bytes=50-"}),
    ("/hello.txt", "GET", {"if_none_match": "*"}),
    ("/sub/", "GET", {}),
    ("/", "HEAD", {}),
    ("/sub", "GET", {}),
    ("/site/", "GET", {}),
    ("/missing", "GET", {}),
    ("/hello.txt", "DELETE", {}),
]


@pytest.mark.parametrize(("target", "method", "fields"), REGENERATED)
def test_token_regenerates_identical_stream(
    site: StaticSite, root: Path, target: str, method: str, fields: dict[str, str]
) -> None:
    plan = site.plan(req(target, method, **fields), NOW)
    token = plan.to_token()
    assert isinstance(token, bytes) and len(token) <= 400
    assert plan.to_token() == token  # deterministic
    replica = StaticSite(root)  # another process sharing the directory, later
    again = replica.from_token(token)
    assert again == plan
    stream = whole(site, plan)
    assert len(stream) == plan.total_length
    assert whole(replica, again) == stream
    # Any window, in any order, matches the same bytes.
    for size in (1, 7, 1400, 65536):
        offsets = range(0, plan.total_length, size)
        pieces = {off: replica.read(again, off, size) for off in reversed(offsets)}
        assert b"".join(pieces[off] for off in offsets) == stream
    assert site.read(plan, plan.total_length - 3, 100) == stream[-3:]
    assert site.read(plan, plan.total_length, 10) == b""
    assert site.read(plan, -5, 10) == stream[:10]


def test_date_is_fixed_by_the_token(site: StaticSite) -> None:
    plan = site.plan(req("/hello.txt"), NOW)
    later = site.plan(req("/hello.txt"), NOW + 3600)
    assert later.header_bytes != plan.header_bytes
    assert site.from_token(plan.to_token()).header_bytes == plan.header_bytes


# -- content changes --------------------------------------------------------------------------------------


def body_of(site: StaticSite, plan: ResponsePlan) -> bytes:
    return site.read(plan, len(plan.header_bytes), plan.body_length)


def test_rewrite_with_new_mtime_is_detected(site: StaticSite, root: Path) -> None:
    path = root / "hello.txt"
    plan = site.plan(req("/hello.txt"), NOW)
    assert body_of(site, plan) == HELLO
    path.write_bytes(HELLO.upper())  # same size
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(ContentChanged):
        body_of(site, plan)
    with pytest.raises(ContentChanged):
        StaticSite(root).read(site.from_token(plan.to_token()), len(plan.header_bytes), 1)


def test_size_change_is_detected(site: StaticSite, root: Path) -> None:
    plan = site.plan(req("/blob.bin", range="bytes=0-9,100-109"), NOW)
    with (root / "blob.bin").open("ab") as f:
        f.write(b"more")
    with pytest.raises(ContentChanged):
        body_of(site, plan)


def test_replacement_by_rename_is_detected(site: StaticSite, root: Path) -> None:
    plan = site.plan(req("/hello.txt"), NOW)
    body_of(site, plan)  # the fd is now cached
    (root / "new.txt").write_bytes(HELLO)
    stat = (root / "hello.txt").stat()
    os.replace(root / "new.txt", root / "hello.txt")
    os.utime(root / "hello.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # only inode differs
    with pytest.raises(ContentChanged):
        body_of(site, plan)
    fresh = site.plan(req("/hello.txt"), NOW)
    assert body_of(site, fresh) == HELLO


@pytest.mark.parametrize("change", ["append", "delete", "outside_symlink", "truncate"])
def test_a_change_after_the_fd_is_cached_is_detected(site: StaticSite, root: Path, change: str) -> None:
    """The per-packet read (cached fd, then one stat of the path) refuses every kind of change."""
    path = root / "hello.txt"
    plan = site.plan(req("/hello.txt"), NOW)
    assert body_of(site, plan) == HELLO  # the fd is now cached
    if change == "append":
        with path.open("ab") as f:
            f.write(b"more")
    elif change == "truncate":
        path.write_bytes(b"")
    else:
        path.unlink()
        if change == "outside_symlink":
            path.symlink_to(root.parent / "outside.txt")
    with pytest.raises(ContentChanged):
        body_of(site, plan)


def test_deleted_file_is_detected(site: StaticSite, root: Path) -> None:
    plan = site.plan(req("/hello.txt"), NOW)
    (root / "hello.txt").unlink()
    with pytest.raises(ContentChanged):
        body_of(site, plan)


def test_file_swapped_for_outside_symlink_is_refused(site: StaticSite, root: Path) -> None:
    plan = site.plan(req("/hello.txt"), NOW)
    (root / "hello.txt").unlink()
    (root / "hello.txt").symlink_to(root.parent / "outside.txt")
    with pytest.raises(ContentChanged):
        StaticSite(root).read(plan, len(plan.header_bytes), 5)


def test_listing_change_is_detected(site: StaticSite, root: Path) -> None:
    plan = site.plan(req("/sub/"), NOW)
    (root / "sub" / "new.txt").write_bytes(b"new")
    replica = StaticSite(root)
    with pytest.raises(ContentChanged):
        body_of(replica, replica.from_token(plan.to_token()))
    site.drop_caches()
    with pytest.raises(ContentChanged):
        body_of(site, plan)
    assert site.read(plan, 0, 5) == b"HTTP/"  # the head alone never touches the content


def test_fixed_pages_never_change(site: StaticSite, root: Path) -> None:
    plan = site.plan(req("/missing"), NOW)
    (root / "missing").write_bytes(b"now here")
    assert b"404" in body_of(site, plan)


# -- file descriptor cache ---------------------------------------------------------------------------------


def test_reads_reuse_one_fd(site: StaticSite, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[bytes] = []
    real_open = site._open_file

    def counting(path: bytes) -> int:
        opened.append(path)
        return real_open(path)

    monkeypatch.setattr(site, "_open_file", counting)
    site.drop_caches()
    plan = site.plan(req("/blob.bin"), NOW)
    for off in range(0, plan.total_length, 1400):
        site.read(plan, off, 1400)
    assert len(opened) == 1


def test_fd_cache_is_bounded_and_droppable(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = StaticSite(root, open_file_cache=2)
    opened: list[tuple[int, int]] = []  # (fd, inode): fd numbers get reused once closed
    real_open = site._open_file

    def tracking(path: bytes) -> int:
        fd = real_open(path)
        opened.append((fd, os.fstat(fd).st_ino))
        return fd

    monkeypatch.setattr(site, "_open_file", tracking)
    for name in ("hello.txt", "digits.txt", "blob.bin", "sub/inner.txt"):
        plan = site.plan(req("/" + name), NOW)
        assert body_of(site, plan)
        assert len(site.fds) <= 2
        assert sum(_still_open(*entry) for entry in opened) <= 2  # evicted ones were closed
    assert len(opened) == 4
    site.drop_caches()
    assert len(site.fds) == 0
    assert not any(_still_open(*entry) for entry in opened)


def test_fd_cache_can_be_disabled(root: Path) -> None:
    site = StaticSite(root, open_file_cache=0)
    plan = site.plan(req("/hello.txt"), NOW)
    assert body_of(site, plan) == HELLO
    assert len(site.fds) == 0


def _still_open(fd: int, ino: int) -> bool:
    try:
        return os.fstat(fd).st_ino == ino
    except OSError:
        return False


# -- hostile tokens ------------------------------------------------------------------------------------------


def token_for(origin: PlanOrigin) -> bytes:
    return ResponsePlan(0, b"", 0, origin).to_token()


@pytest.mark.parametrize(
    "origin",
    [
        PlanOrigin(Kind.FILE, 200, False, 0, b"../outside.txt", 1, 1, 1),
        PlanOrigin(Kind.FILE, 200, False, 0, b"/etc/passwd", 1, 1, 1),
        PlanOrigin(Kind.FILE, 200, False, 0, b"sub//x", 1, 1, 1),
        PlanOrigin(Kind.FILE, 200, False, 0, b"a\0b", 1, 1, 1),
        PlanOrigin(Kind.FILE, 200, False, 0, b"", 1, 1, 1),
        PlanOrigin(Kind.LISTING, 200, False, 0, b"sub/..", digest=b"x" * 16),
        PlanOrigin(Kind.FILE, 206, False, 0, b"digits.txt", 1, 1, 10, ((5, 10),)),
        PlanOrigin(Kind.FILE, 206, False, 0, b"digits.txt", 1, 1, 10, ((0, 9), (0, 9))),
        PlanOrigin(Kind.FILE, 206, False, 0, b"digits.txt", 1, 1, 10),
        PlanOrigin(Kind.FILE, 200, False, 0, b"digits.txt", 1, 1, 10, ((0, 1),)),
        PlanOrigin(Kind.FILE, 404, False, 0, b"digits.txt", 1, 1, 10),
        PlanOrigin(Kind.FIXED, 200, False, 0),
        PlanOrigin(Kind.FIXED, 404, False, 0, b"hello.txt"),
        PlanOrigin(Kind.REDIRECT, 301, False, 0, location=b"/a\r\nSet-Cookie: x"),
        PlanOrigin(Kind.REDIRECT, 301, False, 0, location=b"http://evil/"),
        PlanOrigin(Kind.LISTING, 200, False, 0, b"sub", digest=b"short"),
    ],
)
def test_invalid_tokens_are_refused(site: StaticSite, origin: PlanOrigin) -> None:
    with pytest.raises(TokenError):
        site.from_token(token_for(origin))


def test_malformed_tokens_are_refused(site: StaticSite) -> None:
    good = site.plan(req("/hello.txt"), NOW).to_token()
    for bad in (b"", b"\x02" + good[1:], good[:-1], good + b"\x00", b"\x01\x09\x00"):
        with pytest.raises(TokenError):
            site.from_token(bad)


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory: pytest.TempPathFactory) -> StaticSite:
    """One site for the hypothesis tests (function-scoped fixtures do not mix with @given)."""
    root = tmp_path_factory.mktemp("shared")
    for name, data in (("hello.txt", HELLO), ("digits.txt", DIGITS), ("blob.bin", b"b" * 5000)):
        (root / name).write_bytes(data)
    for sub in ("sub", "site"):
        (root / sub).mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "site" / "index.html").write_bytes(b"<h1>index</h1>\n")
    return StaticSite(root)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_random_tokens_only_raise_token_error(shared_site: StaticSite, data: bytes) -> None:
    site = shared_site
    try:
        plan = site.from_token(data)
    except TokenError:
        return
    assert site.from_token(plan.to_token()) == plan


@settings(max_examples=300, deadline=None)
@given(
    where=st.integers(0, 10_000),
    byte=st.integers(0, 255),
    which=st.sampled_from(range(len(REGENERATED))),
)
def test_mutated_tokens_are_refused_or_valid(
    shared_site: StaticSite, where: int, byte: int, which: int
) -> None:
    site = shared_site
    target, method, fields = REGENERATED[which]
    token = bytearray(site.plan(req(target, method, **fields), NOW).to_token())
    token[where % len(token)] = byte
    try:
        plan = site.from_token(bytes(token))
    except TokenError:
        return
    with contextlib.suppress(ContentChanged):  # a valid token for another file version
        site.read(plan, 0, 1 << 20)
