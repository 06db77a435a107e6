#!/usr/bin/env bash
# The one way oms starts Redis — for `just up redis`, the tests and the
# benchmark:
#   scripts/redis.sh PORT DIR
# Runs in the foreground as redis-server itself (exec: its pid is Redis'),
# on 127.0.0.1:PORT, keeping its files (AOF, snapshots) in DIR. Persistence
# and `maxmemory-policy noeviction` are not set here: oms applies its own
# `store.redis.persistence` to every Redis run it meets (src/store/redis.rs),
# so the setting is written once. Until oms connects, nothing is persisted.
set -euo pipefail
port="${1:?usage: redis.sh PORT DIR}"
dir="${2:?usage: redis.sh PORT DIR}"
bin="$(command -v redis-server || echo /usr/bin/redis-server)"
[[ -x $bin ]] || { echo "redis.sh: redis-server is not installed (scripts/install.sh redis)" >&2; exit 2; }
mkdir -p "$dir"
exec "$bin" --port "$port" --bind 127.0.0.1 --dir "$dir" \
  --save "" --appendonly no --maxmemory-policy noeviction \
  --daemonize no --logfile "" --loglevel warning
