# Two entry points: `make reproduce` (every experiment, then every figure, then the paper)
# and `make test` (the default test suite). Both create .venv/ on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: reproduce test test-slow test-multiprocess experiments figures paper benchmarks lint clean

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

# two worker processes (pytest-xdist), one test file per worker at a time (module fixtures
# such as the trained tiny zoo are built once); `python -m pytest -q` runs the same tests in one
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# two local processes joined by jax.distributed (slow, so not in `make test`; CI runs it)
test-multiprocess: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_multiprocess.py

# Benchmarks write to BENCH_OUT (default benchmarks/out/, not committed); the committed
# reference numbers in benchmarks/results/ change only by `make benchmarks BENCH_OUT=benchmarks/results`.
BENCH_OUT ?= benchmarks/out
benchmarks: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(PY) -m benchmarks.merge_ops --out $(BENCH_OUT)/merge_ops.json
	$(PY) -m benchmarks.width --out $(BENCH_OUT)/width.json
	$(PY) -m benchmarks.stream_gram --out $(BENCH_OUT)/stream_gram.json
	$(PY) -m benchmarks.merge_memory --out $(BENCH_OUT)/merge_memory.json
	$(PY) -m benchmarks.tree_compile --out $(BENCH_OUT)/tree_compile.json
	$(PY) -m benchmarks.analyze_stream --out $(BENCH_OUT)/analyze_stream.json --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check mergetheory tests experiments figures benchmarks

clean:
	rm -rf $(VENV) results/*.npz results/*.json figures/out
