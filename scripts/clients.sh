#!/usr/bin/env bash
# Generates the OpenAPI clients from the committed spec (never edited by hand):
#   Python     → .oms/clients/python/oms_client   (openapi-python-client)
#   TypeScript → clients/ts/generated/oms.d.ts    (openapi-typescript, used with openapi-fetch)
source "$(dirname "$0")/lib.sh"

if ! command -v openapi-python-client >/dev/null 2>&1 \
  || ! openapi-python-client --version 2>/dev/null | grep -q "$OPENAPI_PYTHON_CLIENT_VERSION"; then
  say "installing openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
fi
say "generating the Python client"
openapi-python-client generate --path "$OMS_ROOT/openapi/oms.yaml" \
  --output-path "$OMS_ROOT/.oms/clients/python/oms_client" --meta none --overwrite >/dev/null

say "generating the TypeScript client (npm ci in clients/ts)"
(cd "$OMS_ROOT/clients/ts" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run -s generate >/dev/null)
