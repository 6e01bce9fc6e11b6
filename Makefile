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

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup
	$(VENV)/bin/spnas data synth --out $(DEMO_DIR)/data --train 64 --val 16 --size 128 --seed 0
	$(VENV)/bin/spnas flops "BB(11,d1,d1,d1)" --width 16 --input 128x128
	$(VENV)/bin/spnas mutate "BB(11,d1,d1,d1)" --seed 0

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
