#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (munge, slurmctld, slurmd; everything on localhost), installing
# the Debian packages first when they are missing. Idempotent: a running cluster is left as it is.
#
#   eval "$(.ci/slurm-up.sh)"  prints `export SLURM_CONF=...` (the clients need it) and `# started` or
#                              `# already running`
#   .ci/slurm-down.sh          stops it
#
# State, configuration and logs live in $SLMTRAIN_SLURM_DIR (default /var/tmp/slmtrain-slurm), never in the checkout.
# No cgroups are needed (proctrack/linuxproc, task/none), so it runs in containers. Needs root.
set -euo pipefail
DIR=${SLMTRAIN_SLURM_DIR:-/var/tmp/slmtrain-slurm}
export SLURM_CONF=$DIR/slurm.conf

fail() {  # the daemons' own words, then stop
    echo "slurm-up: $1" >&2
    for log in "$DIR"/*.log "$DIR"/munge/*.log; do [ -s "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }; done
    exit 1
}

node_ready() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; }
fi

if [ -f "$SLURM_CONF" ] && scontrol ping >/dev/null 2>&1 && node_ready; then
    printf 'export SLURM_CONF=%s\n# already running\n' "$SLURM_CONF"
    exit 0
fi

mkdir -p "$DIR/state" "$DIR/spool"
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || create-munge-key -f >/dev/null; }
    chown munge:munge /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge "$DIR/munge"
    runuser -u munge -- munged --log-file="$DIR/munge/munged.log" || fail "munged did not start"
    touch "$DIR/munged.ours"  # slurm-down.sh stops only the munged it started
fi

cpus=$(nproc)
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat > "$SLURM_CONF" <<EOF
# Written by slmtrain's .ci/slurm-up.sh: one node, localhost only, no cgroups, no accounting.
ClusterName=slmtrain
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
# slurmctld, slurmd and srun's I/O ports bind the address their host name resolves to (127.0.0.1), not every
# interface: nothing of this cluster is reachable from another machine
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it starts again (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# a small cluster can afford to schedule every second (dependencies, requeues); jobs whose dependency failed end
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,kill_invalid_depend
MinJobAge=600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# A cluster that is half up (a daemon died) restarts from clean state.
"$(dirname "$0")/slurm-down.sh" --keep-munge >/dev/null 2>&1 || true
slurmctld -c -f "$SLURM_CONF" || fail "slurmctld did not start"
slurmd -N localhost -f "$SLURM_CONF" || fail "slurmd did not start"
for _ in $(seq 60); do
    node_ready && { printf 'export SLURM_CONF=%s\n# started\n' "$SLURM_CONF"; exit 0; }
    sleep 1
done
fail "the node did not become ready in 60 s: $(sinfo -h -o '%T %E' 2>&1 || true)"
