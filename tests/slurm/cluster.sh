#!/usr/bin/env bash
# A private, throwaway Slurm cluster on this machine, for integration tests.
#
# Usage:
#   tests/slurm/cluster.sh start DIR [NODES]   start a cluster under DIR (NODES: 1 or 2, default 1)
#   tests/slurm/cluster.sh stop DIR            stop it (idempotent; safe when nothing runs)
#   tests/slurm/cluster.sh env DIR             print the export lines of a started cluster again
#
# DIR must be an absolute path to an existing directory (e.g. a fresh tempdir), made of the
# characters [A-Za-z0-9._/+-] only (it is written unquoted into slurm.conf and the export
# lines). Everything lives under it:
#   DIR/slurm.conf                 the cluster's config (Slurm looks for its optional companions,
#                                  cgroup.conf, gres.conf, plugstack.conf..., next to it: do not
#                                  put files of those names in DIR)
#   DIR/munge/                     munge.key, munge.socket.2, munged.{pid,log,seed}
#   DIR/state/                     slurmctld StateSaveLocation
#   DIR/spool/<node>/              SlurmdSpoolDir of each node
#   DIR/run/                       pid files: slurmctld.pid, slurmd.<node>.pid
#   DIR/log/                       slurmctld.log, slurmd.<node>.log (slurmstepd logs there too),
#                                  jobcomp.txt (one line per ended run, see sacct below)
#   DIR/cluster.env                the export lines printed by `start`
# `start` recreates these (a previous cluster's jobs and state in DIR are discarded) and refuses
# to run while a cluster started in DIR is still alive. Anything else in DIR is left alone.
# munged insists that every directory above its socket be searchable by all and that none be
# writable by others, so `start` does `chmod go+x,go-w DIR` (a mktemp -d directory is 0700).
#
# Output: progress and diagnostics go to stderr; stdout carries only `export NAME=VALUE` lines
# (values never need quoting), so a caller can `eval "$(cluster.sh start DIR)"` or parse them:
#   export SLURM_CONF=DIR/slurm.conf            all that sbatch, squeue, scontrol, scancel, sinfo
#                                               and sacct need: slurm.conf's AuthInfo=socket=...
#                                               points clients and daemons to this cluster's munged
#   export GPTX_SLURM_DIR=DIR
#   export GPTX_SLURM_NODES=node1[,node2]       node names (SLURMD_NODENAME inside a job)
#   export GPTX_SLURM_PARTITION=main            the default (and only) partition
#   export GPTX_SLURM_JOBCOMP=DIR/log/jobcomp.txt
#   export GPTX_SLURM_MUNGE_SOCKET=DIR/munge/munge.socket.2   (only for munge -S / unmunge -S)
# `start` returns once every node is `idle` in sinfo, usually within a second (timeout 60 s; on
# failure it prints the daemons' logs to stderr, stops what it started and exits non-zero), so
# jobs can be submitted right away. Jobs inherit the submitter's environment (sbatch's default
# --export=ALL), so SLURM_CONF reaches them too and scontrol/squeue work from inside a job.
#
# Nodes: each node is a separate slurmd on this host (`slurmd -N <node>` with its own Port=;
# Debian's slurmd supports several per host), all with NodeAddr=127.0.0.1. They share this
# host's network, filesystem and process space, so jobs reach /var/run/docker.sock and ports
# published by containers on 127.0.0.1 as any local process does; `hostname` is the same on
# every node, SLURMD_NODENAME tells them apart. (Network namespaces are not needed for this,
# and would cut jobs off from ports that containers publish on 127.0.0.1.) Each node declares
# CPUs=2 RealMemory=8000 (or $GPTX_SLURM_CPUS_PER_NODE, $GPTX_SLURM_MEM_PER_NODE) whatever the hardware (SlurmdParameters=config_overrides). Memory is
# counted, not enforced (no cgroups): a job without --mem gets DefMemPerCPU=1000 MB per CPU.
# Jobs of an ordinary user: any local user with a passwd entry can submit, with nothing more
# than SLURM_CONF in its environment (e.g. `runuser -u USER -- env SLURM_CONF=DIR/slurm.conf
# sbatch ...`): slurm.conf is world-readable, the munge socket world-connectable (srwxrwxrwx in a
# 0755 directory under DIR, which `start` makes go+x). slurmd runs as root (SlurmdUser=root) and
# starts the job as the submitting uid with its groups; the --output file is created as that user
# (its directory must be writable by the user); `scontrol show job`, jobcomp.txt: UserId=USER(uid).
# Such a job has no login session: no XDG_RUNTIME_DIR unless the submitter's environment carried
# one (sbatch exports it as it is, whether or not the directory exists on the node). Root's
# scancel, scontrol requeue and `stop` handle the user's jobs like root's (SlurmUser=root).
# tests/scale_out/slurm_podman.rs runs a plan this way, under the user's rootless Podman.
# Ports: NODES+1 consecutive free TCP ports are picked at random in 20000-32767 (below the
# ephemeral range), so clusters started in different DIRs, or a system Slurm, never clash.
#
# Behaviour a test can rely on (measured with slurm-wlm 22.05.8 on 2 cores):
#   - Dispatch: from sbatch to the job's first line running takes about 0.5-0.7 s, and a freed
#     CPU gets the next pending job (or array task) about as fast. The SchedulerParameters below
#     do that; with Slurm's defaults it is about 1.5 s, and much slower for short array tasks.
#     sched_interval=1 also starts, within a second, jobs whose begin time has just passed.
#   - scancel: every process of the job gets SIGCONT and SIGTERM at once, then SIGKILL
#     KillWait=10 s later if still alive (the job is CANCELLED, shown as COMPLETING meanwhile).
#     `scancel -s KILL` kills at once.
#   - scontrol requeue <job>[_<task>]: the same signals (SIGCONT+SIGTERM, SIGKILL after
#     KillWait; the job's output gets a line "*** JOB <id> ON <node> CANCELLED AT ... DUE TO JOB
#     REQUEUE ***"). Once the run has ended, the job is PENDING with Reason=BeginTime for
#     cred_expire+1 = 11 s (Slurm holds requeued jobs back that long; cred_expire defaults to
#     120 s and must be at least 5), then runs again, with the same job id, when a CPU is free,
#     with SLURM_RESTART_COUNT=1, 2, ... (unset on the first run; Restarts=N in
#     `scontrol show job`). The rerun truncates the --output file unless --open-mode=append.
#   - A finished job stays visible to `squeue -t all` and `scontrol show job` for 5-10 s
#     (MinJobAge=5), then slurmctld forgets it.
#   - sacct: there is no slurmdbd, so plain `sacct` only says "Slurm accounting storage is
#     disabled". `sacct -c` (--completion) reads DIR/log/jobcomp.txt (jobcomp/filetxt): one
#     record per ended run, with state, exit code, node, start and end; job ids are raw (an
#     array task appears under its own job id, not as A_T, and sacct warns "Unknown type
#     ArrayJobId" on stderr); a run ended by requeue is recorded with state PENDING. Pending and
#     running jobs are not there: read those from squeue / scontrol.
#   - A slurmd that stops answering gets its node marked DOWN after about 30 s (SlurmdTimeout=20)
#     and its jobs requeued; their processes keep running until that slurmd is back (it then
#     kills them) or `stop` runs. ReturnToService=2 returns the node to service when its slurmd
#     registers again.
#   - `stop` kills every job (scancel -s KILL), stops the slurmd(s) and slurmctld, then munged
#     (recognised by their command lines, which name DIR/slurm.conf or DIR's munge socket, so
#     daemons whose pid files are gone are found too), and finally any slurmstepd still holding
#     a log file under DIR open, with every process of its job's session. It signals no other
#     process, usually takes 1-3 s, and can be called any number of times, also after DIR has
#     been deleted.
#
# Needs: root, slurmctld, slurmd, slurm-client, munge (Debian bookworm packages), iproute2 (ss).

set -euo pipefail

readonly CPUS_PER_NODE="${GPTX_SLURM_CPUS_PER_NODE:-2}"   # GPTX_SLURM_CPUS_PER_NODE overrides it
readonly MEM_PER_NODE="${GPTX_SLURM_MEM_PER_NODE:-8000}"   # MB; GPTX_SLURM_MEM_PER_NODE overrides it
readonly START_TIMEOUT=60       # seconds for the nodes to become idle
readonly PARTITION=main

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# check_dir DIR: DIR is an absolute, existing directory with a name safe to write unquoted.
check_dir() {
    local dir=$1
    [[ $dir == /* ]] || die "DIR must be an absolute path: $dir"
    [[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR may only contain [A-Za-z0-9._/+-]: $dir"
    [[ -d $dir ]] || die "DIR is not a directory: $dir"
}

node_names() {
    local n=$1 i names=()
    for ((i = 1; i <= n; i++)); do names+=("node$i"); done
    echo "${names[@]}"
}

# cmdline_has PID ARG: the process PID was started with argument ARG (exactly).
cmdline_has() {
    local pid=$1 arg=$2
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$arg"
}

# cluster_daemons DIR: pids of the munged, slurmctld, slurmscriptd and slurmd processes started
# for DIR, recognised by their command lines (which name DIR's slurm.conf or munge socket), so
# daemons whose pid file is missing (an interrupted start, a deleted DIR) are found too.
cluster_daemons() {
    local dir=$1 conf=$1/slurm.conf pid ppid
    for pid in $(for c in slurmctld slurmd slurmscriptd munged; do pgrep -x "$c"; done); do
        case $(cat "/proc/$pid/comm" 2>/dev/null) in
            slurmctld | slurmd)
                cmdline_has "$pid" "$conf" && echo "$pid" ;;
            slurmscriptd)
                # slurmctld's helper process: a child of this cluster's slurmctld.
                ppid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null) || continue
                [[ $(cat "/proc/$ppid/comm" 2>/dev/null) == slurmctld ]] &&
                    cmdline_has "$ppid" "$conf" && echo "$pid" ;;
            munged)
                cmdline_has "$pid" "--socket=$dir/munge/munge.socket.2" && echo "$pid" ;;
        esac
    done
    return 0
}

# daemon_count DIR COMM: how many COMM (slurmctld, slurmd, munged) processes DIR's cluster has.
daemon_count() {
    local pid n=0
    for pid in $(cluster_daemons "$1"); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] && n=$((n + 1))
    done
    echo "$n"
}

# cluster_steps DIR: pids of this cluster's slurmstepd processes. slurmstepd rewrites its
# command line ("slurmstepd: [12.batch]"), but it keeps the node's log file under DIR/log open.
cluster_steps() {
    local dir=$1 pid fd
    for pid in $(pgrep -x slurmstepd || true); do
        for fd in /proc/"$pid"/fd/*; do
            if [[ $(readlink "$fd" 2>/dev/null) == "$dir"/log/* ]]; then
                echo "$pid"
                break
            fi
        done
    done
    return 0
}

# session_members SID...: pids of all processes in the given sessions (a job's processes share
# the session its slurmstepd created, even after they are reparented).
session_members() {
    local sids=" $* " pid sid
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        sid=$(awk '{print $6}' "/proc/$pid/stat" 2>/dev/null) || continue
        [[ $sids == *" $sid "* ]] && echo "$pid"
    done
    return 0
}

# signal_wait SIG SECONDS PID...: send SIG to the PIDs, wait up to SECONDS for them to exit.
# Returns 0 if all are gone.
signal_wait() {
    local sig=$1 secs=$2 pid left i
    shift 2
    [[ $# -gt 0 ]] || return 0
    kill -s "$sig" "$@" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        left=0
        for pid in "$@"; do
            # A zombie has exited; only its parent's wait is pending.
            if [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
                left=1
                break
            fi
        done
        [[ $left == 0 ]] && return 0
        sleep 0.1
    done
    return 1
}

# port_free PORT: no TCP socket on this host uses PORT locally (listening or not).
port_free() {
    ! ss -Htan 2>/dev/null | awk '{print $4}' | grep -qE ":$1\$"
}

# pick_ports COUNT: print the first of COUNT consecutive free ports.
pick_ports() {
    local count=$1 try base i ok
    for ((try = 0; try < 100; try++)); do
        base=$((20000 + (RANDOM * 32768 + RANDOM) % (32767 - 20000 - count)))
        ok=1
        for ((i = 0; i < count; i++)); do
            port_free $((base + i)) || { ok=0; break; }
        done
        [[ $ok == 1 ]] && { echo "$base"; return 0; }
    done
    die "found no $count free consecutive ports"
}

print_logs() {
    local dir=$1 f
    for f in "$dir"/munge/munged.log "$dir"/log/slurmctld.log "$dir"/log/slurmd.*.log; do
        [[ -f $f ]] || continue
        echo "----- $f (last 40 lines)" >&2
        tail -n 40 "$f" >&2
    done
}

write_conf() {
    local dir=$1 base=$2 nodes=$3 i=0 node
    cat >"$dir/slurm.conf" <<EOF
# Generated by tests/slurm/cluster.sh: a private test cluster. Everything is under $dir.
ClusterName=gptxtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SlurmUser=root
SlurmdUser=root

# munge: this cluster's own munged; cred_expire also sets how long a requeued job waits.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=10

StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true

# No cgroups: processes are tracked through their parents, nothing is confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides

# No slurmdbd: only sacct -c (--completion) works, reading the job completion file.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt

JobRequeue=1
KillWait=10
MinJobAge=5
ReturnToService=2
SlurmdTimeout=20
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,sched_min_interval=0,batch_sched_delay=0,bf_interval=1

EOF
    for node in $nodes; do
        i=$((i + 1))
        echo "NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + i))" \
            "CPUs=$CPUS_PER_NODE RealMemory=$MEM_PER_NODE State=UNKNOWN" >>"$dir/slurm.conf"
    done
    echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP" \
        >>"$dir/slurm.conf"
}

write_env() {
    local dir=$1 nodes=$2
    cat >"$dir/cluster.env" <<EOF
export SLURM_CONF=$dir/slurm.conf
export GPTX_SLURM_DIR=$dir
export GPTX_SLURM_NODES=${nodes// /,}
export GPTX_SLURM_PARTITION=$PARTITION
export GPTX_SLURM_JOBCOMP=$dir/log/jobcomp.txt
export GPTX_SLURM_MUNGE_SOCKET=$dir/munge/munge.socket.2
EOF
}

# start_failed DIR MESSAGE: report a failed start with the daemons' logs and exit; the EXIT trap
# set by start_cluster then stops whatever was started.
start_failed() {
    local dir=$1
    shift
    log "error: $*"
    print_logs "$dir"
    exit 1
}

start_cluster() {
    local dir=$1 count=$2 nodes base node i states bad
    [[ $count =~ ^[12]$ ]] || die "NODES must be 1 or 2, not $count"
    [[ $(id -u) == 0 ]] || die "must run as root"
    for cmd in munged munge unmunge slurmctld slurmd sbatch squeue scancel sinfo scontrol ss; do
        command -v "$cmd" >/dev/null || die "missing command: $cmd"
    done
    [[ -z $(cluster_daemons "$dir") ]] ||
        die "a cluster started in $dir is still running; run: $0 stop $dir"

    nodes=$(node_names "$count")
    # Until the start succeeds, any exit (an error, a signal) stops what was started.
    # shellcheck disable=SC2064
    trap "log 'start failed, stopping'; stop_cluster '$dir' >&2 || true" EXIT
    chmod go+x,go-w "$dir"
    rm -rf "$dir"/{munge,state,spool,run,log} "$dir/slurm.conf" "$dir/cluster.env"
    mkdir -m 0755 "$dir"/{munge,state,spool,run,log}
    for node in $nodes; do mkdir -m 0755 "$dir/spool/$node"; done

    # munge: a fresh key and a daemon of our own, on a socket under DIR.
    local sock=$dir/munge/munge.socket.2
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
    munged --socket="$sock" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed" ||
        start_failed "$dir" "munged did not start (every directory above its socket must be" \
            "searchable by all and not writable by group or others)"
    munge -n -S "$sock" | unmunge -S "$sock" >/dev/null ||
        start_failed "$dir" "munged does not answer on $sock"

    base=$(pick_ports $((count + 1))) || start_failed "$dir" "no free ports"
    write_conf "$dir" "$base" "$nodes"
    write_env "$dir" "$nodes"
    export SLURM_CONF=$dir/slurm.conf

    # The daemons fork into the background at once; a bad config or a taken port makes them
    # exit shortly after, which ends the waits below early.
    slurmctld -f "$SLURM_CONF" || start_failed "$dir" "slurmctld did not start"
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && break
        [[ $(daemon_count "$dir" slurmctld) == 1 ]] || start_failed "$dir" "slurmctld exited"
        sleep 0.2
    done
    scontrol ping 2>/dev/null | grep -q 'is UP' ||
        start_failed "$dir" "slurmctld does not answer on port $base"

    for node in $nodes; do
        slurmd -f "$SLURM_CONF" -N "$node" || start_failed "$dir" "slurmd for $node did not start"
    done

    # Wait until every node is idle.
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
        bad=$(awk '$2 != "idle"' <<<"$states")
        [[ -n $states && -z $bad ]] && break
        [[ $(daemon_count "$dir" slurmctld) == 1 ]] || start_failed "$dir" "slurmctld exited"
        [[ $(daemon_count "$dir" slurmd) == "$count" ]] || start_failed "$dir" "a slurmd exited"
        sleep 0.2
    done
    [[ -n $states && -z $bad ]] ||
        start_failed "$dir" "nodes not idle after ${START_TIMEOUT}s: ${states//$'\n'/, }"

    trap - EXIT
    log "cluster up in $dir: nodes ${nodes// /,}, slurmctld port $base"
    cat "$dir/cluster.env"
}

stop_cluster() {
    local dir=$1 pid daemons steps sids left i jobs
    local ctld=0 slurm_pids=() munge_pids=()

    daemons=$(cluster_daemons "$dir" | sort -u)
    for pid in $daemons; do
        case $(cat "/proc/$pid/comm" 2>/dev/null) in
            munged) munge_pids+=("$pid") ;;
            slurmctld) ctld=1; slurm_pids+=("$pid") ;;
            *) slurm_pids+=("$pid") ;;
        esac
    done

    # Kill all jobs while the controller is up, so that each slurmstepd reaps its job.
    if [[ $ctld == 1 && -f $dir/slurm.conf ]]; then
        export SLURM_CONF=$dir/slurm.conf
        jobs=$(timeout 3 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            # shellcheck disable=SC2086
            timeout 3 scancel -s KILL $jobs 2>/dev/null || true
            for ((i = 0; i < 30; i++)); do
                [[ -z $(cluster_steps "$dir") ]] && break
                sleep 0.1
            done
        fi
    fi

    # slurmd(s) and slurmctld first, munged last (the others use it until they exit).
    signal_wait TERM 4 "${slurm_pids[@]}" || signal_wait KILL 1 "${slurm_pids[@]}" || true
    signal_wait TERM 2 "${munge_pids[@]}" || signal_wait KILL 1 "${munge_pids[@]}" || true

    # A slurmstepd still alive (a job that could not be cancelled) goes with its job's session.
    steps=$(cluster_steps "$dir")
    if [[ -n $steps ]]; then
        sids=$(for pid in $steps; do awk '{print $6}' "/proc/$pid/stat" 2>/dev/null; done)
        # shellcheck disable=SC2086
        steps=$( (echo "$steps"; session_members $sids) | sort -u)
        # shellcheck disable=SC2086
        signal_wait KILL 1 $steps || true
    fi

    # The daemons were reparented to init; give it a moment to reap them, so that a pgrep
    # right after stop comes back empty.
    for ((i = 0; i < 30; i++)); do
        left=0
        for pid in $daemons $steps; do
            [[ -e /proc/$pid ]] && { left=1; break; }
        done
        [[ $left == 0 ]] && break
        sleep 0.1
    done

    rm -f "$dir"/run/*.pid "$dir/munge/munged.pid" 2>/dev/null || true
    left=$( (cluster_daemons "$dir"; cluster_steps "$dir") | sort -u | tr '\n' ' ')
    if [[ -n ${left// /} ]]; then
        log "error: processes still alive: $left"
        return 1
    fi
    log "cluster in $dir stopped"
}

[[ $# -ge 2 ]] || usage
cmd=$1
dir=${2%/}
case $cmd in
    start)
        [[ $# -le 3 ]] || usage
        check_dir "$dir"
        start_cluster "$dir" "${3:-1}"
        ;;
    stop)
        # DIR may be gone already: its daemons are still found by their command lines.
        [[ $# -eq 2 && $dir == /* ]] || usage
        stop_cluster "$dir"
        ;;
    env)
        check_dir "$dir"
        [[ $# -eq 2 && -f $dir/cluster.env ]] || die "no cluster was started in $dir"
        cat "$dir/cluster.env"
        ;;
    *) usage ;;
esac
