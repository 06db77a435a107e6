#!/usr/bin/env bash
# `just test`: formatting, lints, unit tests, and integration tests that start
# the real oms against a real tansu broker. The test stack is separate from the
# `just up` stack (own state folder and ports), and what this script starts it
# stops again, by pid, whatever the outcome.
export OMS_STATE="${OMS_TEST_STATE:-$(cd "$(dirname "$0")/.." && pwd)/.oms/test}"
export OMS_BROKER_PORT="${OMS_TEST_BROKER_PORT:-19092}"
export OMS_PG_PORT="${OMS_TEST_PG_PORT:-15432}"
export OMS_REDIS_PORT="${OMS_TEST_REDIS_PORT:-16379}"
source "$(dirname "$0")/lib.sh"

started=()
cleanup() {
  local c i
  # Stop in reverse order: oms before the broker it talks to.
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    c="${started[$i]}"
    "$OMS_ROOT/scripts/stack.sh" stop "$c" || true
  done
  rm -rf "/dev/shm/oms/test-e2e-$$"
}
trap cleanup EXIT

cd "$OMS_ROOT"
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
say "the benchmark's report code (python3 -m unittest omsbench.test_report)"
(cd "$OMS_ROOT/scripts" && python3 -m unittest --quiet omsbench.test_report)

"$OMS_ROOT/scripts/install.sh" tansu postgres redis nginx
# The debug binary: the broker supervisor's probe, and the live oms below.
cargo build --quiet --bin oms
export OMS_BIN="$OMS_TARGET_DIR/debug/oms"
if ! live_pid broker >/dev/null; then
  # A fresh log per run: tests create their own topics and must not pile up.
  rm -rf "$OMS_STATE/tansu" "$OMS_STATE/run/broker-restarts"
  "$OMS_ROOT/scripts/stack.sh" start broker
  started+=(broker)
fi
if ! live_pid postgres >/dev/null; then
  "$OMS_ROOT/scripts/stack.sh" start postgres
  started+=(postgres)
fi
if ! live_pid redis >/dev/null; then
  rm -rf "$OMS_STATE/redis"
  "$OMS_ROOT/scripts/stack.sh" start redis
  started+=(redis)
fi

export OMS_TEST_BOOTSTRAP="127.0.0.1:$OMS_BROKER_PORT"
# Tests create a database of their own on this cluster.
export OMS_TEST_DATABASE_URL="postgres://oms:oms@127.0.0.1:$OMS_PG_PORT/postgres"
export OMS_TEST_TANSU="$TANSU_BIN"
export OMS_TEST_PG_BIN="$PG_BIN"
# Tests use a key prefix of their own on this Redis, or start a private one.
export OMS_TEST_REDIS_URL="redis://127.0.0.1:$OMS_REDIS_PORT/0"
say "tests (broker $OMS_TEST_BOOTSTRAP)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# The API contract, checked from outside against a live daemon.
say "the test broker was restarted by its supervisor $(cat "$OMS_STATE/run/broker-restarts" 2>/dev/null || echo 0) time(s)"
"$OMS_ROOT/scripts/install.sh" schemathesis
OMS_HTTP_PORT="${OMS_TEST_HTTP_PORT:-18080}" \
  OMS_STORE_PATH="/dev/shm/oms/test-e2e-$$" "$OMS_ROOT/scripts/stack.sh" start oms
started+=(oms)
rm -rf "$OMS_STATE/prometheus"
OMS_HTTP_PORT="${OMS_TEST_HTTP_PORT:-18080}" OMS_PROM_PORT="${OMS_TEST_PROM_PORT:-19090}" OMS_SCRAPE_INTERVAL=1s \
  "$OMS_ROOT/scripts/stack.sh" start prometheus
started+=(prometheus)
OMS_PROM_URL="http://127.0.0.1:${OMS_TEST_PROM_PORT:-19090}" \
  "$OMS_ROOT/scripts/e2e.sh" "http://127.0.0.1:${OMS_TEST_HTTP_PORT:-18080}"

# The benchmark, shrunk to seconds (its own broker, clusters and ports), so
# `just bench` never rots: every step must measure, every accepted order must
# be stored, the report and charts must be written.
"$OMS_ROOT/scripts/bench.sh" --smoke
