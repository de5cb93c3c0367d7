"""Directory listings: rendered with at most `limit` entries, and cached.

A listing is the one response whose body is computed from many files, so it is the costly one: a
3,000-entry directory took 20-50 ms to scan, stat and render, and a spoofed 69-byte SYN asking
for it made the server do that every time.  Two bounds keep the cost of a request small whatever
the client sends:

- the rendered body shows at most `limit` entries (directories first, then by name), followed by
  a line saying how many more there are;
- rendered bodies are cached, keyed by the directory's path and identity (device, inode, mtime,
  ctime), in an LRU bounded by total bytes.  A new, removed or renamed entry changes the
  directory's mtime and so misses the cache at once; a file rewritten in place does not, so an
  entry is also re-rendered once it is `ttl` seconds old.  At most one render per directory per
  `ttl` is therefore all a flood of requests can cause.

The listing's identity in a response plan is the digest of its body; a body that no longer matches
the digest is refused (`ContentChanged`) by the site, never spliced.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .http_semantics import mtime_s, quote_segment
from .response_plan import DIGEST_SIZE

__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_LIMIT", "DEFAULT_TTL", "Listings"]

DEFAULT_LIMIT = 1000  # entries shown per listing
DEFAULT_CACHE_BYTES = 8 << 20  # rendered bodies kept, in total
DEFAULT_TTL = 1.0  # seconds a rendered listing stands for a directory whose mtime did not change

_TEMPLATES = Path(__file__).resolve().parent / "templates"

DirIdentity = tuple[int, int, int, int]  # (dev, inode, mtime ns, ctime ns) of the directory


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    href: str
    size: str
    mtime: str


@dataclass(frozen=True, slots=True)
class _Rendered:
    identity: DirIdentity
    rendered_at: float
    digest: bytes
    body: bytes


class Listings:
    """Rendered listings of the directories below a root; `inside(real_path)` says what is."""

    def __init__(
        self,
        inside: Callable[[bytes], bool],
        *,
        limit: int = DEFAULT_LIMIT,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = max(0, limit)
        self.cache_bytes = cache_bytes
        self.ttl = ttl
        self._inside = inside
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, _Rendered] = OrderedDict()
        self._bytes = 0
        self.renders = 0  # counts scans of a directory: what a flood must not multiply
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        self._template = env.get_template("listing.html")

    def get(self, rel: bytes, full: bytes) -> tuple[bytes, bytes]:
        """(digest, body) of the listing of directory `full`, shown as "/`rel`/".

        Raises OSError if the directory cannot be read, FileNotFoundError if it now resolves
        outside the root.
        """
        st = os.stat(full)
        identity = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(rel)
            if cached is not None and cached.identity == identity and now - cached.rendered_at < self.ttl:
                self._cache.move_to_end(rel)
                return cached.digest, cached.body
        if not stat.S_ISDIR(st.st_mode) or not self._inside(os.path.realpath(full)):
            raise FileNotFoundError(errno.ENOENT, "no such directory below the root", full)
        body = self._render(rel, full)
        digest = hashlib.sha256(body).digest()[:DIGEST_SIZE]
        self._remember(rel, _Rendered(identity, now, digest, body))
        return digest, body

    def clear(self) -> None:
        """Forget every rendered listing."""
        with self._lock:
            self._cache.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        """Total size of the rendered bodies held."""
        return self._bytes

    def _remember(self, rel: bytes, rendered: _Rendered) -> None:
        if len(rendered.body) > self.cache_bytes:
            return
        with self._lock:
            old = self._cache.pop(rel, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._cache[rel] = rendered
            self._bytes += len(rendered.body)
            while self._bytes > self.cache_bytes:
                self._bytes -= len(self._cache.popitem(last=False)[1].body)

    def _render(self, rel: bytes, full: bytes) -> bytes:
        self.renders += 1
        found: list[tuple[bool, bytes, os.stat_result]] = []
        with os.scandir(full) as it:
            for item in it:
                if item.name.startswith(b"."):
                    continue  # hidden, as in nginx's autoindex
                try:
                    st = item.stat()
                    if item.is_symlink() and not self._inside(os.path.realpath(item.path)):
                        continue  # never advertise a way out of the root
                except OSError:
                    continue  # dangling symlink or vanished meanwhile
                found.append((not stat.S_ISDIR(st.st_mode), item.name, st))
        found.sort(key=lambda entry: entry[:2])  # directories first, then by raw name bytes
        shown = [_entry(name, is_file, st) for is_file, name, st in found[: self.limit]]
        title = "/" + (rel.decode("utf-8", "replace") + "/" if rel else "")
        hidden = len(found) - len(shown)
        return self._template.render(path=title, parent=bool(rel), entries=shown, hidden=hidden).encode()


def _entry(name: bytes, is_file: bool, st: os.stat_result) -> _Entry:
    slash = "" if is_file else "/"
    return _Entry(
        name=name.decode("utf-8", "replace") + slash,
        href=quote_segment(name) + slash,
        size=str(st.st_size) if is_file else "-",
        mtime=time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime_s(st.st_mtime_ns))),
    )
