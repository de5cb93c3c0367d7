"""Suite-wide: which build is under test, and which tests ``make check`` leaves out."""

from __future__ import annotations

from pathlib import Path

import pytest

import trickles

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_report_header() -> str:
    """Name the build and where it was imported from, so a log shows what was tested."""
    info = trickles.build_info()
    build = trickles.BUILDS[info["build"]]
    return f"trickles {info['version']}, {build}, from {Path(trickles.__file__).parent}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests in tests/integration start real processes: all are ``slow`` (still run by make test)."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.slow)
