#!/usr/bin/env bash
# Starts a local ShardForge cluster: one sf-scheduler and N sf-executors,
# each its own process on 127.0.0.1, and waits until every executor has
# registered with the scheduler. Stop it with stop-cluster.sh --dir DIR.
#
#   deploy/local/start-cluster.sh [options]
#
# Options:
#   --dir DIR             run folder for pid files, logs, work folders and
#                         cluster.env (default: a new temporary folder)
#   --executors N         executors to start (default 2)
#   --bin-dir DIR         folder with sf-scheduler and sf-executor (default:
#                         $CARGO_TARGET_DIR or ./target, release if built,
#                         else debug)
#   --port PORT           scheduler port (default: a free port)
#   --concurrent-tasks N  task slots per executor (default: the core count)
#   --scheduler-arg ARG   extra sf-scheduler argument (repeatable)
#   --executor-arg ARG    extra argument for every sf-executor (repeatable)
#   --timeout SECS        how long to wait for the cluster to come up (60)
#
# Prints the scheduler URL (df://127.0.0.1:PORT) on stdout and writes
# DIR/cluster.env:
#   SF_CLUSTER_URL=df://127.0.0.1:PORT
#   SF_CLUSTER_DIR=DIR
#   SF_SCHEDULER_PID=PID
#   SF_EXECUTOR_PIDS="PID PID ..."
# The processes inherit this shell's environment: that is where executors
# get object-store settings and credentials (AWS_*, GOOGLE_*, AZURE_*).
# If start-up fails, whatever was started is stopped again.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

log() { printf '[start-cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

DIR=""
EXECUTORS=2
BIN_DIR=""
PORT=""
SLOTS=""
TIMEOUT=60
SCHEDULER_ARGS=()
EXECUTOR_ARGS=()

while [ $# -gt 0 ]; do
  # --option=value is the same as --option value.
  case "$1" in
    --*=*) opt="${1%%=*}"; val="${1#*=}"; shift; set -- "$opt" "$val" "$@" ;;
  esac
  [ $# -ge 2 ] || case "$1" in -h|--help) ;; *) die "$1 needs a value" ;; esac
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --executors) EXECUTORS="$2"; shift 2 ;;
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --concurrent-tasks) SLOTS="$2"; shift 2 ;;
    --scheduler-arg) SCHEDULER_ARGS+=("$2"); shift 2 ;;
    --executor-arg) EXECUTOR_ARGS+=("$2"); shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case "$EXECUTORS" in ''|*[!0-9]*) die "--executors needs a number" ;; esac
case "$TIMEOUT" in ''|*[!0-9]*) die "--timeout needs a number of seconds" ;; esac

if [ -z "$BIN_DIR" ]; then
  target="${CARGO_TARGET_DIR:-$ROOT/target}"
  for profile in release debug; do
    if [ -x "$target/$profile/sf-scheduler" ] && [ -x "$target/$profile/sf-executor" ]; then
      BIN_DIR="$target/$profile"; break
    fi
  done
  [ -n "$BIN_DIR" ] || die "no sf-scheduler/sf-executor under $target; build them (cargo build --bins) or pass --bin-dir"
fi
for b in sf-scheduler sf-executor; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing"
done

if [ -z "$DIR" ]; then DIR="$(mktemp -d "${TMPDIR:-/tmp}/sf-cluster.XXXXXX")"; fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

# Ports handed out so far, so no two services get the same one.
TAKEN=" "
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 1 200); do
    if command -v python3 >/dev/null 2>&1; then
      p="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    else
      p=$(( (RANDOM % 20000) + 30000 ))
    fi
    case "$TAKEN" in *" $p "*) continue ;; esac
    if ! port_in_use "$p"; then TAKEN="$TAKEN$p "; echo "$p"; return 0; fi
  done
  return 1
}

started_ok=0
cleanup_on_failure() {
  if [ "$started_ok" != 1 ]; then
    log "start-up failed; stopping what was started (logs are in $DIR)"
    "$HERE/stop-cluster.sh" --dir "$DIR" >&2 || true
  fi
}
trap cleanup_on_failure EXIT

show_log() {
  log "--- last lines of $1 ---"
  tail -n 30 "$1" >&2 || true
}

if [ -z "$PORT" ]; then PORT="$(free_port)" || die "no free port for the scheduler"; else TAKEN="$TAKEN$PORT "; fi
STATE="$DIR/scheduler-state.json"
rm -f "$STATE"

# stdin from /dev/null and output to files: the processes outlive this
# script and must not hold its caller's pipes open.
"$BIN_DIR/sf-scheduler" --bind-host 127.0.0.1 --bind-port "$PORT" --external-host 127.0.0.1 \
  --state-file "$STATE" ${SCHEDULER_ARGS[@]+"${SCHEDULER_ARGS[@]}"} \
  </dev/null >"$DIR/scheduler.log" 2>&1 &
SCHEDULER_PID=$!
echo "$SCHEDULER_PID" >"$DIR/scheduler.pid"
log "sf-scheduler pid $SCHEDULER_PID on 127.0.0.1:$PORT"

deadline=$(( $(date +%s) + TIMEOUT ))
until [ -s "$STATE" ] && port_in_use "$PORT"; do
  kill -0 "$SCHEDULER_PID" 2>/dev/null || { show_log "$DIR/scheduler.log"; die "sf-scheduler exited during start-up"; }
  [ "$(date +%s)" -lt "$deadline" ] || { show_log "$DIR/scheduler.log"; die "sf-scheduler did not come up within ${TIMEOUT}s"; }
  sleep 0.1
done

EXECUTOR_PIDS=()
for i in $(seq 1 "$EXECUTORS"); do
  flight="$(free_port)" || die "no free port for executor $i"
  grpc="$(free_port)" || die "no free port for executor $i"
  work="$DIR/executor-$i"
  mkdir -p "$work"
  slots=()
  if [ -n "$SLOTS" ]; then slots=(--concurrent-tasks "$SLOTS"); fi
  "$BIN_DIR/sf-executor" --scheduler "df://127.0.0.1:$PORT" --bind-host 127.0.0.1 --external-host 127.0.0.1 \
    --port "$flight" --grpc-port "$grpc" --work-dir "$work" ${slots[@]+"${slots[@]}"} \
    ${EXECUTOR_ARGS[@]+"${EXECUTOR_ARGS[@]}"} \
    </dev/null >"$DIR/executor-$i.log" 2>&1 &
  pid=$!
  echo "$pid" >"$DIR/executor-$i.pid"
  EXECUTOR_PIDS+=("$pid")
  log "sf-executor $i pid $pid (flight $flight, grpc $grpc)"
done

registered() { grep -o '"id":' "$STATE" 2>/dev/null | wc -l | tr -d ' '; }
until [ "$(registered)" -ge "$EXECUTORS" ]; do
  for i in $(seq 1 "$EXECUTORS"); do
    pid="${EXECUTOR_PIDS[$((i - 1))]}"
    kill -0 "$pid" 2>/dev/null || { show_log "$DIR/executor-$i.log"; die "sf-executor $i exited during start-up"; }
  done
  kill -0 "$SCHEDULER_PID" 2>/dev/null || { show_log "$DIR/scheduler.log"; die "sf-scheduler exited"; }
  if [ "$(date +%s)" -ge "$deadline" ]; then
    show_log "$DIR/scheduler.log"
    die "only $(registered) of $EXECUTORS executors registered within ${TIMEOUT}s"
  fi
  sleep 0.1
done

URL="df://127.0.0.1:$PORT"
{
  echo "SF_CLUSTER_URL=$URL"
  echo "SF_CLUSTER_DIR=$DIR"
  echo "SF_SCHEDULER_PID=$SCHEDULER_PID"
  echo "SF_EXECUTOR_PIDS=\"${EXECUTOR_PIDS[*]}\""
} >"$DIR/cluster.env"
started_ok=1
log "cluster up: $URL with $EXECUTORS executors; stop with: $HERE/stop-cluster.sh --dir $DIR"
echo "$URL"
