#!/bin/bash
# Start a throw-away single-node SLURM cluster (munged + slurmctld + slurmd) with all state under $1.
#
#   launch/slurm_local/start.sh /tmp/slurm-xyz     # prints "export SLURM_CONF=...; export PATH=..."
#   launch/slurm_local/stop.sh  /tmp/slurm-xyz
#
# Needs root and Debian's packages: apt-get install -y slurmctld slurmd slurm-client munge.
# Ports are picked free at start so two clusters (two test sessions) can run side by side.
# Settings that matter for the launcher tests:
#   cred_expire=5, sched_interval=2  a requeued job restarts after ~7 s instead of ~140 s (5 is the least
#                                     value slurm takes: with 3 it falls back to the default 120);
#   batch_sched_delay=0               sbatch -> running in <1 s;
#   DefMemPerCPU                      jobs share the node instead of each taking all of its memory;
#   MinJobAge=300                     finished jobs stay visible to squeue (and so to bin/sacct, the shim);
#   no kill_invalid_depend            the pipeline must cancel dependants itself (--kill-on-invalid-dep).
set -euo pipefail
root=${1:?usage: start.sh STATE_DIR}
mkdir -p "$root"
root=$(cd "$root" && pwd)
node=localhost
conf=$root/etc/slurm.conf
mkdir -p "$root"/{etc,state,spool,log,run,munge}
chmod 700 "$root/munge"
# munged insists that every directory above its socket is searchable by all users; $root may sit below a
# private directory (pytest's tmp dirs are 0700), so the socket gets its own directory in /tmp.
socket_dir=$(mktemp -d /tmp/unidet2-munge.XXXXXX)
chmod 755 "$socket_dir"
echo "$socket_dir" > "$root/run/munge_socket_dir"

free_port() {
  "${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

key=$root/munge/munge.key
socket=$socket_dir/munge.socket
[ -s "$key" ] || mungekey --create --keyfile="$key" >/dev/null
chmod 400 "$key"
munged --socket="$socket" --key-file="$key" --pid-file="$root/run/munged.pid" \
       --log-file="$root/log/munged.log" --seed-file="$root/munge/munged.seed"
for _ in $(seq 50); do [ -S "$socket" ] && break; sleep 0.1; done
munge --socket="$socket" --no-input | unmunge --socket="$socket" >/dev/null

cpus=$(nproc)
# Advertise 80 % of the available memory, so slurmd never reports more than the machine has.
mem_mb=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > "$conf" <<CONF
ClusterName=unidet2-$(basename "$root" | tr -dc 'a-z0-9' | cut -c1-20)
SlurmctldHost=$node
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=5
StateSaveLocation=$root/state
SlurmdSpoolDir=$root/spool/%n
SlurmctldPidFile=$root/run/slurmctld.pid
SlurmdPidFile=$root/run/slurmd.pid
SlurmctldLogFile=$root/log/slurmctld.log
SlurmdLogFile=$root/log/slurmd.log
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
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

# -c: cold start (no saved state); -N: the node name of slurm.conf (the host name is not "localhost").
slurmctld -c -f "$conf"
slurmd -N "$node" -f "$conf"
export SLURM_CONF=$conf
for _ in $(seq 100); do
  [ "$(sinfo -h -n "$node" -o %T 2>/dev/null)" = idle ] && break
  sleep 0.2
done
if [ "$(sinfo -h -n "$node" -o %T 2>/dev/null)" != idle ]; then
  echo "slurm node did not become idle; logs:" >&2
  tail -n 20 "$root/log/slurmctld.log" "$root/log/slurmd.log" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
echo "export SLURM_CONF=$conf; export PATH=$here/bin:\$PATH"
