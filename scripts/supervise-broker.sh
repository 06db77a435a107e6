#!/usr/bin/env bash
# Keeps the stack's tansu serving: scripts/supervise-broker.sh PORT ENGINE DIR
#
# Starts the broker (scripts/tansu.sh) as its child and checks it every
# $PROBE_EVERY seconds. It restarts the broker, saying why in the broker log,
# when the process exits, or when it stops serving although it may still
# listen — `oms probe` (metadata and the orders topic's log end) failing
# $PROBE_FAILURES times in a row, as when tansu 0.6's storage task died and
# every request answers an error. The sqlite log survives the restart, so
# acknowledged orders are not lost. Each restart is counted in
# $OMS_STATE/run/broker-restarts (`just status` shows it).
#
# SIGTERM/SIGINT stop the broker and the supervisor.
source "$(dirname "$0")/lib.sh"
port="${1:?usage: supervise-broker.sh PORT ENGINE DIR}"
engine="${2:?}"
dir="${3:?}"
probe_bin="${OMS_PROBE_BIN:-}"
PROBE_EVERY="${PROBE_EVERY:-2}"
PROBE_FAILURES="${PROBE_FAILURES:-3}"
restarts_file="$(run_dir)/broker-restarts"
[[ -f "$restarts_file" ]] || echo 0 >"$restarts_file"

note() { printf '%s supervisor: %s\n' "$(date -u +%FT%TZ)" "$*"; }

child=""
start_child() {
  TANSU_BIN="$TANSU_BIN" "$OMS_ROOT/scripts/tansu.sh" "$port" "$engine" "$dir" &
  child=$!
  echo "$child" >"$(run_dir)/tansu.pid"
  note "tansu started (pid $child, $engine, port $port)"
}

stop_child() {
  [[ -n "$child" ]] || return 0
  kill "-${1:-TERM}" "$child" 2>/dev/null || true
  wait "$child" 2>/dev/null || true
  child=""
}

trap 'note "stopping"; stop_child TERM; rm -f "$(run_dir)/tansu.pid"; exit 0' TERM INT

start_child
failures=0
while true; do
  sleep "$PROBE_EVERY" &
  wait $! || true
  reason=""
  if ! kill -0 "$child" 2>/dev/null; then
    status=0
    wait "$child" 2>/dev/null || status=$?
    reason="tansu exited (status $status)"
  elif [[ -n "$probe_bin" && -x "$probe_bin" ]]; then
    # A broker that does not listen (any more, or yet after $PROBE_FAILURES
    # probes) is not serving either.
    if out="$("$probe_bin" probe --bootstrap "127.0.0.1:$port" 2>&1)"; then
      failures=0
    else
      failures=$((failures + 1))
      note "probe failed ($failures/$PROBE_FAILURES): $(echo "$out" | tail -n 1)"
      (( failures >= PROBE_FAILURES )) && reason="tansu stopped serving: $(echo "$out" | tail -n 1)"
    fi
  fi
  if [[ -n "$reason" ]]; then
    note "restarting tansu: $reason"
    stop_child KILL
    echo $(( $(cat "$restarts_file") + 1 )) >"$restarts_file"
    failures=0
    start_child
  fi
done
