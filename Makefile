# The set-up commands of the README: `make demo`, `make check`, `make test`, `make test-compiled`.
# Each creates its virtualenv if it is missing and installs the project into it.
#
# Two builds, two virtualenvs:
#   .venv           editable install, pure Python: what you edit is what runs (`make check`, `make test`)
#   .venv-compiled  a wheel with the core compiled by mypyc, rebuilt from the current sources when
#                   they change (`make test-compiled`, `make bench-core`); needs a C compiler
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CVENV   := .venv-compiled
CBIN    := $(CVENV)/bin
CSTAMP  := $(CVENV)/.installed
# Everything a wheel is built from: a change anywhere rebuilds the compiled install.
SOURCES := $(shell find trickles server client apps -type f \( -name '*.py' -o -name '*.html' -o -name py.typed \))
CODE    := trickles server client apps tests bench tools dashboards setup.py
# pip -q still shows the build backend's warnings; this one is setuptools telling every editable
# install of a package-dir mapping that a same-named directory could shadow it (ours is the source).
NOWARN  := PYTHONWARNINGS='ignore:Editable installation'

.PHONY: demo check test test-compiled lint format typecheck unit unit-fast bench bench-core clean fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(NOWARN) TRICKLES_MYPYC=0 $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(CBIN)/python:
	$(PY) -m venv $(CVENV)
	$(CBIN)/python -m pip install --quiet --upgrade pip

# TRICKLES_MYPYC=1: a build that cannot compile fails instead of quietly installing pure Python.
# The wheel is built in build/. Its copy of the package is emptied first: setuptools packs whatever it
# holds, so a module renamed or deleted in the sources would still ship. mypyc's C, the objects and
# the compiled core library stay, so an unchanged core is not compiled again.
$(CSTAMP): pyproject.toml setup.py $(SOURCES) | $(CBIN)/python
	rm -rf build/lib*/trickles build/bdist.*
	TRICKLES_MYPYC=1 $(CBIN)/python -m pip install --quiet '.[test]'
	$(CBIN)/trickles --version | grep -q 'compiled (mypyc)' || { $(CBIN)/trickles --version; exit 1; }
	touch $(CSTAMP)

demo: $(STAMP)
	$(BIN)/python -m trickles.server.demo

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

format: $(STAMP)
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

# mypy on its own cannot follow setuptools' package-dir mapping; tools/typecheck.py explains.
typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

unit: $(STAMP)
	$(BIN)/pytest

unit-fast: $(STAMP)
	$(BIN)/pytest -q -m 'not slow'

# The quick loop while editing: lint, types and the tests not marked slow.
check: lint typecheck unit-fast

test: lint typecheck unit

# The whole suite against the compiled wheel. The tests run from the repository, so keep the source
# tree off sys.path (PYTHONSAFEPATH: no cwd for `python -m` in subprocesses; --import-mode=append:
# pytest appends the repository root): `trickles` must come from the compiled install.
test-compiled: $(CSTAMP)
	PYTHONSAFEPATH=1 $(CBIN)/pytest --import-mode=append

# The fuzzers' long mode: 100,000 inputs per target (make test runs a few thousand).
fuzz: $(STAMP)
	TRICKLES_FUZZ_N=100000 $(BIN)/pytest -q -s tests/fuzz

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
	$(BIN)/python bench/cluster.py --figure failover
	$(BIN)/python bench/cluster.py --figure balance
	$(BIN)/python -m bench.fig9
	$(BIN)/python -m bench.fig10
	$(BIN)/python -m bench.fig11
	$(BIN)/python -m bench.fig12
	$(BIN)/python -m bench.fig13
	$(BIN)/python -m bench.fig14
	$(BIN)/python -m bench.cluster_plot
	$(BIN)/python -m bench.quic

# Both builds side by side (bench/core.py runs itself again under the other interpreter).
bench-core: $(STAMP) $(CSTAMP)
	$(BIN)/python bench/core.py --other $(CBIN)/python

clean:
	rm -rf $(VENV) $(CVENV) build dist .pytest_cache .mypy_cache .ruff_cache
	find trickles server client apps -name '*.so' -delete
