#!/usr/bin/env bash
# Runs ShardForge's whole test suite against real parts.
#
#   ./scripts/test.sh [extra `cargo test` arguments]
#
# It installs what the tests need (Python venv support if missing, the moto
# S3 server from PyPI into .cache/venv), starts the S3 server on 127.0.0.1
# with mutating requests serialised, creates the test buckets, exports the
# object_store variables the tests read, runs `cargo test --workspace`, and
# stops the server on exit, whatever happens.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="$ROOT/.cache"
VENV="$CACHE/venv"
MOTO_VERSION="5.2.5"
BUCKET="sf-test"

log() { printf '[test.sh] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

ensure_python() {
  if command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 \
     && python3 -c 'import ensurepip' >/dev/null 2>&1; then
    return
  fi
  log "installing Python with venv support (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
}

ensure_moto() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    return
  fi
  log "installing moto[server]==$MOTO_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

SERVER_PID=""
RUN_DIR=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  [ -n "$RUN_DIR" ] && rm -rf "$RUN_DIR"
}
trap stop_server EXIT INT TERM

start_server() {
  RUN_DIR="$(mktemp -d)"
  "$VENV/bin/python" "$ROOT/scripts/s3_server.py" --port-file "$RUN_DIR/port" 2>"$RUN_DIR/server.log" &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    [ -s "$RUN_DIR/port" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "the S3 server exited during start-up:"; cat "$RUN_DIR/server.log" >&2; exit 1
    fi
    sleep 0.1
  done
  [ -s "$RUN_DIR/port" ] || { log "the S3 server did not start within 30 s"; cat "$RUN_DIR/server.log" >&2; exit 1; }
  local port; port="$(cat "$RUN_DIR/port")"
  export AWS_ENDPOINT="http://127.0.0.1:$port"
  export AWS_ALLOW_HTTP=true
  export AWS_REGION=us-east-1
  export AWS_DEFAULT_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=testing
  export AWS_SECRET_ACCESS_KEY=testing
  export AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
  export AWS_CONDITIONAL_PUT=etag
  export SHARDFORGE_TEST_S3_BUCKET="$BUCKET"
  # Buckets must exist before object_store can write to them: a plain PUT.
  "$VENV/bin/python" - "$AWS_ENDPOINT" "$BUCKET" <<'PY'
import sys, urllib.request
endpoint, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
with urllib.request.urlopen(req, timeout=10) as r:
    assert r.status == 200, r.status
PY
  log "S3 server on $AWS_ENDPOINT, bucket $BUCKET"
}

# The deployment files cannot all run here; check what can be checked: every
# YAML file under deploy/ parses (PyYAML comes with moto), the compose file
# validates where a Docker engine is reachable, and the Kubernetes
# manifests render where kubectl is installed.
check_deploy_files() {
  log "parsing deploy/**/*.yaml"
  "$VENV/bin/python" - "$ROOT/deploy" <<'PY'
import pathlib, sys, yaml
root = pathlib.Path(sys.argv[1])
files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
if not files:
    sys.exit(f"no YAML files under {root}")
for path in files:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        sys.exit(f"{path}: {e}")
    if not docs:
        sys.exit(f"{path}: no YAML document")
    print(f"  {path.relative_to(root.parent)}: {len(docs)} document(s)", file=sys.stderr)
PY
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
     && docker compose version >/dev/null 2>&1; then
    log "docker compose config (deploy/compose)"
    docker compose -f "$ROOT/deploy/compose/compose.yaml" config --quiet
  else
    log "no Docker engine with compose here: the compose file was parsed, not validated by docker"
  fi
  if command -v kubectl >/dev/null 2>&1; then
    log "kubectl kustomize deploy/k8s"
    kubectl kustomize "$ROOT/deploy/k8s" >/dev/null
  fi
}

ensure_python
ensure_moto
check_deploy_files
start_server
log "cargo build --workspace --bins"
cargo build --workspace --bins
log "cargo test --workspace $*"
cargo test --workspace "$@"
