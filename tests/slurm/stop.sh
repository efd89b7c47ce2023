#!/usr/bin/env bash
# Stop the daemons tests/slurm/start.sh started, by the PIDs it recorded in DIR/pids (slurmd
# first, munged last); waits until each has exited; removes the /etc/slurm files start.sh wrote.
set -u
DIR=$(realpath -m "${1:?usage: stop.sh DIR}")
[ -f "$DIR/pids" ] || exit 0
tac "$DIR/pids" | while read -r name pid; do
  [ -n "$pid" ] || continue
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped $name ($pid)"
  fi
done
: > "$DIR/pids"
# remove the config files start.sh wrote (never anyone else's)
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  [ -f "$f" ] && grep -qx "# written by tests/slurm/start.sh" "$f" && rm -f "$f"
done
exit 0
