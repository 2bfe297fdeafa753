#!/usr/bin/env bash
# A real two-node SLURM (Debian's slurm-wlm and munge: munged, slurmctld -D, one slurmd -D per node) for
# tests/test_slurm.py, inside namespaces of its own (unshare --net --mount --pid --fork --mount-proc):
#   - the controller on a bridge (10.77.0.1); each node a network, UTS, pid and mount namespace of its own
#     (its hostname, its address 10.77.0.1N on a veth into the bridge, its processes, its /tmp/ray), the
#     filesystem otherwise shared, as NFS shares a cluster's home;
#   - /run of its own (munge's socket), its daemons ended with the namespace.
# It runs cluster/slurm.sbatch as a user would:
#   1. a study file that does not exist: the job's exit code is the study's (2);
#   2. two jobs of one user at once, a node each, on one new store: both finish;
#   3. a study on both nodes, signalled as proctrack/cgroup does at scancel or the time limit: SIGTERM to every
#      process of the job at once (the MLflow server and Ray's daemons too), SIGKILL after KillWait; meanwhile
#      the second node reaches the first's MLflow server; then the same sbatch with --resume.
# Each step writes $W/<step>.rc, its seconds $W/<step>.s and the job's output $W/<step>.out.
# Usage: slurm_node.sh W VENV ROOT STUDY TWIN1 TWIN2
set -uo pipefail
W=$1
VENV=$2
ROOT=$3
STUDY=$4
TWIN1=$5
TWIN2=$6
KILL_WAIT=30   # SLURM's default

ip link set lo up
ip link add br0 type bridge && ip addr add 10.77.0.1/24 dev br0 && ip link set br0 up
mkdir -p "$W/run" "$W/spool" "$W/state" && mount --bind "$W/run" /run && mkdir -p /run/munge /run/slurm

# --- munge, with a key of its own ---
head -c 1024 /dev/urandom > "$W/munge.key" && chmod 600 "$W/munge.key"
munged --force --key-file="$W/munge.key" --socket=/run/munge/munge.socket.2 --pid-file="$W/munged.pid" \
    --log-file="$W/munged.log" --seed-file="$W/munged.seed" || { echo 99 > "$W/setup.rc"; exit 1; }

# --- the controller and the nodes (%n: each slurmd's own files) ---
cat > "$W/slurm.conf" <<EOF
ClusterName=iabftest
SlurmctldHost=$(hostname -s)(10.77.0.1)
MailProg=/bin/true
AuthType=auth/munge
AuthInfo=socket=/run/munge/munge.socket.2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=$KILL_WAIT
MinJobAge=3600
NodeName=iabfnode1 NodeAddr=10.77.0.11 CPUs=2 State=UNKNOWN
NodeName=iabfnode2 NodeAddr=10.77.0.12 CPUs=1 State=UNKNOWN
PartitionName=main Nodes=iabfnode1,iabfnode2 Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$W/slurm.conf
slurmctld -D -f "$SLURM_CONF" > "$W/slurmctld.out" 2>&1 &

node() {   # node N: slurmd for iabfnodeN in namespaces of its own, on the bridge at 10.77.0.1N
    local n=$1
    mkdir -p "$W/spool/iabfnode$n" "$W/ray$n"
    unshare --net --uts --pid --fork --mount-proc --mount --propagation private bash -c "
        hostname iabfnode$n
        for _ in \$(seq 100); do ip link show v$n > /dev/null 2>&1 && break; sleep 0.1; done
        ip link set lo up && ip addr add 10.77.0.1$n/24 dev v$n && ip link set v$n up && ip route add default via 10.77.0.1
        mount --bind '$W/ray$n' /tmp/ray   # Ray's sessions and address file: the node's own
        slurmd -D -f '$SLURM_CONF' -N iabfnode$n & wait   # bash the node's init: it reaps what the jobs leave" > "$W/slurmd$n.out" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do [ -e "/proc/$pid/ns/net" ] && break; sleep 0.1; done
    sleep 0.3
    ip link add v$n type veth peer name h$n && ip link set v$n netns "$pid" && ip link set h$n master br0 && ip link set h$n up
}
node 1
node 2
for _ in $(seq 90); do
    [ "$(sinfo -h -o %t 2>/dev/null | sort -u)" = idle ] && [ "$(sinfo -h -N 2>/dev/null | wc -l)" = 2 ] && break
    sleep 1
done
sinfo -N > "$W/sinfo.txt" 2>&1
[ "$(sinfo -h -o %t 2>/dev/null | sort -u)" = idle ] || { echo 98 > "$W/setup.rc"; exit 1; }
echo 0 > "$W/setup.rc"

# --- the user: the repository as the submit folder; the jobs' files in $W ---
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
finish() {   # finish NAME JOB T0: its exit code (the batch script's) in $W/NAME.rc, its seconds in $W/NAME.s
    gone "$2"
    scontrol show job "$2" | tr ' ' '\n' | sed -n 's/^ExitCode=\([0-9]*\):.*/\1/p' > "$W/$1.rc"
    echo $((SECONDS - $3)) > "$W/$1.s"
}
epochs() {   # the most epochs any run of the store has logged
    "$VENV/bin/python" -c "import sqlite3
try:
    print(sqlite3.connect('file:$W/studies/mlflow/mlflow.db?mode=ro', uri=True).execute(
        \"select coalesce(max(m.step), 0) from metrics m join tags t on t.run_uuid = m.run_uuid \
          where m.key = 'epoch' and t.key = 'study' and t.value = '$1'\").fetchone()[0])
except Exception:
    print(0)" 2>/dev/null
}

t0=$SECONDS
finish bad "$(sbatch --parsable --output="$W/bad.out" cluster/slurm.sbatch --space "$W/no-such-study.yaml")" $t0

# two jobs of one user at once, on one new store: each its own server, both finish
t0=$SECONDS
a=$(sbatch --parsable --output="$W/twin1.out" -w iabfnode1 --cpus-per-task=1 cluster/slurm.sbatch --space "$TWIN1" --chain-steps 5)
b=$(sbatch --parsable --output="$W/twin2.out" -w iabfnode2 --cpus-per-task=1 cluster/slurm.sbatch --space "$TWIN2" --chain-steps 5)
finish twin1 "$a" $t0
finish twin2 "$b" $t0

# the study on both nodes, whole (--exclusive): each offers Ray its own CPUs, 2 and 1, three trials at once
t0=$SECONDS
job=$(sbatch --parsable --output="$W/run.out" --nodes=2 --exclusive --cpus-per-task=1 cluster/slurm.sbatch --space "$STUDY" --chain-steps 5)
echo "$job" > "$W/run.job"
for _ in $(seq 400); do
    n=$(epochs slurm)
    [ "${n:-0}" -ge 3 ] && break
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
    sleep 0.5
done
echo "${n:-0}" > "$W/before_cancel.txt"
# the first node's tracking server, from the second node, inside the job (its port: the job's own)
srun --jobid="$job" --overlap -w iabfnode2 -N1 -n1 "$VENV/bin/python" -c "import socket; from iabf.record import server_refusal
url = 'http://10.77.0.11:%d' % (30000 + $job % 10000)
print('from', socket.gethostname(), url, server_refusal(url))" > "$W/reach.out" 2>&1
# proctrack/cgroup's scancel (and time limit): SIGTERM to every process of the job, on every node, at once
# (this namespace sees every node's processes), SIGKILL to what is left after KillWait
signal_job() {
    local env pid
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}
        pid=${pid%/environ}
        tr '\0' '\n' 2>/dev/null < "$env" | grep -qx "SLURM_JOB_ID=$job" && kill "-$1" "$pid" 2>/dev/null
    done
}
t1=$SECONDS
signal_job TERM
for _ in $(seq $((KILL_WAIT * 2))); do
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
    sleep 0.5
done
echo $((SECONDS - t1)) > "$W/after_term.s"
signal_job KILL
scancel "$job" 2>/dev/null
gone "$job"
scontrol show job "$job" > "$W/cancelled.txt" 2>&1
echo $((SECONDS - t0)) > "$W/run.s"

t0=$SECONDS
finish resume "$(sbatch --parsable --output="$W/resume.out" --nodes=2 --exclusive --cpus-per-task=1 cluster/slurm.sbatch --space "$STUDY" --chain-steps 5 --resume)" $t0
sleep 2
ps -ww -eo pid,args --no-headers > "$W/left.txt"
exit 0
