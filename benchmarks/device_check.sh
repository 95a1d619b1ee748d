#!/usr/bin/env bash
# The check to run when a session is lent an accelerator, as one command. It fits the device
# tool's 10-minute limit on a command and 15 minutes of device time, the machine's start included.
#
#     bash benchmarks/device_check.sh OUTDIR
#
# PY picks the interpreter (default python3: the lent machine's image holds JAX with CUDA; the
# project's code runs from this checkout through PYTHONPATH). Each step has its own time limit, so
# a slow one cannot take the others' time; its whole output lands in OUTDIR/STEP.log, its JSON in
# OUTDIR/STEP.json. The numbers go into BENCHMARKS.md with the device and versions that
# `versions` prints.
#   versions   Python, JAX and the devices JAX sees;
#   agreement  the quickstart grid on the accelerator and on the CPU: the same finding in every
#              cell (benchmarks/device_agreement.py; exit 1 if a cell's mean OOD accuracy differs);
#   default    width_vs_dim cold (empty caches) under the auto planner: programs, wall time, compile
#              share, and the FLOP rate of training against the matmul rate measured in the same
#              call at JAX's default precision (benchmarks/planner.py cold --auto-only --matmul);
#   full       the same at width_vs_dim's accelerator scale.
# At most 7 minutes in all (the limits below), so that with the machine's start (1-2 minutes) a
# second try of one step still fits the 15 minutes.
set -u
OUT=${1:?usage: bash benchmarks/device_check.sh OUTDIR}
PY=${PY:-python3}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 20 "$OUT/$name.log"
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}

step versions 30 "$PY" -c "import sys, jax, jaxlib; print(sys.version); print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); print(jax.devices())"
step agreement 120 "$PY" benchmarks/device_agreement.py --json "$OUT/agreement.json"
step default 120 "$PY" benchmarks/planner.py cold --grid width_vs_dim --auto-only --matmul --json "$OUT/default.json"
step full 150 "$PY" benchmarks/planner.py cold --grid width_vs_dim --scale full --auto-only --matmul --json "$OUT/full.json"
exit $status
