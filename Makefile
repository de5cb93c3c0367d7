# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv if it is missing and installs the project into it.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m trickles.server.demo

lint: $(STAMP)
	$(BIN)/ruff check trickles server client apps tests bench dashboards

# mypy cannot follow setuptools' package-dir mapping, so check a symlinked tree shaped like the
# installed package (trickles.server -> server/, ...) from outside the source root.
SHIM := $(VENV)/mypy-shim
typecheck: $(STAMP)
	rm -rf $(SHIM) && mkdir -p $(SHIM)/trickles
	ln -s $(CURDIR)/trickles/*.py $(CURDIR)/trickles/py.typed $(SHIM)/trickles/
	ln -s $(CURDIR)/server $(SHIM)/trickles/server
	ln -s $(CURDIR)/client $(SHIM)/trickles/client
	ln -s $(CURDIR)/apps $(SHIM)/trickles/apps
	cd $(SHIM) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p trickles
	cd $(SHIM) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml $(CURDIR)/dashboards/generate.py

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

# The paper's evaluation (docs/EVALUATION.md): needs root (network namespaces), nginx for the
# kernel-TCP reference, and the bench extra (matplotlib, aioquic). About 20 minutes.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/core.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python -m bench.fig9
	$(BIN)/python -m bench.fig10
	$(BIN)/python -m bench.fig11
	$(BIN)/python -m bench.fig12
	$(BIN)/python -m bench.fig13
	$(BIN)/python -m bench.fig14
	$(BIN)/python -m bench.cluster_plot
	$(BIN)/python -m bench.quic

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
