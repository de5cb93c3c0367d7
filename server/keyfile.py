"""Key files: the master secrets a server or a cluster shares, and their rotation.

Format (text, one key per line, ``#`` comments)::

    KEY_ID HEX        the current key (seals), key id 0..255, at least 16 bytes of secret
    KEY_ID HEX        optionally the previous key (still opens, for one rotation)

A file holding only a bare hex line (what ``trickles keygen`` writes) is key id 1. Files are written
0600 through a temporary file and a rename, so a reader (a replica reloading on SIGHUP) sees the
old file or the new one, never half of one, and an existing file's permissions never survive.
Error messages name the file and the line, never the secret.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

from trickles.keys import MASTER_LEN, KeyRing, ServerKey

log = logging.getLogger("trickles.server")

MIN_LEN = 16
DEFAULT_ID = 1


class KeyFileError(Exception):
    """A key file that cannot be used (the message says why; it never contains key material)."""


def parse_keys(text: str, name: str) -> list[tuple[int, bytes]]:
    """(key id, master secret) pairs, current first."""
    lines = [(n, ln.split("#", 1)[0].split()) for n, ln in enumerate(text.splitlines(), 1)]
    lines = [(n, f) for n, f in lines if f]
    if not lines:
        raise KeyFileError(f"key file {name} holds no key (write one with `trickles keygen -o {name}`)")
    if len(lines) > 2:
        raise KeyFileError(f"key file {name} holds {len(lines)} keys: at most current and previous")
    if len(lines) == 1 and len(lines[0][1]) == 1:
        return [(DEFAULT_ID, _hex(lines[0][1][0], name, lines[0][0]))]
    out: list[tuple[int, bytes]] = []
    for n, fields in lines:
        if len(fields) != 2 or not fields[0].isdigit() or not 0 <= int(fields[0]) <= 255:
            raise KeyFileError(f"key file {name}, line {n}: expected 'KEY_ID HEX' with KEY_ID 0..255")
        out.append((int(fields[0]), _hex(fields[1], name, n)))
    if len(out) == 2 and out[0][0] == out[1][0]:
        raise KeyFileError(f"key file {name}: current and previous key share id {out[0][0]}")
    return out


def _hex(text: str, name: str, line: int) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"key file {name}, line {line}: the key is not hex") from None
    if len(key) < MIN_LEN:
        raise KeyFileError(f"key file {name}, line {line}: key too short ({len(key)} bytes, need {MIN_LEN})")
    return key


def check_mode(path: Path) -> None:
    """Refuse a key file others can write; warn if others can read it."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if mode & 0o022:
        raise KeyFileError(
            f"key file {path} is writable by group or others (mode {mode & 0o777:04o}): chmod 600 {path}"
        )
    if mode & 0o044:
        log.warning(
            "key file %s is readable by group or others (mode %04o): chmod 600 %s", path, mode & 0o777, path
        )


def load_ring(path: str | os.PathLike[str]) -> KeyRing:
    """The key ring of a key file, or KeyFileError with a message fit for the user."""
    p = Path(path)
    check_mode(p)
    try:
        text = p.read_text(encoding="ascii")
    except OSError as e:
        raise KeyFileError(f"cannot read key file {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {p} is not text (expected hex keys)") from None
    keys = [ServerKey(kid, master) for kid, master in parse_keys(text, str(p))]
    return KeyRing(keys[0], keys[1] if len(keys) > 1 else None)


def fresh_ring() -> KeyRing:
    return KeyRing(ServerKey(DEFAULT_ID, secrets.token_bytes(MASTER_LEN)))


def write_keys(path: str | os.PathLike[str], keys: list[tuple[int, bytes]], bare: bool = False) -> None:
    """Write ``keys`` (current first) to ``path``, mode 0600, atomically (temp file + rename)."""
    p = Path(path)
    if bare:
        text = keys[0][1].hex() + "\n"
    else:
        text = "# trickles keys: KEY_ID HEX, current first, then previous\n"
        text += "".join(f"{kid} {master.hex()}\n" for kid, master in keys)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent or ".")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rotate(
    path: str | os.PathLike[str], min_age_s: float, now: float, force: bool = False
) -> tuple[int, int]:
    """Make a fresh key current and the current one previous (the previous one retires).

    Refused (unless ``force``) when the file changed less than ``min_age_s`` ago: continuations sealed
    under the key about to retire may still be fresh, and their connections would break.
    Returns (new key id, previous key id).
    """
    p = Path(path)
    ring = load_ring(p)
    age = now - p.stat().st_mtime
    if age < min_age_s and not force:
        raise KeyFileError(
            f"key file {p} changed {age:.0f} s ago; rotating again before {min_age_s:.0f} s retires a key "
            "that still-fresh continuations use (use --force to do it anyway)"
        )
    cur = ring.current
    new_id = cur.key_id % 255 + 1  # 1..255, never the current id
    write_keys(p, [(new_id, secrets.token_bytes(MASTER_LEN)), (cur.key_id, cur.master)])
    return new_id, cur.key_id
