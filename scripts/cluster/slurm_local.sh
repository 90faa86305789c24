#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from the Debian packages slurm-wlm and munge:
# munged, slurmctld and slurmd on 127.0.0.1, everything (config, munge key, spool, state, logs,
# pid files) in one folder, $ESVAE_SLURM_DIR (default /tmp/esvae-slurm).
#
#   bash scripts/cluster/slurm_local.sh up       # start it; waits until the node is idle (at most 60 s)
#   bash scripts/cluster/slurm_local.sh status   # daemons and the node's state
#   bash scripts/cluster/slurm_local.sh down     # stop exactly the daemons in its pid files
#
# Slurm's commands (sbatch, squeue, srun, ...) find the configuration where they do on a real
# cluster: /etc/slurm/slurm.conf, a link to the state folder's file for as long as the cluster is
# up (an existing file there is never replaced). SLURM_CONF would not do: Snakemake's jobstep
# plugin removes every SLURM_* variable before its `srun` inside a job (snakemake-executor-plugin-slurm
# issue #164), and that srun then finds no configuration.
#
# The node offers every core, the memory less 1 GiB, and one `gpu` generic resource per core with
# /dev/null behind it: rules asking for a GPU are scheduled on a CPU-only machine. No accounting
# daemon (job states come from squeue, see profiles/slurm), no cgroups. Root is needed (the daemons
# run as root); as root the packages are installed with apt-get when missing.
set -euo pipefail

STATE=${ESVAE_SLURM_DIR:-/tmp/esvae-slurm}
CONF=$STATE/slurm.conf
LINK=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF   # this script's own sinfo/scancel
DAEMONS=(slurmd slurmctld munged)   # stop order; started in reverse

die() { echo "slurm_local: error: $*" >&2; exit 1; }
say() { echo "slurm_local: $*" >&2; }

pid_of() {   # the live pid of a daemon started here, else nothing (a reused pid of another program is not it)
  local pid
  pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 0
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid" || true
}

need_packages() {
  local missing=()
  for p in slurm-wlm munge; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "the Debian packages ${missing[*]} are missing; install them as root: apt-get install ${missing[*]}"
  say "installing ${missing[*]} with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

write_config() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {m = int($2 / 1024) - 1024; print (m > 512 ? m : 512)}' /proc/meminfo)   # 1 GiB margin
  rm -rf "$STATE"
  mkdir -p "$STATE"/{munge,run,ctld,spool,log,dev}
  chmod 755 "$STATE" "$STATE/run"   # munged: its socket's folders must be searchable by all,
  chmod 700 "$STATE/munge"          # its key's folder private
  head -c 1024 /dev/urandom > "$STATE/munge/munge.key"
  chmod 400 "$STATE/munge/munge.key"
  cat > "$CONF" <<EOF
# Written by scripts/cluster/slurm_local.sh: one node, loopback only.
ClusterName=esvae-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/run/munge.socket.2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# finished jobs stay listed by squeue for an hour (Snakemake's plugin reads job states from squeue)
MinJobAge=3600
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$cpus State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # gpu: slurmd drops a GPU without a device file and wants a character device: links to /dev/null
  for ((i = 0; i < cpus; i++)); do ln -s /dev/null "$STATE/dev/gpu$i"; done
  echo "NodeName=$host Name=gpu File=$STATE/dev/gpu[0-$((cpus - 1))]" > "$STATE/gres.conf"
}

abort() {   # a failed start: the logs, then stop whatever did start
  local d
  for d in munged slurmctld slurmd; do
    [ -s "$STATE/log/$d.log" ] && { say "$d log:"; tail -n 10 "$STATE/log/$d.log" >&2; }
  done
  down
  die "$1; logs above, daemons stopped"
}

up() {
  local running=() start d deadline node_state="" ready=""
  for d in "${DAEMONS[@]}"; do [ -n "$(pid_of "$d")" ] && running+=("$d"); done
  [ ${#running[@]} = 0 ] || die "already running in $STATE (${running[*]}); run '$0 down' first"
  need_packages
  [ "$(id -u)" = 0 ] || die "must run as root (the SLURM and munge daemons run as root here)"
  if [ -e "$LINK" ] || [ -L "$LINK" ]; then
    [ "$(readlink "$LINK")" = "$CONF" ] || die "$LINK exists and is not this script's link; not replacing another SLURM configuration"
  fi
  start=$(date +%s.%N)
  write_config
  mkdir -p "$(dirname "$LINK")"
  ln -sfn "$CONF" "$LINK"
  munged --socket="$STATE/run/munge.socket.2" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed" \
    || abort "munged did not start"
  slurmctld -f "$CONF" || abort "slurmctld did not start"
  slurmd -f "$CONF" || abort "slurmd did not start"
  deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    for d in "${DAEMONS[@]}"; do   # a pid file whose process is gone (a daemon writes it a moment after starting)
      [ -s "$STATE/$d.pid" ] && [ -z "$(pid_of "$d")" ] && abort "$d exited"
    done
    node_state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null || true)
    if [ "$node_state" = idle ] && [ -n "$(pid_of munged)" ] && [ -n "$(pid_of slurmctld)" ] && [ -n "$(pid_of slurmd)" ]; then
      ready=1
      break
    fi
    [[ $node_state =~ inval|drain ]] && break   # refused its configuration: no point waiting
    sleep 0.5
  done
  [ -n "$ready" ] || abort "the node is not idle with all daemons running after $((SECONDS - deadline + 60)) s (sinfo says '${node_state:-nothing}')"
  say "up in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}') s:" \
      "node $(hostname -s), $(nproc) CPUs, gpu:$(nproc) (no device behind them); state in $STATE"
  say "configuration: $CONF (linked from $LINK)"
}

down() {
  local d pid t
  if [ -n "$(pid_of slurmctld)" ] && [ -n "$(pid_of slurmd)" ]; then   # no job outlives the cluster
    timeout 10 scancel --full --user="$(id -un)" 2>/dev/null || true
    t=$((SECONDS + 30))   # for their processes to end
    while [ $SECONDS -lt $t ] && [ -n "$(timeout 5 squeue -h -t running,completing -o %i 2>/dev/null)" ]; do sleep 0.5; done
  fi
  for d in "${DAEMONS[@]}"; do
    pid=$(pid_of "$d")
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
    t=$((SECONDS + 20))   # then KILL
    while [ $SECONDS -lt $t ] && [ -d "/proc/$pid" ]; do sleep 0.5; done
    if [ -d "/proc/$pid" ]; then say "$d ($pid) ignored TERM for 20 s; KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    say "stopped $d ($pid)"
  done
  if [ "$(readlink "$LINK" 2>/dev/null)" = "$CONF" ]; then rm -f "$LINK"; fi
}

status() {
  local d pid rc=0
  for d in munged slurmctld slurmd; do
    pid=$(pid_of "$d")
    if [ -n "$pid" ]; then echo "$d: running ($pid)"; else echo "$d: not running"; rc=1; fi
  done
  [ $rc = 0 ] && timeout 10 sinfo -N -o "%N %T %c %m %G" || true
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status   (state in \$ESVAE_SLURM_DIR, default /tmp/esvae-slurm)" >&2; exit 2 ;;
esac
