"""tcurl's flags and exit codes over Trickles (UDP) against a real ``trickles serve``.

``tests/client/test_cli.py`` checks them against a TCP-only server; here every transfer is checked
to have used Trickles (``-w %{transport}`` or the ``-v`` summary), and failures that only a lossy or
slow path produces go through the link.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio

from trickles.server.link import lossy_link

from .conftest import HOST, ServerProcess, Site, file_sha256, free_port, sha256, tcurl

T = "%{transport}"


def body_of(site: Site, name: str) -> bytes:
    return (site.root / name).read_bytes()


async def test_output_and_remote_name(server: ServerProcess, site: Site, tmp_path: Path) -> None:
    code, out, err = await tcurl(
        "-sS", "-w", f"{T}\n", "-o", "a.out", server.url("1m.bin"), "-O", server.url("sub/nested.txt"),
        cwd=tmp_path,
    )  # fmt: skip
    assert (code, out) == (0, b"trickles\ntrickles\n"), err
    assert file_sha256(tmp_path / "a.out") == site.digests["1m.bin"]
    assert file_sha256(tmp_path / "nested.txt") == site.digests["sub/nested.txt"]
    code, out, _ = await tcurl("-s", server.url("mss+1.bin"))  # no -o: the body on stdout
    assert code == 0 and sha256(out) == site.digests["mss+1.bin"]


async def test_ranges(server: ServerProcess, site: Site, tmp_path: Path) -> None:
    data = body_of(site, "1m.bin")
    fmt = f"{T} %{{http_code}} %header{{content-range}}"
    part = tmp_path / "part"
    code, out, _ = await tcurl("-s", "-r", "100-199", "-w", fmt, "-o", str(part), server.url("1m.bin"))
    assert (code, out.decode()) == (0, f"trickles 206 bytes 100-199/{len(data)}")
    assert part.read_bytes() == data[100:200]
    # A range end beyond the file is cut at the file's end (the length is still known up front).
    code, out, _ = await tcurl(
        "-s", "-r", "1048000-99999999", "-w", fmt, "-o", str(part), server.url("1m.bin")
    )
    assert (code, out.decode()) == (0, f"trickles 206 bytes 1048000-{len(data) - 1}/{len(data)}")
    assert part.read_bytes() == data[1048000:]
    # Two ranges: a multipart body with both.
    code, out, _ = await tcurl("-s", "-r", "0-9,20-29", server.url("1m.bin"))
    assert code == 0 and data[0:10] in out and data[20:30] in out and b"Content-Range: bytes 20-29/" in out
    # Beyond the end: 416, so exit 22 with -f.
    code, _, err = await tcurl("-sSf", "-r", "99999999-", server.url("1m.bin"))
    assert (code, err) == (22, "tcurl: (22) The requested URL returned error: 416\n")


async def test_head(server: ServerProcess, site: Site) -> None:
    code, out, err = await tcurl("-v", "-I", server.url("1m.bin"))
    assert code == 0
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")
    assert f"Content-Length: {1 << 20}\r\n".encode() in out
    assert "> HEAD /1m.bin HTTP/1.1" in err and "* Transport: trickles," in err


async def test_fail_on_404(server: ServerProcess, tmp_path: Path) -> None:
    code, out, err = await tcurl("-f", "-w", T, "-o", "missing.out", server.url("missing"), cwd=tmp_path)
    assert (code, out) == (22, b"trickles")
    assert err == "tcurl: (22) The requested URL returned error: 404\n"
    assert not (tmp_path / "missing.out").exists()
    code, out, _ = await tcurl("-w", f" {T} %{{http_code}}", server.url("missing"))  # without -f
    assert code == 0 and out.startswith(b"<!DOCTYPE html>") and out.endswith(b"</html>\n trickles 404")
    # The later URL still runs; the exit code is the last failure's.
    code, out, _ = await tcurl("-sf", server.url("missing"), server.url("one.bin"))
    assert (code, len(out)) == (22, 1)


async def test_write_out(server: ServerProcess, site: Site, tmp_path: Path) -> None:
    url = server.url("sub/nested.txt")
    fmt = (
        "%{http_code} %{size_download} %{exitcode} %{transport} %{url} %header{content-length} "
        "%{content_type} [%{errormsg}]\\n%{stderr}%{time_total}"
    )
    code, out, err = await tcurl("-o", "x", "-w", fmt, url, cwd=tmp_path)
    size = len(body_of(site, "sub/nested.txt"))
    assert (code, out.decode()) == (0, f"200 {size} 0 trickles {url} {size} text/plain; charset=utf-8 []\n")
    assert re.fullmatch(r"\d+\.\d{6}", err)


async def test_connection_refused() -> None:
    """ICMP refuses the Trickles SYN, then TCP is refused: exit 7, each step said with -v."""
    port = free_port()
    code, _, err = await tcurl("-v", f"http://{HOST}:{port}/x")
    assert code == 7
    lines = err.splitlines()
    assert f"*   Trying {HOST}:{port} (trickles)..." in lines
    assert f"* Failed to connect to {HOST} port {port}: port unreachable; falling back to TCP" in lines
    assert re.fullmatch(
        rf"tcurl: \(7\) Failed to connect to {HOST} port {port} after \d+ ms: Connection refused", lines[-1]
    )


async def test_connect_timeout_when_nothing_answers(server: ServerProcess) -> None:
    """A path that loses everything: the Trickles probe gets no answer within --connect-timeout."""
    async with lossy_link((HOST, server.port), loss=1.0) as link:
        t0 = trio.current_time()
        code, _, err = await tcurl(
            "-sS", "--connect-timeout", "0.5", f"http://{HOST}:{link.address[1]}/1m.bin"
        )
        elapsed = trio.current_time() - t0
    assert code == 28 and "timed out" in err, err
    assert elapsed < 10
    assert link.stats.up.received >= 1 and link.stats.up.sent == 0


async def test_max_time_mid_transfer(server: ServerProcess) -> None:
    """-m cuts a Trickles transfer that a 100 kB/s link makes too slow: exit 28 with what arrived."""
    async with lossy_link((HOST, server.port), rate=100_000, queue=50) as link:
        url = f"http://{HOST}:{link.address[1]}/1m.bin"
        code, out, err = await tcurl(
            "-sS", "-m", "1", "-o", "/dev/null", "-w", f"{T} %{{size_download}}", url
        )
    transport, size = out.decode().split()
    assert (code, transport) == (28, "trickles")
    assert 0 < int(size) < 1 << 20
    assert re.fullmatch(
        rf"tcurl: \(28\) Operation timed out after \d+ milliseconds with {size} out of {1 << 20} bytes "
        r"received\n",
        err,
    )
    assert link.stats.down.bytes_sent < 200_000  # the rate limit held
