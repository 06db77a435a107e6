#!/usr/bin/env python3
"""Read-your-writes delay: POST an order, follow the Location of its 202 at
once, and time 202 → 200. A 503 (the consumer is still behind the log) is
followed the way a client should: wait its `Retry-After`, ask again; such
samples are counted as `retried` and their delay includes the wait. Any
other answer counts as a failure (a 404 would tell the client the order it
was just promised does not exist), as does no 200 within 30 s.

    bench/read_after_write.py http://127.0.0.1:8080 [samples]

Prints one JSON line: samples, failures, retried, p50/p99/max ms of 202 → 200.
The API key is $OMS_KEY (oms refuses order requests without one).
"""
import http.client
import os
import json
import sys
import time
import urllib.parse
import uuid

BODY = {"src_currency": "USD", "dst_currency": "EUR", "side": "buy", "price": "1.0850",
        "quantity": "10", "channel": 11, "description": "read after write"}
GIVE_UP_S = 30


def main() -> int:
    base = urllib.parse.urlsplit(sys.argv[1])
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=10)
    delays, failures, retried = [], [], 0
    auth = {"Authorization": f"Bearer {os.environ['OMS_KEY']}"} if os.environ.get("OMS_KEY") else {}
    for _ in range(samples):
        body = json.dumps({**BODY, "client_order_id": f"raw-{uuid.uuid4()}"})
        conn.request("POST", "/orders", body, {"Content-Type": "application/json", **auth})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            failures.append(f"POST {resp.status}")
            continue
        accepted = time.perf_counter()
        location, waited = resp.getheader("Location"), False
        while True:
            conn.request("GET", location, headers=auth)
            read = conn.getresponse()
            read.read()
            if read.status != 503 or time.perf_counter() - accepted > GIVE_UP_S:
                break
            waited = True
            time.sleep(float(read.getheader("Retry-After") or 1))
        retried += waited
        if read.status != 200:
            failures.append(f"GET {read.status}")
            continue
        delays.append((time.perf_counter() - accepted) * 1000)
    delays.sort()
    pick = lambda q: round(delays[min(len(delays) - 1, int(q * len(delays)))], 2) if delays else None
    print(json.dumps({"samples": samples, "failures": len(failures), "retried": retried,
                      "first_failures": failures[:5],
                      "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
