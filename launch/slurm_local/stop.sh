#!/bin/bash
# Stop the cluster started by start.sh and remove what it made: slurmd(s), slurmctld, then munged, each by the PID
# in its pid file; on a multi-node cluster also what is left of each node (slurmstepd, tasks) and the network
# namespaces with their bridge and veths.
root=${1:?usage: stop.sh STATE_DIR}
[ -d "$root" ] || exit 0
root=$(cd "$root" && pwd)
here=$(cd "$(dirname "$0")" && pwd)

# slurmd(s) first, then slurmctld, then munged: TERM to each group together, 1 s to exit, then KILL (the cluster
# is thrown away: slurmctld saving its state for 5 s on TERM is of no use).
stop_pids() {
  local pid alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 10); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null; done
  return 0
}

for group in "$root/run/slurmd*.pid" "$root/run/slurmctld.pid" "$root/run/munged.pid"; do
  pids=()
  for pidfile in $group; do
    [ -s "$pidfile" ] && pids+=("$(cat "$pidfile")")
    rm -f "$pidfile"
  done
  [ ${#pids[@]} -gt 0 ] && stop_pids "${pids[@]}"
done
if [ -d "$root/netns" ]; then
  for ns in "$root"/netns/node*; do
    [ -e "$ns" ] || continue
    pids=$("$here/node.sh" "$root" pids "$(basename "$ns")")
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  done
  # Unmounting the last reference to a namespace removes it, and with it its interfaces (veths, bridge).
  for ns in "$root"/netns/*; do
    [ -e "$ns" ] || continue
    umount "$ns" 2>/dev/null
    rm -f "$ns"
  done
  rmdir "$root/netns" 2>/dev/null
fi
if [ -s "$root/run/munge_socket_dir" ]; then
  rm -rf "$(cat "$root/run/munge_socket_dir")"
  rm -f "$root/run/munge_socket_dir"
fi
exit 0
