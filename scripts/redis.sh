#!/usr/bin/env bash
# The one way oms starts Redis — for `just up redis`, the tests and the
# benchmark:
#   scripts/redis.sh PORT DIR
# Runs in the foreground as redis-server itself (exec: its pid is Redis'),
# on 127.0.0.1:PORT, keeping its files in DIR: redis.conf, the AOF and any
# snapshot. Persistence and `maxmemory-policy noeviction` are not decided
# here: oms applies its own `store.redis.persistence` to every Redis run it
# meets and saves it into DIR/redis.conf (`CONFIG REWRITE`), so the setting
# is written once and a restarted Redis starts with it — loading its AOF.
set -euo pipefail
port="${1:?usage: redis.sh PORT DIR}"
dir="${2:?usage: redis.sh PORT DIR}"
bin="$(command -v redis-server || echo /usr/bin/redis-server)"
[[ -x $bin ]] || { echo "redis.sh: redis-server is not installed (scripts/install.sh redis)" >&2; exit 2; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
# A first start: nothing persisted until oms says how.
[[ -f $dir/redis.conf ]] || cat >"$dir/redis.conf" <<CONF
bind 127.0.0.1
dir $dir
save ""
appendonly no
maxmemory-policy noeviction
CONF
exec "$bin" "$dir/redis.conf" --port "$port" \
  --daemonize no --logfile "" --loglevel warning
