#!/bin/bash
# Stop the cluster started by start.sh: slurmd, slurmctld, then munged, each by the PID in its pid file.
root=${1:?usage: stop.sh STATE_DIR}
for pidfile in "$root/run/slurmd.pid" "$root/run/slurmctld.pid" "$root/run/munged.pid"; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pidfile"
done
if [ -s "$root/run/munge_socket_dir" ]; then
  rm -rf "$(cat "$root/run/munge_socket_dir")"
  rm -f "$root/run/munge_socket_dir"
fi
exit 0
