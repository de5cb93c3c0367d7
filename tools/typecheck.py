"""Type-check the repository with mypy (``make typecheck``), naming every file by its real path.

setuptools installs ``server/`` as ``trickles.server`` (and ``client/``, ``apps/`` likewise; see
``[tool.setuptools.package-dir]`` in ``pyproject.toml``). mypy on its own names a file's module after
its directory (``server/udp.py`` -> ``server.udp``) and so cannot resolve ``trickles.server.udp``.
This script hands mypy the (path, module) pairs itself, read from that same mapping, so imports
resolve as installed and every message names the file as it is in the repository
(``server/udp.py:12``). Besides the packages it checks ``tests/``, ``bench/`` and ``tools/``.

It also fails when a directory holding an ``__init__.py`` under a mapped root is missing from
``[tool.setuptools] packages``: such a subpackage would be left out of the installed project.

Options are mypy's, from ``[tool.mypy]`` in ``pyproject.toml``. Exit status: 0 clean, 1 type
errors or a misconfigured package list, 2 a blocking error (e.g. a syntax error).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from mypy import build
from mypy.errors import CompileError
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parents[1]
EXTRA_PACKAGES = ("tests", "bench", "tools")  # checked, not installed
SKIP_DIRS = {"__pycache__", "results", "templates"}


def package_layout() -> tuple[dict[str, str], list[str]]:
    """``package-dir`` (package -> directory) and ``packages`` from pyproject.toml."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return dict(cfg["package-dir"]), list(cfg["packages"])


def package_dir(package: str, mapping: dict[str, str]) -> Path:
    """Where ``package`` lives, by the longest ``package-dir`` prefix (setuptools' rule)."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        if (base := ".".join(parts[:n])) in mapping:
            return ROOT / mapping[base] / Path(*parts[n:])
    return ROOT / Path(*parts)


def walk(package: str, directory: Path) -> tuple[list[BuildSource], list[str]]:
    """Sources of ``package`` rooted at ``directory``, and the packages found (dotted names)."""
    sources: list[BuildSource] = []
    packages: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        rel = Path(dirpath).relative_to(directory)
        dotted = ".".join([package, *rel.parts])
        if "__init__.py" in filenames:
            packages.append(dotted)
        for name in sorted(filenames):
            if name.endswith((".py", ".pyi")):
                stem = name.rsplit(".", 1)[0]
                module = dotted if stem == "__init__" else f"{dotted}.{stem}"
                path = Path(dirpath, name).relative_to(ROOT)
                sources.append(BuildSource(str(path), module, None, str(ROOT)))
    return sources, packages


def collect() -> tuple[list[BuildSource], list[str]]:
    """All sources, and the problems with the package list."""
    mapping, declared = package_layout()
    sources: list[BuildSource] = []
    problems: list[str] = []
    found: set[str] = set()
    for pkg, d in sorted(mapping.items()):
        srcs, pkgs = walk(pkg, ROOT / d)
        sources += srcs
        found.update(pkgs)
    for pkg in sorted(found - set(declared)):
        problems.append(f"pyproject.toml: package {pkg} is not in [tool.setuptools] packages")
    for pkg in sorted(set(declared) - found):  # a data-only package is a directory without code
        if not package_dir(pkg, mapping).is_dir():
            problems.append(f"pyproject.toml: package {pkg} is declared but has no directory")
    for extra in EXTRA_PACKAGES:
        sources += walk(extra, ROOT / extra)[0]
    # A module found twice (through two mappings) would be checked under one name only.
    seen: dict[str, str] = {}
    for s in sources:
        if s.module in seen:
            problems.append(f"{s.path}: module {s.module} is also {seen[s.module]}")
        seen[s.module] = str(s.path)
    return sources, problems


def main() -> int:
    os.chdir(ROOT)
    sources, problems = collect()
    for p in problems:
        print(p)
    _, options = process_options(["--config-file", str(ROOT / "pyproject.toml")], require_targets=False)
    messages: list[str] = []

    def flush(_filename: str | None, new: list[str], _serious: bool) -> None:
        messages.extend(new)
        for m in new:
            print(m, flush=True)

    try:
        build.build(sources, options, flush_errors=flush)
    except CompileError as e:
        if not messages:
            print("\n".join(e.messages))
        return 2
    errors = [m for m in messages if ": error:" in m]
    files = {m.split(":", 1)[0] for m in errors}
    if errors:
        print(f"Found {len(errors)} errors in {len(files)} files (checked {len(sources)} source files)")
    else:
        print(f"Success: no issues found in {len(sources)} source files")
    return 1 if errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
