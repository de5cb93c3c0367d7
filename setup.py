"""Build: compile the protocol core with mypyc when we can, else install it as pure Python.

Everything else (metadata, packages, the ``package-dir`` mapping) is in ``pyproject.toml``. This file
only decides on extension modules:

* ``TRICKLES_MYPYC=0``: pure Python. ``TRICKLES_MYPYC=1``: compiled, and any failure is an error
  (CI sets it, so a silently pure build cannot pass for a compiled one). Unset: compiled if mypyc
  and a working C compiler with the Python headers are present, pure otherwise (said once, on
  stderr); a C compile error also falls back to pure.
* Editable installs (``pip install -e``) are always pure: setuptools would build the extensions in
  place, next to the sources, where a stale ``.so`` keeps shadowing every later edit of the ``.py``.

The compiled modules are every module under ``trickles/`` except package ``__init__`` files and the
tooling in ``PURE_DIRS`` (not on the per-packet path), so a new core module is compiled by default;
``tests/core/test_build.py`` checks that an installed build is all compiled or all pure.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PURE_DIRS = ("trickles/sim/",)
"""Tooling (the simulator, the Reno reference, the experiment helpers): not on the per-packet path."""
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install"}


def note(msg: str) -> None:
    print(f"trickles build: {msg}", file=sys.stderr)


def compiled_sources() -> list[str]:
    """Relative paths (mypyc derives module names from them) of the modules to compile."""
    paths = (p.relative_to(ROOT).as_posix() for p in (ROOT / "trickles").rglob("*.py"))
    return sorted(p for p in paths if not p.startswith(PURE_DIRS) and not p.endswith("/__init__.py"))


def c_compiler_works() -> bool:
    """Compile a tiny C file that includes Python.h, as build_ext would."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("#include <Python.h>\nint probe(void) { return 0; }\n")
        try:
            cc.compile([str(src)], output_dir=tmp, include_dirs=[sysconfig.get_paths()["include"]])
        except Exception:
            return False
    return True


class OptionalBuildExt(build_ext):
    """In auto mode a C compile failure leaves the pure-Python modules in place instead of failing."""

    required = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            if self.required:
                raise
            note(f"compiling the core failed ({e}); installing pure Python")
            self.extensions = []


def mypyc_extensions(mode: str) -> list[Extension]:
    """The mypyc extension modules, or [] for a pure build (``mode``: "0", "1" or "" for auto)."""
    if mode == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if mode == "1":
            raise SystemExit("trickles build: TRICKLES_MYPYC=1 but mypyc (mypy) is not installed") from None
        note("mypyc not available; installing pure Python")
        return []
    if not c_compiler_works():
        if mode == "1":
            raise SystemExit("trickles build: TRICKLES_MYPYC=1 but no working C compiler / Python headers")
        note("no working C compiler (or no Python headers); installing pure Python")
        return []
    # The core's one third-party import (cryptography) is typed Any whatever is installed where, so
    # every build compiles the same code; calls into it are Python calls either way. (Strict typing
    # of the sources is `make typecheck`'s job.)
    args = ["--no-site-packages", "--ignore-missing-imports", "--no-warn-return-any", *compiled_sources()]
    try:
        return list(mypycify(args, opt_level="3", group_name="trickles_core"))
    except (Exception, SystemExit) as e:  # mypyc reports a type error by exiting
        if mode == "1":
            raise
        note(f"mypyc refused the core ({e}); installing pure Python")
        return []


def main() -> None:
    mode = os.environ.get("TRICKLES_MYPYC", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"trickles build: TRICKLES_MYPYC must be 0 or 1, not {mode!r}")
    commands = set(sys.argv[1:])
    ext_modules: list[Extension] = []
    if "editable_wheel" in commands or "develop" in commands:
        if mode == "1":
            note("editable installs are pure Python (a compiled module would shadow edits); ignoring")
    elif commands & BUILD_COMMANDS:
        ext_modules = mypyc_extensions(mode)  # metadata-only commands (egg_info, dist_info) skip mypyc
    OptionalBuildExt.required = mode == "1"
    setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__
    main()
