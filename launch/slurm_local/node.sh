#!/bin/bash
# Start, or lose, one node of a multi-node cluster made by start.sh --nodes N.
#
#   launch/slurm_local/node.sh DIR start NODE   start NODE's slurmd in its namespaces (again, after a kill)
#   launch/slurm_local/node.sh DIR kill NODE    lose NODE as a machine dies: its network goes silent first (peers
#                                               get no FIN/RST, as from a dead machine), then SIGKILL for its
#                                               slurmd, slurmstepds and the jobs' tasks on it
#   launch/slurm_local/node.sh DIR pids NODE    the process ids of NODE (slurmd, slurmstepd and their children)
#
# The controller declares a killed node DOWN after SlurmdTimeout (start.sh --slurmd-timeout) and requeues its jobs;
# once started again the node registers and is usable at once (ReturnToService=2).
set -euo pipefail
usage="usage: node.sh DIR start|kill|pids NODE"
root=${1:?$usage}
action=${2:?$usage}
name=${3:?$usage}
root=$(cd "$root" && pwd)
conf=$root/etc/slurm.conf
ns=$root/netns/$name
[ -e "$ns" ] || { echo "node.sh: no node $name in $root (made by start.sh --nodes N?)" >&2; exit 2; }
# Every process of the node descends from its slurmd, started with this variable; slurmstepd inherits it.
marker="UNIDET2_SLURM_NODE=$root/$name"

node_pids() {
  local pid
  local -a seeds=()
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    if { tr '\0' '\n' < "$environ"; } 2>/dev/null | grep -qxF "$marker"; then seeds+=("$pid"); fi
  done
  [ ${#seeds[@]} -eq 0 ] && return 0
  # The seeds and all their descendants (the tasks that slurmstepd forks do not carry the marker).
  for stat in /proc/[0-9]*/stat; do
    # "pid (comm) state ppid ...": comm may hold spaces, so cut after the last ')'.
    line=$( { cat "$stat"; } 2>/dev/null) || continue
    [ -n "$line" ] || continue
    rest=${line##*) }
    set -- $rest
    echo "${line%% *} $2"
  done | awk -v seeds="${seeds[*]}" '
    { parent[$1] = $2 }
    END {
      n = split(seeds, s, " "); for (i = 1; i <= n; i++) keep[s[i]] = 1
      do { changed = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } while (changed)
      for (p in keep) print p
    }'
}

case "$action" in
  start)
    nsenter --net="$ns" ip link set eth0 up
    # Own host name and /etc/hosts for the node; its jobs inherit both. slurmd daemonizes and keeps the namespaces.
    nsenter --net="$ns" unshare --uts --mount --propagation private \
      env "$marker" sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -N "$1" -f "$3"' \
      sh "$name" "$root/nodes/$name/hosts" "$conf"
    ;;
  kill)
    nsenter --net="$ns" ip link set eth0 down
    pids=$(node_pids)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    rm -f "$root/run/slurmd-$name.pid"
    ;;
  pids)
    node_pids
    ;;
  *)
    echo "node.sh: unknown action $action; $usage" >&2
    exit 2
    ;;
esac
exit 0
