"""The watermarking server end to end: a real ``trickles serve --watermark`` process, tcurl over UDP,
curl over TCP, and ``trickles watermark detect`` as a real subprocess."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from PIL import Image

from tests.apps.test_watermark import photo
from trickles.client.endpoint import Endpoint
from trickles.server.link import lossy_link

from .conftest import CURL, HOST, TCURL, TRICKLES, ServerProcess, Site, run, tcurl


@pytest.fixture(scope="module")
def wm_server(
    site: Site, key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    images = tmp_path_factory.mktemp("images")
    photo(500, 375).save(images / "photo.jpg", "JPEG", quality=92, progressive=True)
    (images / "fake.jpg").write_bytes(b"GIF89a not a jpeg at all")
    log = tmp_path_factory.mktemp("wm-server") / "server.log"
    srv = ServerProcess(site.root, key_file, log, "--watermark", str(images))
    try:
        srv.start()
        yield srv, images
    finally:
        srv.stop()


def test_served_over_udp_and_tcp_decoded_and_detected(
    wm_server: tuple[ServerProcess, Path], key_file: Path, tmp_path: Path
) -> None:
    srv, images = wm_server
    udp, tcp = tmp_path / "udp.jpg", tmp_path / "tcp.jpg"
    r = run([TCURL, "-s", "-S", "-f", "-o", str(udp), srv.url("wm/photo.jpg")])
    assert r.returncode == 0, r.stderr
    r = run([CURL, "-s", "-S", "-f", "-o", str(tcp), srv.url("wm/photo.jpg")])
    assert r.returncode == 0, r.stderr
    data = udp.read_bytes()
    assert data == tcp.read_bytes()  # one client identity (the IP), one copy, whichever transport
    assert data != (images / "photo.jpg").read_bytes()
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.size == (500, 375) and "progression" not in im.info  # progressive in, baseline out
    r = run([TRICKLES, "watermark", "detect", str(udp), "--key-file", str(key_file)])
    assert r.returncode == 0, r.stderr
    assert f"watermarked for {HOST}" in r.stdout.decode()
    r = run([TRICKLES, "watermark", "detect", str(images / "photo.jpg"), "--key-file", str(key_file)])
    assert r.returncode == 1 and b"no watermark found" in r.stdout


def test_bad_sources_and_bad_detector_input(
    wm_server: tuple[ServerProcess, Path], key_file: Path, tmp_path: Path
) -> None:
    srv, images = wm_server
    r = run([TCURL, "-s", "-i", srv.url("wm/fake.jpg")])
    assert r.stdout.startswith(b"HTTP/1.1 415 ") and b"not a JPEG" in r.stdout
    r = run([TRICKLES, "watermark", "detect", str(images / "fake.jpg"), "--key-file", str(key_file)])
    assert r.returncode == 2 and b"not a JPEG" in r.stderr and b"Traceback" not in r.stderr
    r = run([TRICKLES, "watermark", "detect", str(tmp_path / "missing.jpg"), "--key-file", str(key_file)])
    assert r.returncode == 2 and b"cannot read" in r.stderr
    r = run([TRICKLES, "watermark", "detect", str(images / "photo.jpg")])
    assert r.returncode == 2 and b"--key-file" in r.stderr


async def test_through_the_lossy_link_byte_identical(
    wm_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    """Loss, reordering and duplication on real sockets: retransmitted packets are coded again from
    checkpoints (by whichever request reaches the server), and the copy is the clean one, byte for
    byte (the link relays from 127.0.0.1 too: same identity, same copy)."""
    srv, _ = wm_server
    clean, lossy = tmp_path / "clean.jpg", tmp_path / "lossy.jpg"
    code, _, err = await tcurl("-sS", "-o", str(clean), srv.url("wm/photo.jpg"))
    assert code == 0, err
    async with lossy_link((HOST, srv.port), seed=21, loss=0.05, reorder=0.05, duplicate=0.02) as link:
        url = f"http://{link.address[0]}:{link.address[1]}/wm/photo.jpg"
        code, out, err = await tcurl("-sS", "-w", "%{num_retransmits}", "-o", str(lossy), url)
    assert code == 0, err
    assert int(out.decode()) > 0 and link.stats.down.lost > 0
    assert lossy.read_bytes() == clean.read_bytes()


async def test_request_in_the_syn_waits_for_the_handshake(wm_server: tuple[ServerProcess, Path]) -> None:
    """SYN data comes from a claimed address: the server does not spend a coding pass on it, but
    asks for the request again; it is planned once the handshake has verified the address."""
    srv, _ = wm_server
    head = f"GET /wm/photo.jpg HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    with trio.fail_after(30):
        ep = await Endpoint.open(HOST, srv.port, first_request=head)
        try:
            r0 = ep.conn.regions[0]
            assert not r0.ucont and r0.input_ucont  # no plan from the SYN, a "send again"
            await ep.run_until(lambda: r0.complete or r0.error is not None)
            data = ep.conn.read(0)
        finally:
            ep.close()
    assert r0.error is None and data.startswith(b"HTTP/1.1 200 OK\r\n")
    Image.open(io.BytesIO(data.split(b"\r\n\r\n", 1)[1])).load()
