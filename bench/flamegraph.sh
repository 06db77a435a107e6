#!/usr/bin/env bash
# Flamegraphs of oms and of the broker at the capacity load:
#
#   bench/flamegraph.sh [CONNECTIONS] [SECONDS]     (default 64, 15)
#
# A fresh tansu (sqlite, as `just up` runs it) and a fresh release oms (redb,
# `just up` defaults), wrk with bench/wrk/orders.lua at CONNECTIONS, and
# `perf record -g` on both processes for SECONDS in the middle of the load.
# Writes bench/flamegraph-oms.svg and bench/flamegraph-tansu.svg (inferno).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/lib.sh"
conns="${1:-64}"
secs="${2:-15}"
"$root/scripts/install.sh" tansu wrk flamegraph
say "building oms (release)"
(cd "$root" && cargo build --release --quiet --bin oms)
oms="$OMS_TARGET_DIR/release/oms"
bport=29292
hport=28280
source "$root/bench/fresh-stack.sh"
fresh_stack "$oms" "$bport" "$hport" sqlite redb

say "wrk at $conns connections for $((secs + 8)) s; perf on oms (pid $oms_pid) and tansu (pid $tansu) for $secs s"
wrk -t1 -c"$conns" -d"$((secs + 8))s" -s "$root/bench/wrk/orders.lua" "http://127.0.0.1:$hport" >"$dir/wrk.txt" &
load=$!
sleep 4
perf record -q -F 499 -g -p "$oms_pid" -o "$dir/oms.data" -- sleep "$secs" 2>/dev/null &
p1=$!
perf record -q -F 499 -g -p "$tansu" -o "$dir/tansu.data" -- sleep "$secs" 2>/dev/null &
p2=$!
wait "$p1" "$p2"
wait "$load"
sed -n 's/^wrk-json //p' "$dir/wrk.txt"
for who in oms tansu; do
  perf script -i "$dir/$who.data" 2>/dev/null \
    | "$OMS_TOOLS/bin/inferno-collapse-perf" \
    | "$OMS_TOOLS/bin/inferno-flamegraph" --title "$who at $conns connections (wrk POST /orders, tansu sqlite, redb)" \
    >"$root/bench/flamegraph-$who.svg"
  say "wrote bench/flamegraph-$who.svg"
done
