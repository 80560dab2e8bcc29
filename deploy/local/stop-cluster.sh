#!/usr/bin/env bash
# Stops a cluster started by start-cluster.sh: every process whose pid file
# is in the run folder, executors first, politely (SIGTERM), then by force
# (SIGKILL) after a grace period. Safe to run twice; a pid that now belongs
# to another program is left alone.
#
#   deploy/local/stop-cluster.sh --dir DIR [--grace SECS]
set -euo pipefail

log() { printf '[stop-cluster] %s\n' "$*" >&2; }

DIR=""
GRACE=10
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) opt="${1%%=*}"; val="${1#*=}"; shift; set -- "$opt" "$val" "$@" ;;
  esac
  [ $# -ge 2 ] || case "$1" in -h|--help) ;; *) log "$1 needs a value"; exit 2 ;; esac
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --grace) GRACE="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) log "unknown argument: $1"; exit 2 ;;
  esac
done
[ -n "$DIR" ] || { log "--dir is required"; exit 2; }
[ -d "$DIR" ] || { log "$DIR does not exist; nothing to stop"; exit 0; }
case "$GRACE" in ''|*[!0-9]*) log "--grace needs a number of seconds"; exit 2 ;; esac

# Ours only if the pid still runs one of our binaries.
ours() {
  local pid="$1" args
  args="$(ps -p "$pid" -o args= 2>/dev/null)" || return 1
  case "$args" in *sf-scheduler*|*sf-executor*) return 0 ;; *) return 1 ;; esac
}

stop_group() {
  local pids=() pid f
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    if [ -n "$pid" ] && ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  local deadline=$(( $(date +%s) + GRACE ))
  while :; do
    local alive=()
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null && ours "$pid"; then alive+=("$pid"); fi
    done
    [ "${#alive[@]}" -gt 0 ] || break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "killing ${alive[*]} after ${GRACE}s"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  # Reap what we killed, if it was our child; otherwise just wait it out.
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}

shopt -s nullglob
stop_group "$DIR"/executor-*.pid
stop_group "$DIR"/scheduler.pid
rm -f "$DIR"/executor-*.pid "$DIR"/scheduler.pid
log "stopped the cluster in $DIR"
