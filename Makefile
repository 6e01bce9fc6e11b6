# spnas — the two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv when missing and install what is missing; a second run installs nothing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.spnas-installed
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: setup test demo lint bench clean

# Re-installs only when a dependency file changes.
$(STAMP): requirements.txt requirements-build.txt requirements-detectron2.txt setup.py tools/install_detectron2.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-build.txt
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	bash tools/install_detectron2.sh $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

# Tests start worker processes beside each other: OpenMP threads must not spin while waiting.
test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup
	$(VENV)/bin/spnas search studies/smoke.yaml --workers 2 --set study.workdir=$(DEMO_DIR) --set data.dir=$(DEMO_DIR)/data
	@echo "Status:    $(VENV)/bin/spnas status --study smoke --storage sqlite:///$(DEMO_DIR)/spnas.db"
	@echo "Dashboard: $(VENV)/bin/optuna-dashboard sqlite:///$(DEMO_DIR)/spnas.db"

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
