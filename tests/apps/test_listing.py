"""Directory listings under hostile load: the entries shown are capped and renders are cached.

A spoofed 69-byte SYN can ask for a listing; before the cache every such request scanned, stat'ed
and rendered the whole directory (3,000 entries: 20 ms and more per SYN).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest

from trickles.apps.http_head import HttpRequest
from trickles.apps.listing import Listings
from trickles.apps.static import ContentChanged, StaticSite

NOW = 1_700_000_000.0
MANY = 3000


def req(target: str) -> HttpRequest:
    return HttpRequest("GET", target, "1.1", (("host", "x"),))


def body(site: StaticSite, target: str) -> bytes:
    plan = site.plan(req(target), NOW)
    assert plan.status == 200
    return site.read(plan, len(plan.header_bytes), plan.body_length)


def links(page: bytes) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'<a href="([^"]*)">', page.decode())]


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big")
    big = root / "big"
    big.mkdir()
    for i in range(MANY):
        os.close(os.open(big / f"f{i:05d}.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    (big / "zz-dir").mkdir()  # sorts first however many files there are: directories lead
    return root


def test_entries_shown_are_capped(big_root: Path) -> None:
    page = body(StaticSite(big_root), "/big/")
    shown = links(page)
    assert shown[:3] == ["../", "zz-dir/", "f00000.txt"]
    assert len(shown) == 1 + 1000 and shown[-1] == "f00998.txt"
    assert f"{MANY + 1 - 1000} more not shown" in page.decode()


def test_cap_is_configurable_and_small_listings_have_no_note(big_root: Path) -> None:
    page = body(StaticSite(big_root, listing_limit=10), "/big/")
    assert len(links(page)) == 1 + 10 and f"{MANY + 1 - 10} more not shown" in page.decode()
    assert "not shown" not in body(StaticSite(big_root), "/").decode()


def test_second_plan_reuses_the_render(big_root: Path) -> None:
    site = StaticSite(big_root)
    first = site.plan(req("/big/"), NOW)
    for _ in range(50):  # a flood of SYNs for the same listing
        assert site.plan(req("/big/"), NOW).to_token() == first.to_token()
    assert site.read(first, 0, first.total_length).endswith(b"</html>")
    assert site.listings.renders == 1


def test_new_entry_is_listed_at_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    site = StaticSite(tmp_path)
    old = site.plan(req("/d/"), NOW)
    (tmp_path / "d" / "new.txt").write_bytes(b"n")  # changes the directory's mtime
    assert "new.txt" in links(body(site, "/d/"))
    assert site.listings.renders == 2
    with pytest.raises(ContentChanged):  # the old plan is refused, never spliced
        site.read(old, len(old.header_bytes), 10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_file_rewritten_in_place_shows_after_the_ttl(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"1")
    clock = FakeClock()
    listings = Listings(lambda real: True, ttl=1.0, clock=clock)
    full = os.fsencode(tmp_path)
    _, first = listings.get(b"", full)
    (tmp_path / "a.txt").write_bytes(b"12345")  # same directory mtime: only the TTL notices
    clock.now += 0.5
    assert listings.get(b"", full)[1] == first
    clock.now += 0.6
    again = listings.get(b"", full)[1]
    assert again != first and ">5<" in again.decode()
    assert listings.renders == 2


def test_cache_is_bounded_by_bytes_lru(tmp_path: Path) -> None:
    for name in "abcd":
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_bytes(b"x")
    full = os.fsencode(tmp_path)
    one = len(Listings(lambda real: True).get(b"a", full + b"/a")[1])
    listings = Listings(lambda real: True, cache_bytes=2 * one + one // 2)  # room for two
    for entry in (b"a", b"b", b"a", b"c"):  # "a" is used again, so "b" is the oldest
        listings.get(entry, full + b"/" + entry)
    assert listings.cached_bytes <= 2 * one + one // 2 and len(listings) == 2
    renders = listings.renders
    listings.get(b"a", full + b"/a")
    assert listings.renders == renders  # kept: recently used
    listings.get(b"b", full + b"/b")
    assert listings.renders == renders + 1  # evicted
    huge = Listings(lambda real: True, cache_bytes=one - 1)
    huge.get(b"d", full + b"/d")
    assert len(huge) == 0 and huge.cached_bytes == 0  # larger than the whole budget: not kept


def test_directory_leading_outside_is_not_listed(tmp_path: Path) -> None:
    inside = tmp_path / "root"
    inside.mkdir()
    (tmp_path / "secret").mkdir()
    site = StaticSite(inside)
    listings = site.listings
    with pytest.raises(FileNotFoundError):
        listings.get(b"out", os.fsencode(tmp_path / "secret"))
    assert listings.renders == 0
