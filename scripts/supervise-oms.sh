#!/usr/bin/env bash
# Keeps one `oms serve` running: scripts/supervise-oms.sh NAME OMS_BIN ARGS...
#
# Starts oms as its child and starts it again, saying why in its log, when
# it exits on its own — above all with status 75, which oms uses when it
# must start over with new clients (its broker lost the log under it: a
# tansu `memory://` restarted, a topic created again). A crash-looping oms
# is started at most once a second. Each restart is counted in
# $OMS_STATE/run/NAME-restarts (`just status` shows it).
#
# SIGTERM/SIGINT stop oms (gracefully: it writes its last batch and leaves
# its group) and then the supervisor.
source "$(dirname "$0")/lib.sh"
name="${1:?usage: supervise-oms.sh NAME OMS_BIN ARGS...}"
shift
restarts_file="$(run_dir)/$name-restarts"
echo 0 >"$restarts_file"

note() { printf '%s supervisor: %s\n' "$(date -u +%FT%TZ)" "$*"; }

child=""
stopping=""
stop_child() {
  stopping=1
  [[ -n "$child" ]] || exit 0
  kill -TERM "$child" 2>/dev/null || true
  wait "$child" 2>/dev/null || true
  note "oms stopped"
  exit 0
}
trap stop_child TERM INT

while true; do
  "$@" &
  child=$!
  note "oms started (pid $child)"
  started=$SECONDS
  status=0
  wait "$child" || status=$?
  [[ -z "$stopping" ]] || exit 0
  child=""
  if (( status == 75 )); then
    note "oms asked to be started again (status 75: its broker lost the log under it)"
  else
    note "oms exited (status $status); starting it again"
  fi
  echo $(( $(cat "$restarts_file") + 1 )) >"$restarts_file"
  (( SECONDS - started >= 1 )) || sleep 1
done
