"""The core is pure: no sockets, no trio, no clocks, no global randomness (time and keys are
arguments). Only the simulator may use a *seeded* ``random.Random``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "trickles"
FORBIDDEN = {
    "trio",
    "socket",
    "asyncio",
    "time",
    "os",
    "select",
    "selectors",
    "threading",
    "secrets",
    "subprocess",
}
SEEDED_RANDOM_OK = {"sim/network.py", "sim/reno.py", "sim/fairness.py"}
MODULES = sorted(CORE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(CORE).as_posix()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_simulator_subpackage_is_checked_too() -> None:
    assert "sim/network.py" in {_name(p) for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_core_module_is_pure(path: Path) -> None:
    bad = _imports(path) & FORBIDDEN
    assert not bad, f"{_name(path)} imports {bad}"
    if "random" in _imports(path):
        assert _name(path) in SEEDED_RANDOM_OK, f"{_name(path)} uses random outside the simulator"
        assert "random.random(" not in path.read_text() and "random.seed(" not in path.read_text()


def test_core_never_imports_the_io_layers() -> None:
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for m in mods:
                assert not m.startswith(("trickles.server", "trickles.client", "trickles.apps")), (
                    f"{_name(path)} depends on {m}"
                )
