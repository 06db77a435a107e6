#!/usr/bin/env bash
# One wrk run against a fresh broker and a fresh oms, with the CPU each
# process spent per accepted order — the unit that travels across noisy runs:
#
#   bench/wrk/run.sh LABEL [OMS__SECTION__KEY=value ...]
#
# Environment: ENGINE (sqlite|memory, default sqlite), STORE (redb), CONNS
# (wrk connections, default 35), SECONDS_ (default 20), WARMUP (3 s), PARTITIONS
# (of the orders topic, default 1 as `just up` makes it);
# LOAD=k6 runs the seed's own k6 profile instead (0 → 35 VUs over 2 min). Prints
# one line: label, req/s, p50/p99 ms, non-202, CPU µs per order of oms and
# of tansu, oms' peak RSS. Alternatives are compared by running this several
# times in a row, in the same session (what bench/REPORT.md quotes).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
label="${1:?usage: run.sh LABEL [OMS__X__Y=value ...]}"
shift
engine="${ENGINE:-sqlite}"
store="${STORE:-redb}"
conns="${CONNS:-35}"
secs="${SECONDS_:-20}"
warmup="${WARMUP:-3}"
oms="${OMS_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/oms}"
bport=29192
hport=28180
source "$root/bench/fresh-stack.sh"
fresh_stack "$oms" "$bport" "$hport" "$engine" "$store" "$@"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wrk -t1 -c"$conns" -d"${warmup}s" -s "$root/bench/wrk/orders.lua" "http://127.0.0.1:$hport" >/dev/null
o0=$(cpu "$oms_pid"); t0=$(cpu "$tansu")
# Read-your-writes under the load (its few requests are not counted above).
"$root/bench/read_after_write.py" "http://127.0.0.1:$hport" 300 >"$dir/ryw-load.json" 2>&1 &
ryw=$!
if [[ "${LOAD:-wrk}" == k6 ]]; then
  BASE_URL="http://127.0.0.1:$hport" RAMP_DURATION=2m RAMP_TARGET=35 STEADY_DURATION=1s STEADY_TARGET=35 SLEEP=0 \
    k6 run --quiet --no-color --summary-export "$dir/k6.json" --summary-trend-stats "avg,med,p(95),p(99),max" \
    "$root/k6/orders.js" >"$dir/k6.log" 2>&1 || true
  out="wrk-json $(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d = m["http_req_duration"]
n = int(m["http_reqs"]["count"])
print(json.dumps({"requests": n, "seconds": n / m["http_reqs"]["rate"], "errors": 0,
                  "rejected": round(m["http_req_failed"]["value"] * n), "p50_ms": d["med"],
                  "p95_ms": d["p(95)"], "p99_ms": d["p(99)"], "max_ms": d["max"]}))' "$dir/k6.json")"
else
  out="$(wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$root/bench/wrk/orders.lua" "http://127.0.0.1:$hport")"
fi
o1=$(cpu "$oms_pid"); t1=$(cpu "$tansu")
wait "$ryw" || true
"$root/bench/read_after_write.py" "http://127.0.0.1:$hport" 200 >"$dir/ryw-idle.json" 2>&1 || true
json="$(sed -n 's/^wrk-json //p' <<<"$out")"
rss=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$oms_pid/status")
python3 - "$label" "$json" "$o0" "$o1" "$t0" "$t1" "$(getconf CLK_TCK)" "$rss" "$dir" <<'PY'
import json, sys
label, j, o0, o1, t0, t1, tck, rss, d = sys.argv[1:]
r = json.loads(j)
n = r["requests"] - r["rejected"]
per = lambda a, b: (float(b) - float(a)) / float(tck) / max(n, 1) * 1e6
print(f"{label:<28} {r['requests'] / r['seconds']:>8,.0f} req/s  p50 {r['p50_ms']:.2f} p95 {r['p95_ms']:.2f} p99 {r['p99_ms']:.2f} ms"
      f"  non-202 {r['rejected']}  oms {per(o0, o1):.0f} µs  tansu {per(t0, t1):.0f} µs  oms RSS {rss} MiB")
for phase in ("load", "idle"):
    try:
        w = json.load(open(f"{d}/ryw-{phase}.json"))
        print(f"{'':<28} read after 202 ({phase}): p50 {w['p50_ms']} p99 {w['p99_ms']} max {w['max_ms']} ms,"
              f" {w['failures']} of {w['samples']} not 200 {w['first_failures']}")
    except (OSError, ValueError) as err:
        print(f"{'':<28} read after 202 ({phase}): {err}")
PY
