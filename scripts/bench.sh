#!/usr/bin/env bash
# `just bench`: the k6 load and the store comparison, written to bench/REPORT.md
# with charts. `just bench --smoke` (run by `just test`) is the same benchmark
# shrunk to seconds, written to a scratch folder, so it never rots.
#
# It starts everything it measures itself (tansu twice: durable sqlite and in
# memory; PostgreSQL twice: data on disk and on tmpfs; Redis per step; Prometheus;
# oms, and nginx for the scale row), on
# ports of its own, and stops all of it again whatever the outcome.
export OMS_STATE="${OMS_BENCH_STATE:-$(cd "$(dirname "$0")/.." && pwd)/.oms/bench}"
source "$(dirname "$0")/lib.sh"

cd "$OMS_ROOT"
"$OMS_ROOT/scripts/install.sh" tansu postgres redis prometheus k6 wrk charts nginx
# The smoke run proves the steps work, not how fast they are: the debug build
# `just test` already has will do, and spares CI a release build.
profile=release
[[ " $* " == *" --smoke "* ]] && profile=debug
say "building oms, the raw-broker client and the bare relay ($profile)"
if [[ $profile == release ]]; then
  cargo build --release --quiet --bin oms --example rawlog --example relay
else
  cargo build --quiet --bin oms --example rawlog --example relay
fi

# The in-process benchmarks (the book, the key check) are always optimised
# builds (cargo's bench profile).
bench_bin() {
  cargo bench --quiet --no-run --bench "$1" --message-format=json | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}
OMS_MATCHING_BIN="$(bench_bin matching)"
OMS_AUTH_BENCH_BIN="$(bench_bin auth)"
export OMS_MATCHING_BIN OMS_AUTH_BENCH_BIN
export OMS_BIN="$OMS_TARGET_DIR/$profile/oms"
export OMS_RAWLOG_BIN="$OMS_TARGET_DIR/$profile/examples/rawlog"
export OMS_RELAY_BIN="$OMS_TARGET_DIR/$profile/examples/relay"
export OMS_TANSU_BIN="$TANSU_BIN" OMS_PG_BIN="$PG_BIN"
export OMS_TANSU_VERSION="$TANSU_VERSION" OMS_K6_VERSION="$K6_VERSION" OMS_PG_MAJOR="$PG_MAJOR"
PYTHONPATH="$OMS_ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m omsbench "$@"
