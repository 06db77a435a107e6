# Shared helpers for the oms scripts. Source it; do not run it.
# Everything the scripts start is recorded by pid under $OMS_STATE/run and
# stopped by that pid, never by process name.
set -euo pipefail

OMS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One git-ignored folder holds the state, logs and pids of a stack.
OMS_STATE="$(realpath -m "${OMS_STATE:-$OMS_ROOT/.oms/dev}")"
# Tools we build ourselves live outside the checkout so every clone shares them.
OMS_TOOLS="${OMS_TOOLS:-$HOME/.cache/oms/tools}"

# Pinned versions.
TANSU_VERSION="0.6.0"
TANSU_FEATURES="libsql,dynostore"
# tansu-storage is rebuilt from its crates.io source with our patch; this is
# the crate's checksum in tansu 0.6.0's own Cargo.lock.
TANSU_STORAGE_SHA256="720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d"
TANSU_PATCH="$OMS_ROOT/deployment/tansu/tansu-storage-0.6.0.patch"
PG_MAJOR="15"
# Debian bookworm's redis-server (BSD-licensed 7.0).
REDIS_SERIES="7.0"
K6_VERSION="1.1.0"
# Flamegraphs of the benchmark (bench/flamegraph.sh).
INFERNO_VERSION="0.12.3"
SCHEMATHESIS_VERSION="4.32.5"
OPENAPI_PYTHON_CLIENT_VERSION="0.29.1"
MATPLOTLIB_VERSION="3.10.8"

# Ports of the stack (the test stack uses its own, see scripts/test.sh).
OMS_BROKER_PORT="${OMS_BROKER_PORT:-9092}"
OMS_PG_PORT="${OMS_PG_PORT:-5432}"
OMS_REDIS_PORT="${OMS_REDIS_PORT:-6379}"
OMS_HTTP_PORT="${OMS_HTTP_PORT:-8080}"
OMS_PROM_PORT="${OMS_PROM_PORT:-9090}"
OMS_STORE_PATH="${OMS_STORE_PATH:-/dev/shm/oms/dev}"
# The ports above are oms' own defaults (tests/layout.rs ties them).
# Stores that several instances share (group mode); the others are per
# instance. Tied to oms' engine table by the same test.
SHARED_STORES="postgres redis"
# Where oms keeps its Redis keys by default (store.redis.key_prefix).
OMS_REDIS_PREFIX="oms"
# How long `stop` waits after SIGTERM before SIGKILL: above the longest
# graceful stop of oms (HTTP drain, last batch, leaving the group, flush).
OMS_STOP_GRACE=25

# The stack's API keys (`oms keys`, `just key`): one file every instance reads,
# and the development key `up` makes (`ID KEY` on one line, owner-only).
OMS_KEYS_FILE="${OMS_KEYS_FILE:-$OMS_STATE/keys.toml}"
OMS_DEV_KEY_FILE="$OMS_STATE/dev.key"

# The development key (account `dev`, no limits), made once per stack and
# again if it was revoked; prints the key. Uses $OMS_BIN, else the release build.
dev_key() {
  local id bin="${OMS_BIN:-$OMS_TARGET_DIR/release/oms}"
  if [[ -s "$OMS_DEV_KEY_FILE" ]]; then
    id="$(cut -d' ' -f1 "$OMS_DEV_KEY_FILE")"
    if "$bin" keys list --json --keys-file "$OMS_KEYS_FILE" 2>/dev/null \
        | grep "\"id\":\"$id\"" | grep -qv revoked_at; then
      cut -d' ' -f2 "$OMS_DEV_KEY_FILE"
      return
    fi
  fi
  say "making a development API key (account dev, no limits) in $OMS_KEYS_FILE"
  mkdir -p "$OMS_STATE"
  (umask 077 && "$bin" keys create --keys-file "$OMS_KEYS_FILE" --account dev --rate 0 --in-flight 0 \
    2>/dev/null | tail -n 1 >"$OMS_DEV_KEY_FILE")
  cut -d' ' -f2 "$OMS_DEV_KEY_FILE"
}

TANSU_BIN="$OMS_TOOLS/bin/tansu"
OMS_TARGET_DIR="${CARGO_TARGET_DIR:-$OMS_ROOT/target}"
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

run_dir() { mkdir -p "$OMS_STATE/run" "$OMS_STATE/log"; echo "$OMS_STATE/run"; }
pid_file() { echo "$(run_dir)/$1.pid"; }
log_file() { run_dir >/dev/null; echo "$OMS_STATE/log/$1.log"; }

# The recorded pid of a component, if that process is still alive.
live_pid() {
  local file pid
  file="$(pid_file "$1")"
  [[ -f "$file" ]] || return 1
  pid="$(cat "$file")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

# Polls a command until it succeeds, giving up when the deadline (seconds)
# passes or the component's recorded process has exited.
wait_for_component() {
  local name="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    live_pid "$name" >/dev/null || return 1
    (( SECONDS < deadline )) || return 1
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Stops one component by its recorded pid: SIGTERM, then SIGKILL after a grace period.
stop_component() {
  local name="$1" grace="${2:-20}" pid
  if ! pid="$(live_pid "$name")"; then
    rm -f "$(pid_file "$name")"
    return 0
  fi
  say "stopping $name (pid $pid)"
  kill "-${STOP_SIGNAL:-TERM}" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      warn "$name did not stop within ${grace}s; killing pid $pid"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$(pid_file "$name")"
}

# Whether store engine $1 is one several instances share.
shared_store() { [[ " $SHARED_STORES " == *" $1 "* ]]; }

# Runs a command as the postgres user when we are root (initdb refuses root).
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
