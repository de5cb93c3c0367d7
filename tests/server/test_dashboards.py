"""Dashboards as code: the committed JSON is exactly what dashboards/generate.py produces, and it
follows the provisioning rules (data source from a template variable, no data source UID)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    """dashboards/generate.py as a module (the directory is not a package)."""
    name = "trickles_dashboards_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is created
    spec.loader.exec_module(mod)
    return mod


def test_committed_json_is_regenerated_identically() -> None:
    gen = load_generator()
    assert set(gen.DASHBOARDS) == {p.stem for p in (REPO / "dashboards").glob("*.json")}
    for uid in gen.DASHBOARDS:
        assert (REPO / "dashboards" / f"{uid}.json").read_text() == gen.render(uid), uid
    assert gen.main(["--check"]) == 0


def test_datasource_is_a_variable_everywhere() -> None:
    gen = load_generator()
    for uid in gen.DASHBOARDS:
        doc = json.loads(gen.render(uid))
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        refs = [p["datasource"] for p in doc["panels"]]
        refs += [t["datasource"] for p in doc["panels"] for t in p["targets"]]
        assert refs and all(r == {"type": "prometheus", "uid": "${datasource}"} for r in refs), uid
        for p in doc["panels"]:
            for t in p["targets"]:
                # Every series selector is scoped to the chosen replicas (except Jain's scalars).
                assert re.search(r'instance=~"\$instance"', t["expr"]), (uid, p["title"])


def test_check_mode_catches_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = load_generator()
    uid = next(iter(gen.DASHBOARDS))
    monkeypatch.setattr(gen, "HERE", tmp_path)
    assert gen.main([]) == 0  # writes fresh copies into tmp_path
    assert gen.main(["--check"]) == 0
    (tmp_path / f"{uid}.json").write_text("{}\n")
    assert gen.main(["--check"]) == 1
