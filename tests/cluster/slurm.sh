#!/bin/bash
# `make test-cluster`: the quickstart grid as a Slurm array job on a real single-node cluster.
#
# Installs Slurm and MUNGE from Debian's packages (needs root and apt), starts munged, slurmctld
# and slurmd on loopback with a minimal slurm.conf in a temporary folder (root, proctrack/linuxproc,
# task/none), submits `clusters/slurm.sbatch` as `sbatch --array=0-2` into one results folder,
# freezes and kills one task after its first chunk, resubmits that index, and checks
# (tests/cluster/check.py): every run exactly once, the metrics of a one-process sweep, `sweeps
# status` with nothing missing, each program compiled once by the array. Every daemon it started
# is stopped on exit (trap), whatever happened.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=$ROOT/.venv/bin/python
TIMEOUT_S=${TIMEOUT_S:-300}

if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

T=$(mktemp -d /tmp/contamination-slurm-XXXXXX)
PIDS=()
cleanup() {
    set +e
    [ -n "${SLURM_CONF:-}" ] && scancel --quiet --user=root 2>/dev/null
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    if [ -f "$T/munged.pid" ]; then
        pid=$(cat "$T/munged.pid")
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ -n "${KEEP:-}" ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
log() { echo "[test-cluster $(date +%T)] $*"; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until the command succeeds
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@"; do
        [ $SECONDS -lt $deadline ] || { log "timed out waiting for $what"; tail -n 20 "$T"/*.log "$T"/logs/* >&2; exit 1; }
        sleep 0.2
    done
}

log "munged"
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/logs"
chmod 700 "$T/munge"
mungekey --create --keyfile="$T/munge/munge.key" --force
munged --force --socket="$T/munge/munge.socket" --key-file="$T/munge/munge.key" --pid-file="$T/munged.pid" \
    --log-file="$T/munged.log" --seed-file="$T/munge/seed"

NODE=$(hostname -s)
cat > "$T/slurm.conf" <<CONF
ClusterName=contamination-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=3 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$T/slurm.conf

log "slurmctld, slurmd"
slurmctld -D -i -f "$SLURM_CONF" >>"$T/slurmctld.log" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" -N "$NODE" >>"$T/slurmd.log" 2>&1 &
PIDS+=($!)
wait_for 60 "the node to be idle" bash -c "sinfo -h -N -o %t | grep -qx idle"

OUT=$T/out
submit() {  # submit ARRAY: the recipe's script, as docs/clusters.md gives it, into $OUT
    (cd "$ROOT" && SHARDS=3 GRID=quickstart OUT=$OUT CONTAMINATION_JAX_CACHE=$T/fleet-cache \
        EXTRA_ARGS="--chunk-size 1 --host-devices 1" \
        sbatch --parsable --array="$1" --cpus-per-task=1 --output="$T/logs/%A_%a.out" clusters/slurm.sbatch)
}
job_gone() { [ -z "$(squeue -h -j "$1" 2>/dev/null)" ]; }

JOB=$(submit 0-2)
log "submitted array job $JOB (3 shards of quickstart)"
# Freeze shard 1 within milliseconds of its first chunk landing (its pid from its lease's claim;
# a chunk takes a few hundred ms), count what it wrote, then SIGKILL it, as a lost node would:
# no clean stop, its claim left behind.
read -r PID WRITTEN < <("$PY" - "$OUT" "$TIMEOUT_S" <<'PYTHON'
import glob, json, os, signal, sys, time
out, deadline = sys.argv[1], time.time() + float(sys.argv[2])
pid = None
while time.time() < deadline:
    claims = glob.glob(f"{out}/leases/s1of3.*.json")
    if pid is None and claims:
        pid = json.load(open(claims[0]))["pid"]
    if pid is not None and glob.glob(f"{out}/runs/s1of3-*.parquet"):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)
        print(pid, len(glob.glob(f"{out}/runs/s1of3-*.parquet")))
        sys.exit(0)
    time.sleep(0.005)
sys.exit("shard 1 wrote no chunk in time")
PYTHON
)
[ -n "${PID:-}" ] || { log "shard 1 wrote no chunk"; cat "$T"/logs/* >&2; exit 1; }
kill -KILL "$PID"
log "killed task ${JOB}_1 (pid $PID) after $WRITTEN chunks"
wait_for "$TIMEOUT_S" "the array to end" job_gone "$JOB"
"$PY" -m sweeps status quickstart --out "$OUT" | tee "$T/status-before.txt"

JOB2=$(submit 1)
log "resubmitted index 1 as job $JOB2"
wait_for "$TIMEOUT_S" "the resubmitted task to end" job_gone "$JOB2"
"$PY" -m sweeps status quickstart --out "$OUT" | tee "$T/status.txt"

log "one process, for the metrics"
(cd "$ROOT" && CONTAMINATION_JAX_CACHE=$T/fleet-cache "$PY" -m sweeps run quickstart --out "$T/one" \
    --chunk-size 1 --host-devices 1 --no-progress)
for f in "$T"/logs/*.out; do echo "--- $(basename "$f")"; cat "$f"; done
"$PY" "$ROOT/tests/cluster/check.py" "$OUT" "$T/one" "$T/status-before.txt" "$T/status.txt" "$WRITTEN"
log "passed"
