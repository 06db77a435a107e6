#!/usr/bin/env bash
# The one way oms starts tansu — for `just up`, the tests and the benchmark:
#   scripts/tansu.sh PORT sqlite|memory DIR
# Runs in the foreground as the broker itself (exec: its pid is tansu's), on
# 127.0.0.1:PORT, keeping its state in DIR.
#
# Broker hygiene for the sqlite engine: tansu 0.6 creates its `header` table
# without an index and looks up the headers of every record it fetches with
# `topition = ? AND offset_id = ?`, a full scan per record — fetching gets
# slower as the log grows. The index is added here, idempotently, *before*
# tansu starts: tansu runs its DDL with `create table if not exists` on every
# start (so a `header` table made here with its exact DDL is kept), and it
# sets no busy timeout, so a write of ours while it serves would make one of
# its statements fail with SQLITE_BUSY — and any storage error ends tansu
# 0.6's storage task for good (`ChannelRequestService`: `serve(..)?` leaves
# its loop), after which every request fails. Adding the index once the
# broker listened did exactly that, now and then, on a fresh broker under
# load.
set -euo pipefail
port="${1:?usage: tansu.sh PORT sqlite|memory DIR}"
engine="${2:?usage: tansu.sh PORT sqlite|memory DIR}"
dir="${3:?usage: tansu.sh PORT sqlite|memory DIR}"
bin="${TANSU_BIN:-$HOME/.cache/oms/tools/bin/tansu}"

case "$engine" in
  # tansu resolves a sqlite:// path against its working directory.
  sqlite) storage="sqlite://tansu.db" ;;
  memory) storage="memory://tansu/" ;;
  *) echo "tansu.sh: unknown storage engine $engine (sqlite or memory)" >&2; exit 2 ;;
esac
mkdir -p "$dir"
cd "$dir"

if [[ "$engine" == sqlite ]]; then
  python3 - "$dir/tansu.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
# tansu-storage 0.6.0 src/ddl/040-header.sql, verbatim.
db.execute("""create table if not exists header (
    topition integer,
    offset_id integer,
    k blob,
    v blob,
    last_updated datetime default current_timestamp not null,
    created_at datetime default current_timestamp not null,
    foreign key (topition, offset_id) references record (topition, offset_id) on delete cascade
)""")
db.execute("CREATE INDEX IF NOT EXISTS header_topition_offset ON header (topition, offset_id)")
db.commit()
db.close()
print("tansu.sh: index header_topition_offset in place", file=sys.stderr)
PY
fi

# One tokio worker: tansu's storage is one task anyway, and a second worker
# only adds hand-offs between threads (41 → 36 µs of broker CPU per order,
# same throughput; bench/analysis.md).
export TOKIO_WORKER_THREADS="${TOKIO_WORKER_THREADS:-1}"
exec "$bin" broker \
  --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine "$storage"
