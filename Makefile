# Every target that needs the environment builds .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
GRID   ?= quickstart
EXTRAS ?= test

.PHONY: install lock test test-all test-portable test-cluster run sweep plan refine analyze demo bench clean FORCE

# Installs come from hash-pinned lock files (requirements/, written by `make lock`); EXTRAS picks
# the lock: tpu -> tpu.lock, gpu -> gpu.lock, anything else (test, digits) -> test.lock.
# UNLOCKED=1 installs the newest releases instead. The stamp records which of the two it was.
comma  := ,
XLIST  := $(subst $(comma), ,$(EXTRAS))
ifndef UNLOCKED
$(if $(filter-out test digits tpu gpu,$(XLIST)),$(error no lock covers EXTRAS=$(EXTRAS): use test, digits, tpu or gpu, or UNLOCKED=1))
$(if $(and $(filter tpu,$(XLIST)),$(filter gpu,$(XLIST))),$(error EXTRAS=$(EXTRAS): tpu and gpu are separate locks))
endif
LOCK   := requirements/$(if $(filter tpu,$(XLIST)),tpu,$(if $(filter gpu,$(XLIST)),gpu,test)).lock
WANT   := $(if $(UNLOCKED),unlocked $(EXTRAS),$(LOCK))
# `make install` with other EXTRAS or UNLOCKED than the stamp's reinstalls (`make clean install`: exactly).
ifneq ($(filter install,$(MAKECMDGOALS)),)
ifneq ($(shell cat $(STAMP) 2>/dev/null),$(WANT))
$(STAMP): FORCE
endif
endif

$(STAMP): pyproject.toml $(if $(UNLOCKED),,$(LOCK) requirements/pip.lock requirements/build.lock)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifdef UNLOCKED
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
else
	$(PY) -m pip install -q --require-hashes -r requirements/pip.lock
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --build-constraint requirements/build.lock -e .
endif
	echo '$(WANT)' > $(STAMP)

install: $(STAMP)

## Re-resolve every lock to the newest releases (uv, in a throwaway venv; users need only pip).
UV_VERSION ?= 0.13.9
LOCK_ARGS  ?= --upgrade
UVC = $$t/bin/uv pip compile -q --universal --python-version 3.11 --fork-strategy fewest \
      --generate-hashes --custom-compile-command 'make lock' $(LOCK_ARGS)
lock:
	t=$$(mktemp -d) && trap 'rm -rf '$$t EXIT && $(PYTHON) -m venv $$t && \
	$$t/bin/python -m pip install -q uv==$(UV_VERSION) && \
	$(UVC) requirements/pip.in -o requirements/pip.lock && \
	$(UVC) requirements/build.in -o requirements/build.lock && \
	$(UVC) pyproject.toml --extra test -o requirements/test.lock && \
	$(UVC) pyproject.toml --extra test --extra tpu -c requirements/test.lock -o requirements/tpu.lock && \
	$(UVC) pyproject.toml --extra test --extra gpu -c requirements/test.lock -o requirements/gpu.lock

## Fast test suite (what CI runs): two workers (pytest-xdist), each test file in one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

## The identity (float64) and reference (float32 at measured tolerances) tests on two other
## instruction sets of this CPU, which change XLA's rounding: a second machine, simulated.
PORTABLE_ISAS ?= AVX2 SSE4_2
test-portable: $(STAMP)
	for isa in $(PORTABLE_ISAS); do echo "== XLA_FLAGS=--xla_cpu_max_isa=$$isa"; 	  XLA_FLAGS="$$XLA_FLAGS --xla_cpu_max_isa=$$isa" $(PY) -m pytest -q -n 2 --dist loadfile 	    -m '(identity or reference) and not slow' || exit 1; done

## A real single-node Slurm cluster (installs slurm-wlm and munge with apt: root): the quickstart grid
## as an array job, one task killed and resubmitted (tests/cluster/slurm.sh; not part of `make test`).
test-cluster: $(STAMP)
	bash tests/cluster/slurm.sh

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
