#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by .ci/slurm-up.sh (and the munged it started, unless --keep-munge).
set -uo pipefail
DIR=${SLMTRAIN_SLURM_DIR:-/var/tmp/slmtrain-slurm}

stop() {  # stop the daemon whose pid file is $1, waiting up to 10 s before killing it
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$1"
}

stop "$DIR/slurmd.pid"
stop "$DIR/slurmctld.pid"
if [ "${1:-}" != "--keep-munge" ] && [ -f "$DIR/munged.ours" ]; then
    stop /run/munge/munged.pid
    rm -f "$DIR/munged.ours"
fi
