#!/bin/bash
# Start a throw-away SLURM cluster on this machine (munged + slurmctld + one slurmd per node), all state under DIR.
#
#   launch/slurm_local/start.sh DIR [--nodes N] [--cpus-per-node C] [--slurmd-timeout S] [--first-job-id I]
#       prints "export SLURM_CONF=...; export PATH=..." (eval it to use the cluster)
#   launch/slurm_local/node.sh  DIR kill|start NODE     (multi-node: lose a node as a dead machine would, bring it back)
#   launch/slurm_local/stop.sh  DIR                     (stops everything and removes what start.sh made)
#
# Needs root and Debian's packages: apt-get install -y slurmctld slurmd slurm-client munge.
#
# --nodes 1 (the default): one slurmd named "localhost" on 127.0.0.1, ports picked free at start so two clusters
# (two test sessions) can run side by side.
#
# --nodes N >= 2: every node is a host of its own, on a private network that exists only inside network namespaces
# made here (nothing is added to this machine's own network):
#   DIR/netns/ctl      the controller's network namespace: bridge br0 with 10.77.0.1/24; slurmctld runs in it under
#                      this machine's host name (SlurmctldHost must name the host slurmctld runs on);
#   DIR/netns/nodeI    node I's network namespace: eth0 (a veth into br0) with 10.77.0.(10+I)/24; its slurmd also
#                      has its own UTS namespace (host name nodeI) and mount namespace (DIR/nodes/nodeI/hosts bound
#                      on /etc/hosts: every node's name -> its address), which the node's jobs inherit.
# The namespaces are entered with `nsenter --net=FILE` (`ip netns exec` remounts /sys without the cgroup mounts and
# slurmd then stops). Slurm's commands reach the controller through the wrappers in DIR/bin (they run the real
# command inside the controller's namespace, or directly when called inside a job on a node), so DIR/bin goes first
# on PATH. SlurmdParameters=config_overrides lets each node advertise its share of the CPUs (C, default
# nproc / N, at least 1) instead of the whole machine. Addresses and ports are private to the namespaces, so two
# clusters do not collide.
#
# Settings that matter for the launcher tests:
#   cred_expire=5, sched_interval=2  a requeued job restarts after ~7 s instead of ~140 s (5 is the least
#                                     value slurm takes: with 3 it falls back to the default 120);
#   batch_sched_delay=0               sbatch -> running in <1 s;
#   DefMemPerCPU                      jobs share the node instead of each taking all of its memory;
#   MinJobAge=300                     finished jobs stay visible to squeue (and so to bin/sacct, the shim);
#   SlurmdTimeout (--slurmd-timeout)  how long a silent node may stay up before slurm declares it DOWN and
#                                     requeues its jobs (default 300, slurm's own; MessageTimeout follows
#                                     it down to half of it, at least 2 s);
#   ReturnToService=2                 a DOWN node that registers again is usable at once;
#   FirstJobId (--first-job-id)       clusters used by one process should not share job ids (submitit caches
#                                     job states by id);
#   no kill_invalid_depend            the pipeline must cancel dependants itself (--kill-on-invalid-dep).
set -euo pipefail
usage="usage: start.sh DIR [--nodes N] [--cpus-per-node C] [--slurmd-timeout S] [--first-job-id I]"
root=${1:?$usage}
shift
nodes=1
cpus_per_node=
slurmd_timeout=300
first_job_id=1
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=${2:?$usage}; shift 2 ;;
    --cpus-per-node) cpus_per_node=${2:?$usage}; shift 2 ;;
    --slurmd-timeout) slurmd_timeout=${2:?$usage}; shift 2 ;;
    --first-job-id) first_job_id=${2:?$usage}; shift 2 ;;
    *) echo "start.sh: unknown option $1; $usage" >&2; exit 2 ;;
  esac
done
case "$nodes" in ''|*[!0-9]*|0) echo "start.sh: --nodes must be a positive integer, got '$nodes'" >&2; exit 2 ;; esac
if [ "$nodes" -gt 200 ]; then echo "start.sh: at most 200 nodes (one /24 network)" >&2; exit 2; fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$root"
root=$(cd "$root" && pwd)
conf=$root/etc/slurm.conf
mkdir -p "$root"/{etc,state,spool,log,run,munge}
chmod 700 "$root/munge"
echo "$nodes" > "$root/run/nodes"
# munged insists that every directory above its socket is searchable by all users; $root may sit below a
# private directory (pytest's tmp dirs are 0700), so the socket gets its own directory in /tmp.
socket_dir=$(mktemp -d /tmp/unidet2-munge.XXXXXX)
chmod 755 "$socket_dir"
echo "$socket_dir" > "$root/run/munge_socket_dir"

key=$root/munge/munge.key
socket=$socket_dir/munge.socket
[ -s "$key" ] || mungekey --create --keyfile="$key" >/dev/null
chmod 400 "$key"
munged --socket="$socket" --key-file="$key" --pid-file="$root/run/munged.pid" \
       --log-file="$root/log/munged.log" --seed-file="$root/munge/munged.seed"
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
munge --socket="$socket" --no-input | unmunge --socket="$socket" >/dev/null

# nproc alone would count OMP_NUM_THREADS (=1 in many test set-ups) instead of the CPUs.
total_cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
# Advertise 80 % of the available memory, so slurmd never reports more than the machine has.
mem_mb=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
# A ping of a silent node fails after MessageTimeout (default 10 s): keep it below a short SlurmdTimeout.
message_timeout=$(( slurmd_timeout >= 20 ? 10 : (slurmd_timeout / 2 > 2 ? slurmd_timeout / 2 : 2) ))
cluster_name=unidet2-$(basename "$root" | tr -dc 'a-z0-9' | cut -c1-20)

common_settings() {
  cat <<CONF
ClusterName=$cluster_name
FirstJobId=$first_job_id
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=5
StateSaveLocation=$root/state
SlurmdSpoolDir=$root/spool/%n
SlurmctldPidFile=$root/run/slurmctld.pid
SlurmctldLogFile=$root/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmdTimeout=$slurmd_timeout
MessageTimeout=$message_timeout
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
CONF
}

wait_until_idle() {  # all nodes idle, else show the logs and fail
  local want=$1 count=0
  for _ in $(seq 150); do
    count=$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)
    [ "$count" -ge "$want" ] && return 0
    sleep 0.2
  done
  echo "only $count of $want slurm node(s) became idle; logs:" >&2
  sinfo -N >&2 || true
  tail -n 20 "$root"/log/*.log >&2
  exit 1
}

if [ "$nodes" -eq 1 ]; then
  free_port() {
    "${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  }
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  node=localhost
  {
    common_settings
    cat <<CONF
SlurmctldHost=$node
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmdPidFile=$root/run/slurmd.pid
SlurmdLogFile=$root/log/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$total_cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  } > "$conf"
  # -c: cold start (no saved state); -N: the node name of slurm.conf (the host name is not "localhost").
  slurmctld -c -f "$conf"
  slurmd -N "$node" -f "$conf"
  export SLURM_CONF=$conf
  wait_until_idle 1
  echo "export SLURM_CONF=$conf; export PATH=$here/bin:\$PATH"
  exit 0
fi

# ------------------------------------------------------------------------------------------------ multi-node
subnet=10.77.0
controller=$(hostname -s)
cpus=${cpus_per_node:-$(( total_cpus / nodes > 0 ? total_cpus / nodes : 1 ))}
mkdir -p "$root/netns" "$root/nodes" "$root/bin"
in_ctl() { nsenter --net="$root/netns/ctl" "$@"; }

new_netns() {  # a network namespace that lives as long as its file is bind-mounted (stop.sh unmounts it)
  touch "$1"
  unshare --net="$1" true
}
new_netns "$root/netns/ctl"
in_ctl ip link set lo up
in_ctl ip link add br0 type bridge
in_ctl ip addr add "$subnet.1/24" dev br0
in_ctl ip link set br0 up

hosts_lines="127.0.0.1 localhost
$subnet.1 $controller"
node_lines=""
for i in $(seq "$nodes"); do
  hosts_lines="$hosts_lines
$subnet.$((10 + i)) node$i"
  node_lines="${node_lines}NodeName=node$i NodeAddr=$subnet.$((10 + i)) CPUs=$cpus RealMemory=$(( mem_mb / nodes )) State=UNKNOWN
"
done
for i in $(seq "$nodes"); do
  name=node$i
  ns=$root/netns/$name
  new_netns "$ns"
  # eth0 inside the node, its peer (v-nodeI) plugged into the bridge in the controller's namespace.
  nsenter --net="$ns" ip link add eth0 type veth peer name "v-$name"
  nsenter --net="$ns" ip link set "v-$name" netns "$root/netns/ctl"
  nsenter --net="$ns" ip addr add "$subnet.$((10 + i))/24" dev eth0
  nsenter --net="$ns" ip link set lo up
  nsenter --net="$ns" ip link set eth0 up
  in_ctl ip link set "v-$name" master br0
  in_ctl ip link set "v-$name" up
  mkdir -p "$root/nodes/$name"
  printf '%s\n' "$hosts_lines" > "$root/nodes/$name/hosts"
done

{
  common_settings
  cat <<CONF
SlurmctldHost=$controller($subnet.1)
SlurmdParameters=config_overrides
SlurmdPidFile=$root/run/slurmd-%n.pid
SlurmdLogFile=$root/log/slurmd-%n.log
${node_lines}PartitionName=debug Nodes=node[1-$nodes] Default=YES MaxTime=INFINITE State=UP
CONF
} > "$conf"

# Client wrappers: the real command in the controller's namespace, or as is inside a job on a node (the node's own
# network reaches the controller; srun must run there so that the node's slurmd can connect back to it).
for command in sbatch srun salloc squeue scancel scontrol sinfo sstat; do
  real=$(command -v "$command")
  cat > "$root/bin/$command" <<WRAPPER
#!/bin/bash
# $command of the local multi-node cluster in $root (made by launch/slurm_local/start.sh)
if [ -n "\${SLURMD_NODENAME:-}" ]; then exec $real "\$@"; fi
exec nsenter --net=$root/netns/ctl $real "\$@"
WRAPPER
  chmod +x "$root/bin/$command"
done
export SLURM_CONF=$conf PATH=$root/bin:$PATH

in_ctl slurmctld -c -f "$conf"
for i in $(seq "$nodes"); do
  "$here/node.sh" "$root" start "node$i"
done
wait_until_idle "$nodes"
echo "export SLURM_CONF=$conf; export PATH=$root/bin:$here/bin:\$PATH"
