#!/usr/bin/env bash
# The one way oms starts tansu — for `just up`, the tests and the benchmark:
#   scripts/tansu.sh PORT sqlite|memory DIR
# Runs in the foreground as the broker itself (exec: its pid is tansu's), on
# 127.0.0.1:PORT, keeping its state in DIR.
#
# Broker hygiene for the sqlite engine: tansu 0.6 creates its `header` table
# without an index and looks up the headers of every record it fetches with
# `topition = ? AND offset_id = ?`, a full scan per record — fetching gets
# slower as the log grows. The index below turns that into a lookup. tansu
# creates its tables when it starts, so a helper adds the index (idempotent)
# once the broker listens, on every start.
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
  (
    for _ in $(seq 1 300); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        python3 - "$dir/tansu.db" <<'PY' && exit 0
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("CREATE INDEX IF NOT EXISTS header_topition_offset ON header (topition, offset_id)")
db.commit()
print("tansu.sh: index header_topition_offset in place", file=sys.stderr)
PY
        echo "tansu.sh: could not add the header index" >&2
        exit 1
      fi
      sleep 0.1
    done
  ) &
fi

exec "$bin" broker \
  --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine "$storage"
