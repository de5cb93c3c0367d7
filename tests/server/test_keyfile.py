"""Key files: 0600 always, clear refusals, rotation, and in-place reload of a running ring."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trickles.keys import KeyRing, ServerKey
from trickles.server.keyfile import KeyFileError, load_ring, rotate, write_keys

TRICKLES = str(Path(sys.executable).parent / "trickles")
HEX = "ab" * 32


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_keygen_onto_an_existing_world_readable_file_leaves_it_0600(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("old\n")
    key.chmod(0o644)
    r = subprocess.run([TRICKLES, "keygen", "-o", str(key)], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert mode(key) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    assert not [p for p in tmp_path.iterdir() if p.name != "key"]  # no temp file left behind


@pytest.mark.parametrize(
    ("content", "chmod", "message"),
    [
        (None, 0o600, "cannot read key file"),
        ("", 0o600, "holds no key"),
        ("zz" * 32, 0o600, "not hex"),
        ("ab" * 8 + "a", 0o600, "not hex"),
        ("ab" * 15, 0o600, "too short (15 bytes"),
        (HEX, 0o622, "writable by group or others"),
        (f"1 {HEX}\n1 {HEX}\n", 0o600, "share id 1"),
        (f"300 {HEX}\n", 0o600, "KEY_ID 0..255"),
        (f"1 {HEX}\n2 {HEX}\n3 {HEX}\n", 0o600, "at most current and previous"),
    ],
)
def test_serve_refuses_bad_key_files_with_exit_2(
    tmp_path: Path, content: str | None, chmod: int, message: str
) -> None:
    key = tmp_path / "key"
    if content is not None:
        key.write_text(content)
        key.chmod(chmod)
    r = subprocess.run(
        [TRICKLES, "serve", str(tmp_path), "--listen", "127.0.0.1:0", "--key-file", str(key)],
        capture_output=True,
        timeout=30,
    )
    err = r.stderr.decode()
    assert r.returncode == 2 and message in err and "Traceback" not in err, err
    assert "ab" * 8 not in err  # never the secret


def test_world_readable_key_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "key"
    key.write_text(HEX)
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        ring = load_ring(key)
    assert ring.current.key_id == 1 and "readable by group or others" in caplog.text
    assert HEX not in caplog.text


def test_rotation_keeps_the_previous_key_and_refuses_within_a_horizon(tmp_path: Path) -> None:
    key = tmp_path / "key"
    write_keys(key, [(1, bytes.fromhex(HEX))], bare=True)
    now = key.stat().st_mtime
    with pytest.raises(KeyFileError, match="--force"):
        rotate(key, 125.0, now + 10)
    assert rotate(key, 125.0, now + 200) == (2, 1)
    ring = load_ring(key)
    assert ring.key_ids == (2, 1) and ring.get(1).master == bytes.fromhex(HEX) and mode(key) == 0o600
    assert rotate(key, 125.0, 0, force=True) == (3, 2)
    assert load_ring(key).key_ids == (3, 2)  # key 1 retired


def test_replace_updates_every_holder_of_the_ring_in_place() -> None:
    k1 = ServerKey(1, os.urandom(32))
    ring = KeyRing(k1)
    holder = ring  # the engine and the app hold the same object
    k2 = ServerKey(2, os.urandom(32))
    ring.replace(KeyRing(k2, ServerKey(1, k1.master)))
    assert holder.current is k2 and holder.previous is k1  # unchanged key keeps its object
    assert holder.get(1) is k1 and holder.key_ids == (2, 1)
