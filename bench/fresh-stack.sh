# Sourced by bench/wrk/run.sh and bench/flamegraph.sh: a fresh tansu and a
# fresh oms of their own, stopped (and their folder removed) on exit.
#
#   fresh_stack OMS_BIN BROKER_PORT HTTP_PORT ENGINE STORE [OMS__X__Y=value ...]
#
# Sets $dir (their state and logs), $tansu and $oms_pid.
pids=()
dir="$(mktemp -d /dev/shm/oms-bench-run.XXXXXX)"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

fresh_stack() {
  local bin="$1" bport="$2" hport="$3" engine="$4" store="$5"
  shift 5
  local here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  TANSU_BIN="${TANSU_BIN:-$HOME/.cache/oms/tools/bin/tansu}" \
    "$here/scripts/tansu.sh" "$bport" "$engine" "$dir/tansu" >"$dir/tansu.log" 2>&1 &
  tansu=$!
  pids+=("$tansu")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$bport") 2>/dev/null && break; sleep 0.1; done
  # One partition for orders, as `just up` creates it (PARTITIONS to compare).
  OMS__MIGRATE__PARTITIONS="${PARTITIONS:-1}" "$bin" migrate --bootstrap "127.0.0.1:$bport" >/dev/null
  # A key without limits for the load (wrk and k6 send $OMS_KEY). An oms
  # from before keys has no `keys` command and needs none (A/B runs).
  OMS_KEY="$("$bin" keys create --keys-file "$dir/keys.toml" --account bench --rate 0 --in-flight 0 2>/dev/null | tail -n 1 | cut -d' ' -f2 || true)"
  export OMS_KEY
  local keys=()
  if [[ -n "$OMS_KEY" ]]; then keys=(OMS__AUTH__KEYS_FILE="$dir/keys.toml"); fi
  env OMS__TELEMETRY__LOG_FILTER=warn "${keys[@]}" "$@" "$bin" serve --store "$store://$dir/store" \
    --bootstrap "127.0.0.1:$bport" --http-addr "127.0.0.1:$hport" >"$dir/oms.log" 2>&1 &
  oms_pid=$!
  pids+=("$oms_pid")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$hport/readyz" >/dev/null && break; sleep 0.1; done
}
