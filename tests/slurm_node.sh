#!/usr/bin/env bash
# A real one-node SLURM (Debian's slurm-wlm and munge: munged, slurmctld -D, slurmd -D) for
# tests/test_slurm.py, inside namespaces of its own (unshare --net --mount --pid --fork --mount-proc):
# loopback and one private address on a veth device (the node's `hostname -I`), /run of its own (munge's
# socket), /tmp/ray of its own (Ray's sessions and address file), its daemons ended with the namespace. It runs cluster/slurm.sbatch as a user would:
#   1. a study file that does not exist: the job's exit code is the study's (2);
#   2. the study: sbatch, scancel once it has trained 3 epochs, then the same sbatch with --resume (--wait).
# Each step writes $W/<step>.rc, its seconds $W/<step>.s and the job's output $W/<step>.out. Usage: slurm_node.sh W VENV ROOT STUDY
set -uo pipefail
W=$1
VENV=$2
ROOT=$3
STUDY=$4
PRIVATE=10.77.0.2

ip link set lo up
ip link add n0 type veth peer name n1 && ip addr add $PRIVATE/24 dev n0 && ip link set n1 up && ip link set n0 up
ip route add default dev n0
mkdir -p "$W/run" "$W/spool" "$W/state" && mount --bind "$W/run" /run && mkdir -p /run/munge /run/slurm
# Ray's temp dir of its own: the address file that a local ray.init() on this machine reads is in it
mkdir -p /tmp/ray "$W/ray" && mount --bind "$W/ray" /tmp/ray

# --- munge, with a key of its own ---
head -c 1024 /dev/urandom > "$W/munge.key" && chmod 600 "$W/munge.key"
munged --force --key-file="$W/munge.key" --socket=/run/munge/munge.socket.2 --pid-file="$W/munged.pid" \
    --log-file="$W/munged.log" --seed-file="$W/munged.seed" || { echo 99 > "$W/setup.rc"; exit 1; }

# --- the controller and the node ---
cat > "$W/slurm.conf" <<EOF
ClusterName=iabftest
SlurmctldHost=$(hostname -s)(127.0.0.1)
MailProg=/bin/true
AuthType=auth/munge
AuthInfo=socket=/run/munge/munge.socket.2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=60
MinJobAge=3600
NodeName=iabfnode NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=main Nodes=iabfnode Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$W/slurm.conf
slurmctld -D -f "$SLURM_CONF" > "$W/slurmctld.out" 2>&1 &
slurmd -D -f "$SLURM_CONF" -N iabfnode > "$W/slurmd.out" 2>&1 &
for _ in $(seq 60); do
    [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && break
    sleep 1
done
sinfo > "$W/sinfo.txt" 2>&1
[ "$(sinfo -h -o %t 2>/dev/null)" = idle ] || { echo 98 > "$W/setup.rc"; exit 1; }
echo 0 > "$W/setup.rc"

# --- the user: the repository as the submit folder; the job's files in $W ---
cd "$ROOT"
export IABF_VENV=$VENV IABF_STUDIES=$W/studies HOME=$W/home
mkdir -p "$HOME"

# gone JOB: wait until the job has left the queue (a half-second poll: `sbatch --wait` polls at 2, 8, then
# every 32 s, which cost this test 20 s a job)
gone() {
    for _ in $(seq 1200); do
        [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
        sleep 0.5
    done
}
# batch NAME ARGS...: sbatch ARGS, wait for the job's end; its output in $W/NAME.out, its exit code (the
# one `sbatch --wait` gives: the batch script's) in $W/NAME.rc, its seconds in $W/NAME.s
batch() {
    local name=$1 t0=$SECONDS job
    shift
    job=$(sbatch --parsable --output="$W/$name.out" cluster/slurm.sbatch "$@")
    gone "$job"
    scontrol show job "$job" | tr ' ' '\n' | sed -n 's/^ExitCode=\([0-9]*\):.*/\1/p' > "$W/$name.rc"
    echo $((SECONDS - t0)) > "$W/$name.s"
}

batch bad --space "$W/no-such-study.yaml"
t0=$SECONDS

job=$(sbatch --parsable --output="$W/run.out" cluster/slurm.sbatch --space "$STUDY" --chain-steps 5)
echo "$job" > "$W/run.job"
# scancel while the study trains: once its runs have logged 3 epochs (read from the job's store)
for _ in $(seq 300); do
    n=$("$VENV/bin/python" -c "import sqlite3
try:
    print(sqlite3.connect('file:$W/studies/mlflow/mlflow.db?mode=ro', uri=True).execute(
        \"select coalesce(max(step), 0) from metrics where key = 'epoch'\").fetchone()[0])
except Exception:
    print(0)" 2>/dev/null)
    [ "${n:-0}" -ge 3 ] && break
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
    sleep 0.5
done
echo "${n:-0}" > "$W/before_cancel.txt"
scancel "$job"
gone "$job"
scontrol show job "$job" > "$W/cancelled.txt" 2>&1
echo $((SECONDS - t0)) > "$W/run.s"

batch resume --space "$STUDY" --chain-steps 5 --resume
ps -eo pid,args --no-headers > "$W/left.txt"
exit 0
