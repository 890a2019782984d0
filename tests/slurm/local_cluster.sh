#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's packages, for testing the SLURM executor.
#
#   bash tests/slurm/local_cluster.sh start    # install if needed, configure, start munged/slurmctld/slurmd
#   bash tests/slurm/local_cluster.sh status   # sinfo
#   bash tests/slurm/local_cluster.sh stop     # stop the daemons this script started
#
# Needs root (it writes /etc/slurm and /etc/munge and starts daemons) and apt when SLURM is not installed.
# Seen working with Debian 12's SLURM 22.05.8 and snakemake-executor-plugin-slurm 2.8.0. No accounting
# database: the executor runs with --slurm-no-account and reads job states from squeue; every finished job
# is recorded by the job-completion log (JOBCOMP_LOG below), which the test reads.
set -euo pipefail

STATE=${LS_SLURM_STATE:-/tmp/ls-slurm}
JOBCOMP_LOG=$STATE/jobcomp.log
mkdir -p "$STATE"

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || { echo "local_cluster: SLURM is not installed and installing it needs root" >&2; exit 3; }
    command -v apt-get >/dev/null || { echo "local_cluster: no apt-get to install SLURM with" >&2; exit 3; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        munge slurmd slurmctld slurm-client >"$STATE/apt.log" 2>&1 || {
        tail -5 "$STATE/apt.log" >&2; echo "local_cluster: apt-get install failed" >&2; exit 3; }
}

configure() {
    [ "$(id -u)" = 0 ] || { echo "local_cluster: configuring SLURM needs root" >&2; exit 3; }
    mkdir -p /etc/munge /var/run/munge /var/lib/munge /var/log/munge /etc/slurm "$STATE/spool" "$STATE/ctld"
    chown -R munge:munge /etc/munge /var/run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    local cpus mem host
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    host=$(hostname -s)
    cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ls-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP_LOG
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

wait_idle() {
    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            return 0
        fi
        sleep 0.5
    done
    echo "local_cluster: the node did not become idle; logs in $STATE" >&2
    sinfo >&2 || true
    exit 4
}

start() {
    install
    configure
    if ! pgrep -x munged >/dev/null; then
        su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
        echo munged >>"$STATE/started"
    fi
    if ! pgrep -x slurmctld >/dev/null; then
        slurmctld -c   # -c: a clean start, no saved state
        echo slurmctld >>"$STATE/started"
    fi
    if ! pgrep -x slurmd >/dev/null; then
        slurmd
        echo slurmd >>"$STATE/started"
    fi
    wait_idle
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    echo "local_cluster: up ($(sinfo -h -o '%P %D %t %c' | head -1)); job completions in $JOBCOMP_LOG"
}

stop() {
    [ -f "$STATE/started" ] || { echo "local_cluster: nothing started by this script"; return 0; }
    for daemon in slurmd slurmctld munged; do
        if grep -qx "$daemon" "$STATE/started"; then
            pkill -x "$daemon" || true
        fi
    done
    rm -f "$STATE/started"
    echo "local_cluster: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
