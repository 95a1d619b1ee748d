# Every target that needs the environment builds .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
GRID   ?= quickstart
EXTRAS ?= test

.PHONY: install test test-all run sweep plan refine analyze demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

## Fast test suite (what CI runs): two workers (pytest-xdist), each test file in one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

## Everything, slow tests included.
test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

## One run of the theory-matching preset, printed as JSON.
run: $(STAMP)
	$(PY) -m contamination.run --preset toy_theory --set width=64 --set steps=3000 --set log_every=500

clean:
	rm -rf $(VENV) results .jax_cache

## Train every config of sweeps/grids/$(GRID).toml into results/$(GRID)/ (SCALE=full for the accelerator scale).
sweep: $(STAMP)
	$(PY) -m sweeps run $(GRID) $(if $(SCALE),--scale $(SCALE))

## Dry run of a grid: configs, buckets, compiles, chunks, FLOPs, memory.
plan: $(STAMP)
	$(PY) -m sweeps plan $(GRID) $(if $(SCALE),--scale $(SCALE))

## Adaptive phase diagram: train $(GRID), then ROUNDS (default 3) rounds of runs where METRIC crosses LEVEL.
refine: $(STAMP)
	$(PY) -m sweeps refine $(GRID) $(if $(SCALE),--scale $(SCALE)) --metric $(METRIC) --level $(LEVEL) $(if $(ROUNDS),--rounds $(ROUNDS))

## Figures and report for results/$(GRID): results/$(GRID)/figures/ and results/$(GRID)/report.md.
analyze: $(STAMP)
	$(PY) -m analysis report $(GRID)

## The main command: train the quickstart grid and analyze it.
demo: $(STAMP)
	$(PY) -m sweeps run quickstart
	$(PY) -m analysis report quickstart

## Engine benchmarks (limit, throughput, baselines, compile cost, memory): numbers for BENCHMARKS.md.
bench: $(STAMP)
	$(PY) benchmarks/bench.py --json results/bench.json
