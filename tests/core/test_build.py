"""The build under test: the version and build it reports, and no half-compiled or shadowed core.

``make test`` runs the suite on the pure editable install and ``make test-compiled`` on a wheel
compiled by mypyc; these tests hold in both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import trickles

ROOT = Path(__file__).resolve().parents[2]


def _setup() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trickles_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() runs only as __main__
    return mod


def _compiled(module: str) -> bool:
    return (importlib.import_module(module).__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


def test_build_info_names_version_and_build() -> None:
    info = trickles.build_info()
    assert info == {"version": importlib.metadata.version("trickles"), "build": info["build"]}
    assert info["build"] == ("compiled" if _compiled("trickles.engine") else "pure")


def test_core_is_all_compiled_or_all_pure() -> None:
    """A partial build (or a stale extension module) would test a mix of old and new code."""
    modules = [p.removesuffix(".py").replace("/", ".") for p in _setup().compiled_sources()]
    assert "trickles.engine" in modules and "trickles.connection" in modules
    compiled = trickles.build_info()["build"] == "compiled"
    assert {m: _compiled(m) for m in modules} == dict.fromkeys(modules, compiled)
    tooling = ("network", "reno", "fairness", "memapp")  # trickles/sim/: pure in every build
    assert not any(_compiled(f"trickles.sim.{m}") for m in tooling)


def test_no_extension_module_in_the_source_tree() -> None:
    """A compiled module next to its .py shadows every later edit of the source (in-place builds)."""
    found = [p for d in ("trickles", "server", "client", "apps") for p in (ROOT / d).rglob("*.so")]
    assert found == []


def test_cli_version_names_the_build() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "trickles"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = trickles.build_info()
    assert out.stdout == f"trickles {info['version']} ({trickles.BUILDS[info['build']]})\n"
