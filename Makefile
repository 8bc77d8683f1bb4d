# One entry point for the chores. `make compile` is serialised with flock so that
# parallel builds in one checkout never race on build/.
PY ?= python3

.PHONY: compile test lint format bench-smoke bench clean

compile:
	flock /tmp/irisrep-build.lock $(PY) setup.py build_ext --inplace -q

test: compile
	$(PY) -m pytest -q

lint:
	ruff check src tests bench
	ruff format --check src tests bench
	cython-lint src/irisrep/*.pyx src/irisrep/*.pxi src/irisrep/*.pxd

format:
	ruff format src tests bench
	ruff check --fix src tests bench

bench-smoke: compile
	$(PY) -m pytest -q tests/test_bench_smoke.py

bench: compile
	$(PY) bench/bench_globals.py

clean:
	rm -rf build src/irisrep/*.so src/irisrep/_core.c
