#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the profile tests: munge + slurmctld + slurmd, run as root,
# no cgroups, no accounting database (the profile polls squeue). Debian's slurm-wlm 22.05.
#   cluster.sh install   apt packages (root)
#   cluster.sh start     write /etc/slurm/slurm.conf, start the daemons, wait for an idle node
#   cluster.sh stop      stop exactly the daemons this script started (pid files under $STATE)
#   cluster.sh status    exit 0 when the node answers
#   cluster.sh munge_up  start munged unless it answers
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${ATMOREP_SLURM_STATE:-/tmp/atmorep-slurm}
CPUS=${ATMOREP_SLURM_CPUS:-$(nproc)}
MEM=${ATMOREP_SLURM_MEM_MB:-8000}
NODE=$(hostname -s)

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
  mkdir -p /etc/slurm "$STATE"/{ctld,spool,log}
  cat > /etc/slurm/slurm.conf <<CONF
# written by atmorep tests/slurm/cluster.sh
ClusterName=atmorep-test
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  cat "$HERE/policy.conf" >> /etc/slurm/slurm.conf
}

wait_for() {  # seconds command...
  local n=$(( $1 * 10 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

node_idle() { [ "$(sinfo -h -N -o %t 2>/dev/null | head -1)" = idle ]; }

# munged (shared by tests/slurm/twonode.sh); its pid file goes to $STATE only when this call started it
munge_up() {
  munge -n >/dev/null 2>&1 && return 0
  mkdir -p "$STATE" /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid" \
    || /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
  wait_for 5 munge -n
  cp /run/munge/munged.pid "$STATE/munged.pid"
}

start() {
  install
  if status; then echo "slurm already up"; return 0; fi
  # what a killed run left goes first (as in twonode.sh: recovered jobs would hold the node)
  stop
  rm -rf "$STATE/ctld" "$STATE/spool"
  configure
  munge_up
  /usr/sbin/slurmctld
  wait_for 20 sh -c 'scontrol ping | grep -q UP'
  /usr/sbin/slurmd
  wait_for 30 node_idle || { echo "slurm node not idle:"; sinfo -N -l; squeue; exit 1; }
  echo "slurm up: $(sinfo -h -N -o '%N %t %c CPUs')"
}

stop() {
  for d in slurmd slurmctld munged; do
    local pf="$STATE/$d.pid"
    [ -s "$pf" ] || continue
    local pid; pid=$(cat "$pf")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pf"
  done
}

status() { scontrol ping 2>/dev/null | grep -q UP && node_idle_or_busy; }
node_idle_or_busy() { sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

"${1:-status}"
