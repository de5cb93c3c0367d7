"""Open files for the per-packet read path: a bounded fd cache and the version-checked read.

Every response names the file version it was planned for by (inode, mtime, size).  `FdCache.read`
returns bytes of that version or raises `ContentChanged`; it never returns bytes of two versions
spliced together.  The fds are cached so that a transfer of N packets opens its file once, not N
times; the cache is soft state: dropping it loses nothing but the opens.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["NOT_FOUND_ERRNOS", "OPEN_FLAGS", "ContentChanged", "FdCache", "file_identity"]

OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    # A FIFO swapped in after the stat must not block the server.
    | getattr(os, "O_NONBLOCK", 0)
)
#: errnos that mean "no such file here" (404), as opposed to an I/O failure (500).
NOT_FOUND_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})

Identity = tuple[int, int, int]  # (inode, mtime ns, size): one version of one file


class ContentChanged(Exception):
    """The file or listing behind a plan no longer matches its ETag: refuse, never splice."""


def file_identity(st: os.stat_result) -> Identity:
    """The version of a file that a stat describes."""
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(slots=True)
class _OpenFile:
    fd: int
    dev: int
    ino: int
    users: int = 0
    retired: bool = False


class FdCache:
    """Bounded LRU of read-only fds keyed by absolute path, shared by all readers of a site.

    An entry is used only while the path still stats to the same (dev, inode); an fd evicted
    while a reader holds it is closed when that reader is done, so it is never reused under it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _OpenFile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def read(
        self,
        path: bytes,
        identity: Identity,
        spans: Sequence[tuple[int, int]],
        opener: Callable[[bytes], int],
    ) -> list[bytes]:
        """The bytes of each (offset, length) span of the file version `identity` at `path`.

        With the file's fd cached (the per-packet case): one pread per span, then one stat of the
        path, which must name the fd's file (dev, inode), still that version (mtime, size), after
        the reads. Otherwise: a stat, the fd (opened with `opener`), the preads and an fstat. Every
        span must be complete either way.
        """
        entry = self._entries.get(path)
        try:
            if entry is not None and entry.ino == identity[0] and not entry.retired:
                # A synchronous read on the single-threaded packet path: nothing can retire the fd
                # before it finishes.
                data = [os.pread(entry.fd, length, offset) for offset, length in spans]
                after = os.stat(path)
                if after.st_dev != entry.dev or not stat.S_ISREG(after.st_mode):
                    raise ContentChanged(f"{path!r} changed since the plan was made")
            else:
                st = os.stat(path)
                if (st.st_ino, st.st_mtime_ns, st.st_size) != identity or not stat.S_ISREG(st.st_mode):
                    raise ContentChanged(f"{path!r} changed since the plan was made")
                with self.borrow(path, st, opener) as fd:
                    data = [os.pread(fd, length, offset) for offset, length in spans]
                    after = os.fstat(fd)
        except OSError as exc:
            if exc.errno in NOT_FOUND_ERRNOS or isinstance(exc, PermissionError):
                raise ContentChanged(f"{path!r} is gone: {exc}") from exc
            raise
        # Changed in place (or, by the path, replaced) while we read: the bytes may mix two versions.
        if (after.st_ino, after.st_mtime_ns, after.st_size) != identity:
            raise ContentChanged(f"{path!r} changed while being read")
        for piece, (_, length) in zip(data, spans, strict=True):
            if len(piece) != length:
                raise ContentChanged(f"{path!r} shrank while being read")
        return data

    @contextmanager
    def borrow(self, path: bytes, st: os.stat_result, opener: Callable[[bytes], int]) -> Iterator[int]:
        """An fd for `path` whose file is the one `st` describes (ContentChanged otherwise)."""
        entry = self._acquire(path, st)
        if entry is None:
            entry = self._open(path, st, opener)
        try:
            yield entry.fd
        finally:
            with self._lock:
                entry.users -= 1
                if entry.retired and not entry.users:
                    os.close(entry.fd)

    def clear(self) -> None:
        """Close every cached fd (those in use are closed when released)."""
        with self._lock:
            for entry in self._entries.values():
                self._retire(entry)
            self._entries.clear()

    def _acquire(self, path: bytes, st: os.stat_result) -> _OpenFile | None:
        with self._lock:
            entry = self._entries.get(path)
            if entry is None or (entry.dev, entry.ino) != (st.st_dev, st.st_ino):
                return None
            self._entries.move_to_end(path)
            entry.users += 1
            return entry

    def _open(self, path: bytes, st: os.stat_result, opener: Callable[[bytes], int]) -> _OpenFile:
        fd = opener(path)  # outside the lock: open() may block on slow storage
        try:
            fst = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
            os.close(fd)
            raise ContentChanged("file replaced while opening it")
        entry = _OpenFile(fd, fst.st_dev, fst.st_ino, users=1)
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None:
                self._retire(old)
            if self.capacity > 0:
                self._entries[path] = entry
                while len(self._entries) > self.capacity:
                    self._retire(self._entries.popitem(last=False)[1])
            else:
                entry.retired = True
        return entry

    @staticmethod
    def _retire(entry: _OpenFile) -> None:
        entry.retired = True
        if not entry.users:
            os.close(entry.fd)
