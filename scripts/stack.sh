#!/usr/bin/env bash
# The local stack without Docker: tansu (Kafka API), PostgreSQL, oms.
#   scripts/stack.sh up                 install what is missing, start everything, print the URLs
#   scripts/stack.sh down               stop what `up` started (by pid)
#   scripts/stack.sh status             show what runs
#   scripts/stack.sh start|stop NAME... one component: broker, postgres, redis, oms, prometheus
#   scripts/stack.sh key ACCOUNT [ROLE] make an API key (last line: ID KEY)
#   scripts/stack.sh revoke ID          revoke one (every instance refuses it within a second)
# State, logs and pids live in $OMS_STATE (default .oms/dev, git-ignored).
source "$(dirname "$0")/lib.sh"

# `just up` builds and runs the release binary; the tests pass their own.
OMS_BIN="${OMS_BIN:-}"

# True when NAME is not running yet and may start; says so and returns 1 when
# it already runs; stops everything when a stranger holds its PORT.
not_running_yet() {
  local name="$1" port="$2" pid
  if pid="$(live_pid "$name")"; then
    say "$name already running (pid $pid)"
    return 1
  fi
  port_open "$port" && die "port $port is in use by a process this stack did not start"
  return 0
}

# The oms binary: $OMS_BIN when given (the tests pass theirs), else the
# release build, built once per call of this script.
ensure_oms_bin() {
  if [[ -z "$OMS_BIN" ]]; then
    say "building oms (release)"
    cargo build --release --quiet --bin oms --manifest-path "$OMS_ROOT/Cargo.toml"
    OMS_BIN="$OMS_TARGET_DIR/release/oms"
  fi
}

start_broker() {
  not_running_yet broker "$OMS_BROKER_PORT" || return 0
  "$OMS_ROOT/scripts/install.sh" tansu
  ensure_oms_bin
  local dir="$OMS_STATE/tansu" log
  log="$(log_file broker)"
  mkdir -p "$dir"
  say "starting tansu on 127.0.0.1:$OMS_BROKER_PORT (log kept in $dir/tansu.db), supervised"
  # sqlite storage keeps the log and committed offsets across broker restarts:
  # the log is the source of truth, the stores are rebuilt from it. The
  # supervisor restarts the broker when it exits or stops serving.
  OMS_PROBE_BIN="$OMS_BIN" nohup "$OMS_ROOT/scripts/supervise-broker.sh" \
    "$OMS_BROKER_PORT" sqlite "$dir" >>"$log" 2>&1 </dev/null &
  echo $! >"$(pid_file broker)"
  wait_for_component broker 30 port_open "$OMS_BROKER_PORT" || { tail -n 20 "$log" >&2; die "tansu did not start (log: $log)"; }
}

start_postgres() {
  not_running_yet postgres "$OMS_PG_PORT" || return 0
  "$OMS_ROOT/scripts/install.sh" postgres
  local data="$OMS_STATE/postgres" log
  log="$(log_file postgres)"
  touch "$log"
  mkdir -p "$data"
  if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$data" "$log"; fi
  chmod 700 "$data"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    say "initialising a PostgreSQL $PG_MAJOR cluster in $data (superuser oms/oms)"
    local pw="$OMS_STATE/run/pg-password"
    echo oms >"$pw"
    [[ "$(id -u)" == 0 ]] && chown postgres:postgres "$pw"
    as_pg "$PG_BIN/initdb" -D "$data" -U oms --pwfile="$pw" -E UTF8 \
      --auth-local=trust --auth-host=scram-sha-256 >>"$log" 2>&1 || die "initdb failed (log: $log)"
    rm -f "$pw"
  fi
  say "starting PostgreSQL on 127.0.0.1:$OMS_PG_PORT"
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$OMS_PG_PORT -c unix_socket_directories=$data" \
    start >/dev/null || { tail -n 20 "$log" >&2; die "PostgreSQL did not start (log: $log)"; }
  head -n 1 "$data/postmaster.pid" >"$(pid_file postgres)"
  if ! as_pg psql -h "$data" -p "$OMS_PG_PORT" -U oms -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'oms'" | grep -q 1; then
    as_pg "$PG_BIN/createdb" -h "$data" -p "$OMS_PG_PORT" -U oms oms
  fi
}

start_redis() {
  not_running_yet redis "$OMS_REDIS_PORT" || return 0
  "$OMS_ROOT/scripts/install.sh" redis
  local log
  log="$(log_file redis)"
  say "starting Redis on 127.0.0.1:$OMS_REDIS_PORT (files in $OMS_STATE/redis; oms sets its persistence)"
  nohup "$OMS_ROOT/scripts/redis.sh" "$OMS_REDIS_PORT" "$OMS_STATE/redis" >>"$log" 2>&1 </dev/null &
  echo $! >"$(pid_file redis)"
  wait_for_component redis 30 port_open "$OMS_REDIS_PORT" || { tail -n 20 "$log" >&2; die "Redis did not start (log: $log)"; }
}

start_prometheus() {
  not_running_yet prometheus "$OMS_PROM_PORT" || return 0
  "$OMS_ROOT/scripts/install.sh" prometheus
  local config="$OMS_STATE/prometheus.yml" log
  log="$(log_file prometheus)"
  # deployment/prometheus.yml, pointed at this stack's oms instance(s)
  # (each one scraped on its own port, not through the load balancer).
  local targets="\"127.0.0.1:$OMS_HTTP_PORT\"" n
  if (( ${OMS_INSTANCES:-1} > 1 )); then
    targets=""
    for ((n = 1; n <= OMS_INSTANCES; n++)); do
      targets+="${targets:+, }\"127.0.0.1:$((OMS_HTTP_PORT + n))\""
    done
  fi
  sed -e "s/\"127.0.0.1:8080\"/$targets/" \
    -e "s/scrape_interval: 5s/scrape_interval: ${OMS_SCRAPE_INTERVAL:-5s}/" \
    "$OMS_ROOT/deployment/prometheus.yml" >"$config"
  say "starting Prometheus on 127.0.0.1:$OMS_PROM_PORT (scraping oms on :$OMS_HTTP_PORT)"
  nohup prometheus --config.file="$config" --storage.tsdb.path="$OMS_STATE/prometheus" \
    --web.listen-address="127.0.0.1:$OMS_PROM_PORT" >>"$log" 2>&1 </dev/null &
  echo $! >"$(pid_file prometheus)"
  wait_for_component prometheus 30 curl -sf "http://127.0.0.1:$OMS_PROM_PORT/-/ready" || {
    tail -n 20 "$log" >&2
    die "Prometheus did not become ready (log: $log)"
  }
}

# How many oms instances `up` starts: one on $OMS_HTTP_PORT, or N on the
# ports after it behind nginx on $OMS_HTTP_PORT.
OMS_INSTANCES="${OMS_INSTANCES:-1}"

store_url() {
  case "${OMS_STORE:-redb}" in
    postgres) echo "postgres://oms:oms@127.0.0.1:$OMS_PG_PORT/oms" ;;
    redis) echo "redis://127.0.0.1:$OMS_REDIS_PORT/0" ;;
    *) echo "${OMS_STORE:-redb}://$OMS_STORE_PATH${1:+/$1}" ;;
  esac
}

# One `oms serve` as component NAME on PORT; extra OMS__… settings after.
launch_oms() {
  local name="$1" port="$2" url="$3" log
  shift 3
  not_running_yet "$name" "$port" || return 0
  log="$(log_file "$name")"
  say "starting $name: oms serve --store $url on :$port${*:+ ($*)}, supervised"
  # The supervisor starts oms again when it exits on its own (status 75:
  # its broker lost the log under it); stopping the supervisor stops oms.
  env "$@" nohup "$OMS_ROOT/scripts/supervise-oms.sh" "$name" "$OMS_BIN" serve \
    --store "$url" \
    --http-addr "127.0.0.1:$port" \
    --bootstrap "127.0.0.1:$OMS_BROKER_PORT" \
    --keys-file "$OMS_KEYS_FILE" \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
  wait_for_component "$name" 60 curl -sf "http://127.0.0.1:$port/readyz" || {
    tail -n 20 "$log" >&2
    die "$name did not become ready within 60 s (log: $log; try: curl -s http://127.0.0.1:$port/readyz)"
  }
}

start_oms() {
  ensure_oms_bin
  local store="${OMS_STORE:-redb}"
  # The orders topic gets one partition per instance that shares it (group
  # mode on a shared store), else one: librdkafka sends a produce request
  # per partition, and each costs the broker a transaction whatever it
  # carries (measured: bench/analysis.md). Replicas of an embedded store
  # read every partition anyway.
  local partitions=1
  if shared_store "$store"; then partitions="$OMS_INSTANCES"; fi
  say "creating topics ($partitions partition(s) for orders)$([[ $store == postgres ]] && echo ' and the Postgres schema')"
  OMS__MIGRATE__PARTITIONS="$partitions" \
    "$OMS_BIN" migrate --bootstrap "127.0.0.1:$OMS_BROKER_PORT" --store "$(store_url)"
  dev_key >/dev/null
  if (( OMS_INSTANCES == 1 )); then
    launch_oms oms "$OMS_HTTP_PORT" "$(store_url)"
    return
  fi
  # Several instances: on a shared store they share the partitions (group
  # mode, one static member id each); embedded stores are full replicas
  # (assign mode), each with its own folder.
  local n
  for ((n = 1; n <= OMS_INSTANCES; n++)); do
    if shared_store "$store"; then
      launch_oms "oms-$n" "$((OMS_HTTP_PORT + n))" "$(store_url)" \
        OMS__CONSUMER__MODE=group OMS__CONSUMER__INSTANCE_ID="oms-$n"
    else
      launch_oms "oms-$n" "$((OMS_HTTP_PORT + n))" "$(store_url "oms-$n")"
    fi
  done
  start_lb
}

# nginx on $OMS_HTTP_PORT, round robin over the instances, retrying a
# request on the next instance when one is down (an instance killed or
# restarting does not fail the client); scripts/nginx.sh holds the config.
start_lb() {
  not_running_yet lb "$OMS_HTTP_PORT" || return 0
  "$OMS_ROOT/scripts/install.sh" nginx
  local log n upstreams=()
  log="$(log_file lb)"
  for ((n = 1; n <= OMS_INSTANCES; n++)); do
    upstreams+=("$((OMS_HTTP_PORT + n))")
  done
  say "starting nginx on 127.0.0.1:$OMS_HTTP_PORT in front of $OMS_INSTANCES oms instances"
  nohup "$OMS_ROOT/scripts/nginx.sh" "$OMS_HTTP_PORT" "$OMS_STATE/nginx" "${upstreams[@]}" >>"$log" 2>&1 </dev/null &
  echo $! >"$(pid_file lb)"
  wait_for_component lb 30 curl -sf "http://127.0.0.1:$OMS_HTTP_PORT/healthz" || {
    tail -n 20 "$log" >&2
    die "nginx did not start (log: $log)"
  }
}

start() {
  case "$1" in
    broker) start_broker ;;
    postgres) start_postgres ;;
    redis) start_redis ;;
    oms) start_oms ;;
    prometheus) start_prometheus ;;
    *) die "unknown component: $1 (broker, postgres, redis, oms, prometheus)" ;;
  esac
}

stop() {
  case "$1" in
    # Postgres: SIGINT is its "fast" shutdown (SIGTERM waits for clients).
    postgres) STOP_SIGNAL=INT stop_component postgres 30 ;;
    broker | prometheus | lb | redis) stop_component "$1" "$OMS_STOP_GRACE" ;;
    # Every instance `up` started: one, or oms-1…oms-N.
    oms)
      local f
      stop_component oms "$OMS_STOP_GRACE"
      for f in "$(run_dir)"/oms-*.pid; do
        if [[ -e "$f" ]]; then stop_component "$(basename "$f" .pid)" "$OMS_STOP_GRACE"; fi
      done
      ;;
    *) die "unknown component: $1 (broker, postgres, redis, oms, prometheus, lb)" ;;
  esac
}

status() {
  local name pid f instances=()
  for f in "$(run_dir)"/oms-*.pid; do
    if [[ -e "$f" ]]; then instances+=("$(basename "$f" .pid)"); fi
  done
  for name in broker postgres redis oms "${instances[@]}" lb prometheus; do
    [[ $name == lb || $name == redis ]] && [[ ! -e "$(pid_file "$name")" ]] && continue
    [[ $name == oms && ${#instances[@]} -gt 0 && ! -e "$(pid_file oms)" ]] && continue
    if pid="$(live_pid "$name")"; then
      printf '  %-10s running  pid %-7s' "$name" "$pid"
      case "$name" in
        oms) printf '  port %s' "$OMS_HTTP_PORT" ;;
        oms-*) printf '  port %s' "$((OMS_HTTP_PORT + ${name#oms-}))" ;;
      esac
      case "$name" in
        oms | oms-*) printf '  (supervised; restarts %s)' "$(cat "$(run_dir)/$name-restarts" 2>/dev/null || echo 0)" ;;
        lb) printf '  port %s (nginx)' "$OMS_HTTP_PORT" ;;
      esac
      if [[ $name == broker && -f "$(run_dir)/tansu.pid" ]]; then
        printf '  (supervisor; tansu pid %s, restarts %s)' "$(cat "$(run_dir)/tansu.pid")" \
          "$(cat "$(run_dir)/broker-restarts" 2>/dev/null || echo 0)"
      fi
      printf '\n'
    else
      printf '  %-10s stopped\n' "$name"
    fi
  done
  if live_pid oms >/dev/null || live_pid lb >/dev/null; then
    printf '  readiness: %s\n' "$(curl -s "http://127.0.0.1:$OMS_HTTP_PORT/readyz" || echo unreachable)"
  fi
}

up() {
  local started=$SECONDS
  "$OMS_ROOT/scripts/install.sh"
  start_broker
  start_postgres
  if [[ ${OMS_STORE:-redb} == redis ]]; then start_redis; fi
  start_oms
  start_prometheus
  local base="http://127.0.0.1:$OMS_HTTP_PORT" key
  key="$(dev_key)"
  cat <<MSG

oms is up ($(( SECONDS - started )) s), store ${OMS_STORE:-redb}$( (( OMS_INSTANCES > 1 )) && echo ", $OMS_INSTANCES instances on ports $((OMS_HTTP_PORT + 1))–$((OMS_HTTP_PORT + OMS_INSTANCES)) behind nginx"):
  API          $base/orders
  Swagger UI   $base/docs
  OpenAPI      $base/openapi.yaml
  metrics      $base/metrics
  readiness    $base/readyz
  API key      $key
               (development key, account dev, in $OMS_DEV_KEY_FILE; more: just key ACCOUNT)
  broker       127.0.0.1:$OMS_BROKER_PORT (tansu, log in $OMS_STATE/tansu/tansu.db)
  postgres     postgres://oms:oms@127.0.0.1:$OMS_PG_PORT/oms
$( [[ ${OMS_STORE:-redb} == redis ]] && echo "  redis        redis://127.0.0.1:$OMS_REDIS_PORT/0 (keys $OMS_REDIS_PREFIX:*)" )
  prometheus   http://127.0.0.1:$OMS_PROM_PORT  (try: rate(http_requests_total[1m]))
  logs         $OMS_STATE/log/ ($( (( OMS_INSTANCES > 1 )) && echo "oms-1…oms-$OMS_INSTANCES, lb" || echo oms), broker, postgres, prometheus)
Try:  curl -si $base/orders -H "Authorization: Bearer $key" -H 'content-type: application/json' \\
        -d '{"src_currency":"USD","dst_currency":"EUR","side":"buy","price":"1.085","quantity":"100","channel":11}'
Stop: just down
MSG
}

down() {
  stop prometheus
  if [[ -e "$(pid_file lb)" ]]; then stop lb; fi
  stop oms
  if [[ -e "$(pid_file redis)" ]]; then stop redis; fi
  stop postgres
  stop broker
  say "stack stopped"
}

cmd="${1:-status}"
shift || true
case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  start) for c in "$@"; do start "$c"; done ;;
  stop) for c in "$@"; do stop "$c"; done ;;
  key)
    ensure_oms_bin
    "$OMS_BIN" keys create --keys-file "$OMS_KEYS_FILE" --account "${1:?usage: $0 key ACCOUNT [trader|reader]}" \
      --role "${2:-trader}"
    ;;
  revoke)
    ensure_oms_bin
    "$OMS_BIN" keys revoke --keys-file "$OMS_KEYS_FILE" "${1:?usage: $0 revoke ID}"
    ;;
  keys)
    ensure_oms_bin
    "$OMS_BIN" keys list --keys-file "$OMS_KEYS_FILE"
    ;;
  *) die "usage: $0 up|down|status|start NAME...|stop NAME...|key ACCOUNT [ROLE]|revoke ID|keys" ;;
esac
