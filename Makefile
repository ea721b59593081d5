# Two entry points: `make reproduce` (every experiment, then every figure, then the paper)
# and `make test` (the default test suite). Both create .venv/ on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: reproduce test test-slow experiments figures paper benchmarks lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,experiments]"
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m experiments.run_all
	$(PY) -m figures.run_all
	$(PY) -m paper.build

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

benchmarks: $(STAMP)
	$(PY) -m benchmarks.merge_ops
	$(PY) -m benchmarks.width

lint: $(STAMP)
	$(VENV)/bin/ruff check mergetheory tests experiments figures benchmarks

clean:
	rm -rf $(VENV) results/*.npz results/*.json figures/out
