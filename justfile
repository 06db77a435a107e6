# oms — the one entry point. `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes
default:
    @just --list --unsorted

# Install what is missing, start tansu, PostgreSQL (and Redis for the redis store) and oms, print the URLs (store: redb, sled, memory, postgres or redis; instances > 1: behind nginx on :8080)
up store="redb" instances="1":
    OMS_STORE={{store}} OMS_INSTANCES={{instances}} scripts/stack.sh up

# Make an API key for ACCOUNT on the `just up` stack (role trader or reader); the last line is `ID KEY`
key account role="trader":
    @scripts/stack.sh key {{account}} {{role}}

# Revoke an API key by its id: every instance refuses it within a second
revoke id:
    @scripts/stack.sh revoke {{id}}

# List the stack's API keys (ids, accounts, roles, limits; never the keys)
keys:
    @scripts/stack.sh keys

# Stop exactly what `just up` started (by pid)
down:
    scripts/stack.sh down

# Show what runs
status:
    scripts/stack.sh status

# fmt, clippy, unit and integration tests against a real tansu broker
test:
    scripts/test.sh

# Install the pinned tools (tansu, PostgreSQL) without starting anything
install:
    scripts/install.sh

# Follow a component's log: oms, broker or postgres
logs component="oms":
    tail -n 50 -f .oms/dev/log/{{component}}.log

# Regenerate the committed OpenAPI spec (openapi/oms.yaml) from the code
openapi:
    cargo run --quiet -- openapi > openapi/oms.yaml

# Load and store comparison (about 30 min): k6 + raw broker + consumer-alone per store, both broker modes; writes bench/REPORT.md and charts (--smoke: seconds)
bench *args:
    scripts/bench.sh {{args}}

# Rebuild benchmark: empty redb/sled/Postgres stores catching up with 1,000,000 orders (writes bench/REBUILD.md)
bench-rebuild orders="1000000":
    scripts/install.sh tansu postgres
    scripts/stack.sh start postgres
    OMS_BENCH_ORDERS={{orders}} OMS_BENCH_DATABASE_URL=postgres://oms:oms@127.0.0.1:5432/postgres cargo bench --bench rebuild

# Store CPU per order without broker or HTTP: known + books + apply into redb and sled (one JSON line per engine and order stream)
bench-store orders="200000":
    OMS_BENCH_ORDERS={{orders}} cargo bench --bench store_apply

# Generate the Python and TypeScript clients from openapi/oms.yaml (into .oms/clients and clients/ts/generated)
clients:
    scripts/clients.sh

# k6 load against the running stack (`just up` first) with its development key: script orders or healthz; k6 env vars pass through
load script="orders":
    scripts/install.sh k6
    OMS_KEY="${OMS_KEY:-$(cut -d' ' -f2 .oms/dev/dev.key)}" k6 run k6/{{script}}.js
