# spnas — the two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv when missing and install what is missing; a second run installs nothing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.spnas-installed
PYTEST_ARGS ?=
RESUME ?=

.PHONY: setup test demo lint bench bench-search gpu-check clean

# Re-installs only when a dependency file changes.
$(STAMP): requirements.txt requirements-build.txt requirements-detectron2.txt setup.py tools/install_detectron2.sh tools/install_chromium.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-build.txt
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	bash tools/install_detectron2.sh $(PY)
	bash tools/install_chromium.sh
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

# Tests start worker processes beside each other: OpenMP threads must not spin while waiting.
# TEST_PROCESSES pytest processes (pytest-xdist) share the tests; tests/conftest.py groups them
# (a module per process, the modules that time worker processes one at a time), heaviest first.
TEST_PROCESSES ?= 2
test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n $(TEST_PROCESSES) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The main job: an SP-NAS search on synthetic data (SQLite, 2 local workers), then its summary.
demo: setup
	$(VENV)/bin/spnas search studies/demo.yaml --workers 2
	$(VENV)/bin/spnas status --study demo --storage sqlite:///runs/demo/spnas.db
	$(VENV)/bin/spnas report --study demo --storage sqlite:///runs/demo/spnas.db --out runs/demo/report
	@echo "Dashboard (figures and trial notes): $(VENV)/bin/spnas dashboard --storage sqlite:///runs/demo/spnas.db"
	@echo "Best network: $(VENV)/bin/spnas export --study demo --storage sqlite:///runs/demo/spnas.db --out runs/demo/export"

# Benchmarks (their results: docs/benchmarks.md): each writes
# benchmarks/results/<name>.json. About 30 minutes on a 2-core CPU; run nothing else meanwhile.
# overhead --storage postgresql and scaling start a PostgreSQL server (the binaries of the
# `postgresql` Debian package, as .ci/run installs them).
bench: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/morphism.py
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/overhead.py --storage sqlite
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/overhead.py --storage postgresql
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/scaling.py
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/parity.py

# The search's claims (docs/benchmarks.md): Table 9 (SP-NAS against random search, the seed and
# unselected random networks, paired 95 % intervals over disjoint verification seeds) and
# Fig. 4a (rank correlation of search values with retrained AP). Hours each on a 2-core CPU
# (search_vs_random about 6-8 h). Table 9's budgets are CPU seconds, which other load barely
# changes (it slows the run); interrupted, it goes on with `make bench-search RESUME=--resume`.
bench-search: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/search_vs_random.py --profiles small-objects large-objects --seeds 3 --verify-seeds 5 --unselected 5 --out benchmarks/results/search_vs_random-disjoint.json --workdir runs/search-vs-random $(RESUME)
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/ranking.py --workdir runs/ranking

# On a machine with a GPU (under 8 minutes): the smoke search on CUDA with 2 workers sharing it,
# SPNet-R50 against detectron2's R50-FPN images/s at 800x1333 with AMP off and on, peak memory.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf runs .pytest_cache .ruff_cache *.egg-info
