#!/usr/bin/env bash
# A two-node SLURM cluster on this one machine for the multi-node tests, beside cluster.sh's one-node
# cluster (its own slurm.conf, state and addresses; the one munged shared). Each daemon lives in its own
# network namespace (iproute2 `ip netns`) and UTS namespace, so each "host" has its own host name, its
# own address and its own ports; all see the same /etc/hosts and /etc/slurm ($STATE/hosts, $STATE/etc):
#   atmctl    10.217.0.10  slurmctld
#   atmnode1  10.217.0.11  slurmd        (NodeName atmnode1, CPUs = nproc, RealMemory = $MEM)
#   atmnode2  10.217.0.12  slurmd
# joined by veth pairs on a bridge (atmbr0, 10.217.0.1: this namespace's way in, for sbatch/squeue).
# All traffic stays on these addresses, which exist only on this machine.
# Debian's build also has slurmd's multiple-slurmd mode (`scontrol show config`: MULTIPLE_SLURMD = Yes;
# several NodeNames on one host, one Port each), but its nodes share one host name and one address, so
# MPI, MASTER_ADDR and gloo would never leave loopback: namespaces test what a real cluster does.
#   twonode.sh start    create the namespaces, write $STATE/etc/slurm.conf, start the daemons, wait until
#                       both nodes are idle
#   twonode.sh stop     stop the daemons this script started, remove the namespaces, veths and bridge
#   twonode.sh status   exit 0 when both nodes answer
# Clients outside the nodes talk to it with SLURM_CONF=$STATE/etc/slurm.conf (/tmp/atmorep-slurm2/etc/...).
# Needs root (namespaces); SLURM and munge as cluster.sh installs them.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${ATMOREP_SLURM2_STATE:-/tmp/atmorep-slurm2}
NET=${ATMOREP_SLURM2_NET:-10.217.0}
CPUS=${ATMOREP_SLURM_CPUS:-$(nproc)}
MEM=${ATMOREP_SLURM_MEM_MB:-8000}
BRIDGE=atmbr0
CTL=atmctl
NODES=(atmnode1 atmnode2)
export SLURM_CONF=$STATE/etc/slurm.conf

addr() {  # host -> address
  case $1 in $CTL) echo "$NET.10" ;; atmnode1) echo "$NET.11" ;; atmnode2) echo "$NET.12" ;; esac
}

wait_for() {  # seconds command...
  local n=$(( $1 * 10 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

network() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local i=0
  mkdir -p "$STATE"
  { echo "127.0.0.1 localhost"; for h in "$CTL" "${NODES[@]}"; do echo "$(addr "$h") $h"; done; } \
    > "$STATE/hosts"
  for h in "$CTL" "${NODES[@]}"; do
    i=$((i + 1))
    ip netns list | grep -qw "$h" && continue
    ip netns add "$h"
    # the namespace side is eth0 in every host, as on a real cluster
    ip link add "atmv$i" type veth peer name "atmv${i}p"
    ip link set "atmv${i}p" netns "$h"
    ip netns exec "$h" ip link set "atmv${i}p" name eth0
    ip netns exec "$h" ip addr add "$(addr "$h")/24" dev eth0
    ip netns exec "$h" ip link set eth0 up
    ip netns exec "$h" ip link set lo up
    ip link set "atmv$i" master "$BRIDGE"
    ip link set "atmv$i" up
  done
}

configure() {
  mkdir -p "$STATE"/{ctld,log,etc} "${NODES[@]/#/$STATE/spool/}"
  {
    cat <<CONF
# written by atmorep tests/slurm/twonode.sh
ClusterName=atmorep-twonode
SlurmctldHost=$CTL($(addr "$CTL"))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
CONF
    cat "$HERE/policy.conf"
    for h in "${NODES[@]}"; do
      echo "NodeName=$h NodeAddr=$(addr "$h") NodeHostname=$h CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$SLURM_CONF"
}

in_host() {  # host command...: run in the host's network, UTS (host name) and mount namespaces
  local h=$1; shift
  # Its own /etc/hosts and /etc/slurm, as a real node has: inside a job, Snakemake's jobstep executor drops
  # every SLURM_* variable (SLURM_CONF too) before the rule's nested srun. Not `ip netns exec`: it
  # remounts /sys without the cgroup mounts slurmd insists on.
  mkdir -p /etc/slurm
  nsenter --net="/run/netns/$h" unshare --uts --mount sh -c \
    'hostname "$0" && mount --bind "$1/hosts" /etc/hosts && mount --bind "$1/etc" /etc/slurm \
     && shift && exec "$@"' \
    "$h" "$STATE" "$@"
}

idle_nodes() { sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l; }
both_idle() { [ "$(idle_nodes)" -eq ${#NODES[@]} ]; }

start() {
  bash "$HERE/cluster.sh" install
  if status; then echo "two-node slurm already up"; return 0; fi
  # What a killed run left (daemons, saved jobs) goes first: slurmctld would recover that run's jobs
  # and run them again on the new nodes, which then never come up idle.
  stop
  rm -rf "$STATE/ctld" "$STATE/spool"
  ATMOREP_SLURM_STATE=$STATE bash "$HERE/cluster.sh" munge_up
  network
  configure
  in_host "$CTL" /usr/sbin/slurmctld
  wait_for 20 sh -c 'scontrol ping | grep -q UP' \
    || { echo "slurmctld not up:"; tail "$STATE/log/slurmctld.log"; exit 1; }
  for h in "${NODES[@]}"; do in_host "$h" /usr/sbin/slurmd -N "$h"; done
  wait_for 30 both_idle || { echo "nodes not idle:"; sinfo -N -l; squeue; exit 1; }
  echo "two-node slurm up: $(sinfo -h -N -o '%N(%t)' | tr '\n' ' ')SLURM_CONF=$SLURM_CONF"
}

stop() {
  for pf in "$STATE"/slurmd-*.pid "$STATE/slurmctld.pid" "$STATE/munged.pid"; do
    [ -s "$pf" ] || continue
    local pid; pid=$(cat "$pf")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pf"
  done
  local i=0
  for h in "$CTL" "${NODES[@]}"; do
    i=$((i + 1))
    ip link del "atmv$i" 2>/dev/null || true  # gVisor keeps the root-side end after `netns del`
    ip netns del "$h" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

status() {
  [ -s "$SLURM_CONF" ] && scontrol ping 2>/dev/null | grep -q UP \
    && [ "$(sinfo -h -N -o %t 2>/dev/null | grep -cE '^(idle|mix|alloc)')" -eq ${#NODES[@]} ]
}

"${1:-status}"
