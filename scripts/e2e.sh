#!/usr/bin/env bash
# API-contract checks against a live oms (BASE_URL as the only argument):
# - property-based fuzzing of every operation with schemathesis: no 5xx,
#   responses conform to the schema, only documented status codes, content
#   types and headers as documented. Bounded: a fixed number of examples per
#   operation and a fixed seed, so a failure can be replayed;
# - the generated Python and TypeScript clients create an order, read it
#   back and get a typed validation error;
# - Swagger UI at /docs in headless Chromium: "Try it out" on POST /orders
#   answers 202 (screenshot in $OMS_STATE/swagger-ui.png);
# - with OMS_PROM_URL set (a Prometheus scraping this oms): Prometheus holds
#   oms' series, and every query of the Grafana dashboard returns data.
source "$(dirname "$0")/lib.sh"
base="${1:?usage: $0 BASE_URL}"

say "schemathesis against $base/openapi.json"
st run "$base/openapi.json" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance \
  --max-examples "${OMS_FUZZ_EXAMPLES:-50}" \
  --seed "${OMS_FUZZ_SEED:-20261127}" \
  --workers 1 \
  --request-timeout 10

"$OMS_ROOT/scripts/clients.sh"
say "generated Python client against $base"
python3 "$OMS_ROOT/clients/python/check.py" "$OMS_ROOT/.oms/clients/python" "$base"
say "generated TypeScript client against $base"
(cd "$OMS_ROOT/clients/ts" && npx --no-install tsc -p . && node dist/check.js "$base")

"$OMS_ROOT/scripts/install.sh" chromium
say "Swagger UI in headless Chromium against $base/docs"
(cd "$OMS_ROOT/e2e/browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null \
  && node swagger.mjs "$base" "$OMS_STATE/swagger-ui.png")

if [[ -n "${OMS_PROM_URL:-}" ]]; then
  say "Prometheus ($OMS_PROM_URL): oms' series and every dashboard query"
  python3 "$OMS_ROOT/scripts/check_dashboard.py" "$OMS_PROM_URL" "$OMS_ROOT/deployment/grafana/dashboards/oms.json"
fi
