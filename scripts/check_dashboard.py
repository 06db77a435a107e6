"""Checks, against a real Prometheus scraping oms, that oms' series are there
and that every query of the Grafana dashboard returns data.

Usage: python3 scripts/check_dashboard.py PROMETHEUS_URL DASHBOARD.json
"""

import json
import sys
import time
import urllib.parse
import urllib.request

prometheus, dashboard = sys.argv[1], sys.argv[2]


def query(expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def eventually(expr, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        result = query(expr)
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"no data within {seconds} s for: {expr}")
        time.sleep(0.5)


series = eventually('up{job="oms"} == 1')
print(f"prometheus: oms target up ({series[0]['metric'].get('instance')})")
names = {r["metric"]["__name__"] for r in eventually('{job="oms", __name__=~"http_requests_total|messages_produced_total|store_write_seconds_count"}')}
print(f"prometheus: oms series present: {', '.join(sorted(names))}")

exprs = [t["expr"] for p in json.load(open(dashboard))["panels"] for t in p["targets"]]
for expr in exprs:
    result = eventually(expr)
    print(f"dashboard: {len(result):>2} series  {expr}")
print(f"dashboard: all {len(exprs)} queries return data")
