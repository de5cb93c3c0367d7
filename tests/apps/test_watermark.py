"""The watermarking site: resumable coding, valid JPEGs, invisible marks that name the client."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from trickles.apps.http_head import HttpRequest
from trickles.apps.response_plan import TokenError
from trickles.apps.watermark.detect import detect
from trickles.apps.watermark.entropy import BitState, encode_span
from trickles.apps.watermark.jfif import EOI
from trickles.apps.watermark.plan import WmPlan, decode
from trickles.apps.watermark.site import MountedSite, WatermarkConfig, WatermarkSite
from trickles.keys import KeyRing, ServerKey

KEY = ServerKey(1, b"k" * 32)
ALICE = bytes([10, 0, 0, 1, 0x13, 0x88])
BOB = bytes([192, 168, 7, 9, 0x13, 0x89])
NOW = 1.7e9


def photo(w: int, h: int, seed: int = 1, mode: str = "RGB") -> Image.Image:
    """Smooth structure plus a little noise: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [
        128 + 100 * np.sin(xx / 30.0) * np.cos(yy / 20.0),
        128 + 60 * np.sin(xx / 50.0 + yy / 70.0),
        128 + 60 * np.cos(yy / 40.0),
    ]
    a = np.stack(planes, -1) + rng.normal(0, 6, (h, w, 3))
    im = Image.fromarray(a.clip(0, 255).astype(np.uint8), "RGB")
    return im.convert(mode) if mode != "RGB" else im


def save(root: Path, name: str, im: Image.Image, **kw: object) -> None:
    im.save(root / name, "JPEG", **kw)


def get(site: WatermarkSite, name: str, client: bytes = ALICE, method: str = "GET") -> WmPlan:
    return site.plan(HttpRequest(method, f"/wm/{name}", "1.1"), NOW, client, name)


def body(site: WatermarkSite, plan: WmPlan) -> bytes:
    return site.read(plan, len(plan.header_bytes), plan.body_length)


def one_pass(site: WatermarkSite, plan: WmPlan) -> bytes:
    """The whole response coded in one call, without checkpoints or chunks."""
    o = plan.wm
    src = site._current_source(o)
    blocks = src.coefs.copy()
    site._marker(src, o.identity, site._key_of(o))(blocks, 0)
    scan = encode_span(blocks, site._layout(src), 0, BitState.initial(o.geometry.n_comp)).data
    return plan.header_bytes + plan.jpeg_head + scan + EOI


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def unmarked(site: WatermarkSite, plan: WmPlan) -> Image.Image:
    o = plan.wm
    src = site._current_source(o)
    scan = encode_span(src.coefs, site._layout(src), 0, BitState.initial(o.geometry.n_comp)).data
    return Image.open(io.BytesIO(plan.jpeg_head + scan + EOI))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wm")
    save(root, "p420.jpg", photo(333, 217), quality=92, subsampling=2)
    save(root, "p444.jpg", photo(160, 120, 2), quality=90, subsampling=0)
    save(root, "p422.jpg", photo(99, 77, 3), quality=85, subsampling=1)
    save(root, "gray.jpg", photo(201, 103, 4, "L"), quality=90)
    save(root, "tiny.jpg", photo(1, 1, 5), quality=90)
    save(root, "rst.jpg", photo(120, 90, 6), quality=90, restart_marker_blocks=3)
    save(root, "prog.jpg", photo(150, 100, 7), quality=90, progressive=True)
    save(root, "cmyk.jpg", photo(64, 48, 8).convert("CMYK"), quality=90)
    return root


@pytest.mark.parametrize("name", ["p420.jpg", "p444.jpg", "p422.jpg", "gray.jpg", "tiny.jpg", "rst.jpg",
                                  "prog.jpg", "cmyk.jpg"])  # fmt: skip
@pytest.mark.parametrize("restart", [0, 5])
def test_outputs_are_baseline_jpegs_equal_to_one_pass(images: Path, name: str, restart: int) -> None:
    site = WatermarkSite(images, KEY, WatermarkConfig(restart=restart, min_interval=256))
    plan = get(site, name)
    assert plan.status == 200, plan.header_bytes
    data = body(site, plan)
    assert plan.header_bytes + data == one_pass(site, plan)
    assert b"\xff\xc0" in data[:600] and b"\xff\xc2" not in data[:600]  # baseline, never progressive
    assert (b"\xff\xdd" in data[:600]) == bool(restart)
    out = Image.open(io.BytesIO(data))
    out.load()
    with Image.open(images / name) as src:
        size, mode = src.size, src.mode
    assert out.size == size
    assert out.mode == ("L" if mode == "L" else "RGB")
    assert psnr(out, unmarked(site, plan)) >= 38.0


def test_subsampling_follows_the_source(images: Path) -> None:
    site = WatermarkSite(images, KEY)
    for name, hv in (("p420.jpg", (2, 2)), ("p444.jpg", (1, 1)), ("p422.jpg", (2, 1))):
        g = get(site, name).wm.geometry
        assert (g.h, g.v) == hv


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), restart=st.sampled_from([0, 1, 7]), name=st.sampled_from(["p420.jpg", "gray.jpg"]))
def test_any_range_regenerates_exactly(images: Path, data: st.DataObject, restart: int, name: str) -> None:
    site = WatermarkSite(images, KEY, WatermarkConfig(restart=restart, min_interval=64, span_cache_bytes=0))
    plan = get(site, name)
    whole = one_pass(site, plan)
    assert len(plan.wm.checkpoints) > 4
    for _ in range(5):
        start = data.draw(st.integers(0, plan.total_length))
        length = data.draw(st.integers(0, 3000))
        assert site.read(plan, start, length) == whole[start : start + length]
    ranges = [(data.draw(st.integers(0, plan.total_length)), 1400) for _ in range(4)]
    assert site.read_many(plan, ranges) == [whole[o : o + n] for o, n in ranges]


def test_checkpoints_are_bounded_and_the_token_round_trips(images: Path) -> None:
    site = WatermarkSite(images, KEY, WatermarkConfig(max_checkpoints=8, min_interval=64))
    plan = get(site, "p420.jpg")
    assert 1 < len(plan.wm.checkpoints) <= 8
    assert site.from_token(plan.to_token()) == plan
    assert len(plan.to_token()) < 8 * 12 + 64


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_tokens_are_token_errors(blob: bytes) -> None:
    try:
        decode(b"\x57" + blob)
    except TokenError:
        pass


def test_mutated_tokens_never_decode_into_bad_plans(images: Path) -> None:
    site = WatermarkSite(images, KEY)
    token = get(site, "p420.jpg").to_token()
    for i in range(len(token)):
        for flip in (1, 0x80):
            t = bytearray(token)
            t[i] ^= flip
            try:
                o = decode(bytes(t))
            except TokenError:
                continue
            assert o.checkpoints[0].offset == 0  # whatever decodes is internally consistent


def test_two_clients_get_different_copies_each_naming_its_client(images: Path) -> None:
    site = WatermarkSite(images, KEY)
    a, b = body(site, get(site, "p420.jpg", ALICE)), body(site, get(site, "p420.jpg", BOB))
    assert a != b
    for data, who in ((a, ALICE), (b, BOB)):
        Image.open(io.BytesIO(data)).load()
        found = detect(data, KEY)
        assert found is not None and found.identity == who[:4]
    assert detect(a, ServerKey(1, b"z" * 32)) is None  # another server's key reads nothing
    assert detect((images / "p420.jpg").read_bytes(), KEY) is None  # the source carries no mark


def test_ipv6_and_mapped_identities(images: Path) -> None:
    site = WatermarkSite(images, KEY)
    v6 = bytes.fromhex("20010db8000000000000000000000042") + b"\x00\x50"
    found = detect(body(site, get(site, "p444.jpg", v6)), KEY)
    assert found is not None and found.address == "2001:db8::42"
    mapped = b"\x00" * 10 + b"\xff\xff" + ALICE[:4] + b"\x00\x50"
    assert get(site, "p444.jpg", mapped).wm.identity == ALICE[:4]


def test_no_identity_no_image(images: Path) -> None:
    site = WatermarkSite(images, KEY)
    assert get(site, "p420.jpg", b"").status == 403
    assert get(site, "p420.jpg", method="POST").status == 405
    head = get(site, "p420.jpg", method="HEAD")
    assert head.status == 200 and head.body_length == 0 and b"Content-Length: " in head.header_bytes


def test_hostile_sources_get_clear_errors(tmp_path: Path) -> None:
    good = io.BytesIO()
    photo(64, 48).save(good, "JPEG")
    raw = good.getvalue()
    sof = raw.index(b"\xff\xc0")
    twelve = bytearray(raw)
    twelve[sof + 4] = 12
    bomb = bytearray(raw)
    bomb[sof + 5 : sof + 9] = b"\xea\x60\xea\x60"  # 60000 x 60000 in the header
    (tmp_path / "twelve.jpg").write_bytes(bytes(twelve))
    (tmp_path / "bomb.jpg").write_bytes(bytes(bomb))
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.jpg").write_bytes(b"hello, not an image\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    photo(20, 20).save(tmp_path / "png.jpg", "PNG")
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "notes.txt").write_bytes(raw)
    site = WatermarkSite(tmp_path, KEY, WatermarkConfig(max_pixels=1_000_000))
    expect = {"twelve.jpg": 415, "bomb.jpg": 413, "cut.jpg": 500, "text.jpg": 415, "empty.jpg": 415}
    expect |= {"png.jpg": 415, "dir.jpg": 403, "notes.txt": 404, "missing.jpg": 404, "../x.jpg": 404}
    for name, status in expect.items():
        plan = get(site, name)
        assert plan.status == status, name
        text = site.read(plan, 0, plan.total_length)
        assert text.endswith(b"\n") and str(status).encode() in text.split(b"\r\n\r\n", 1)[1]
        assert site.from_token(plan.to_token()) == plan


def test_changed_source_is_refused_not_spliced(tmp_path: Path) -> None:
    from trickles.apps.file_cache import ContentChanged

    save(tmp_path, "a.jpg", photo(80, 64), quality=90)
    site = WatermarkSite(tmp_path, KEY)
    plan = get(site, "a.jpg")
    save(tmp_path, "a.jpg", photo(80, 64, 9), quality=80)
    site.drop_caches()
    with pytest.raises(ContentChanged):
        site.read(plan, 0, plan.total_length)


def test_sources_are_cached_within_a_byte_bound(images: Path) -> None:
    site = WatermarkSite(images, KEY, WatermarkConfig(source_cache_bytes=300_000))
    for name in ("p444.jpg", "gray.jpg", "p444.jpg", "p420.jpg"):
        get(site, name)
    assert site.sources.bytes <= 300_000
    assert site.sources.hits >= 1 and site.sources.evictions >= 1


def test_mounted_site_routes_by_prefix_and_token(images: Path, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hi\n")
    site = MountedSite(tmp_path, WatermarkSite(images, KEY))
    wm = site.plan(HttpRequest("GET", "/wm/p444.jpg", "1.1"), NOW, ALICE)
    static = site.plan(HttpRequest("GET", "/hello.txt", "1.1"), NOW, ALICE)
    assert isinstance(wm, WmPlan) and not isinstance(static, WmPlan)
    assert site.from_token(wm.to_token()) == wm and site.from_token(static.to_token()) == static
    assert site.read(static, 0, static.total_length).endswith(b"\r\n\r\nhi\n")
    assert site.read(wm, wm.total_length - 2, 2) == EOI


def test_large_image(tmp_path: Path) -> None:
    w, h = 4000, 3000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([xx * (255 / w), yy * (255 / h), (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "big.jpg", quality=75)
    site = WatermarkSite(tmp_path, KEY)
    plan = get(site, "big.jpg")
    assert plan.status == 200
    out = Image.open(io.BytesIO(body(site, plan)))
    out.load()
    assert out.size == (w, h)


def test_a_replica_coding_differently_is_refused_not_spliced(images: Path) -> None:
    from trickles.apps.file_cache import ContentChanged

    site = WatermarkSite(images, KEY, WatermarkConfig(span_cache_bytes=0))
    plan = get(site, "p444.jpg")
    other = WatermarkSite(images, KEY, WatermarkConfig(span_cache_bytes=0))
    src = other._current_source(plan.wm)
    # As if its DCT had rounded differently: a sign flip keeps every code length, so the coded
    # interval has the right length and only the check can tell.
    slot, pos = next((s, p) for s in (-1, -2) for p in range(1, 64) if src.coefs[-1, s, p])
    src.coefs[-1, slot, pos] *= -1
    end = plan.total_length
    assert site.read(plan, end - 100, 100) != b""
    with pytest.raises(ContentChanged):
        other.read(plan, end - 100, 100)


def test_copies_follow_the_key_that_marked_them(images: Path) -> None:
    """A key-file reload: copies planned before it are regenerated with their own key while the ring
    still holds it (as previous), and refused once it is gone; new copies use the new key."""
    from trickles.apps.file_cache import ContentChanged

    ring = KeyRing(KEY)
    site = WatermarkSite(images, ring, WatermarkConfig(span_cache_bytes=0))
    old = get(site, "p444.jpg")
    new_key = ServerKey(2, b"n" * 32)
    ring.replace(KeyRing(new_key, KEY))
    assert old.header_bytes + body(site, old) == one_pass(site, old)
    fresh = get(site, "p444.jpg")
    assert fresh.wm.key_id == 2 and detect(body(site, fresh), new_key) is not None
    ring.replace(KeyRing(ServerKey(3, b"t" * 32), new_key))
    with pytest.raises(ContentChanged):
        body(site, old)
