#!/usr/bin/env python3
"""A live-feed subscriber beside a load: follows GET /stream (every symbol,
every kind) for SECONDS, counting the events delivered, and meanwhile
submits probe pairs that cross on a symbol of its own (a sell from
$OMS_KEY's account, then a buy from $OMS_KEY_OTHER's, ~5 pairs a second),
timing each from the buy's 202 to its trade event on the stream.

    bench/feed_watch.py http://127.0.0.1:8080 SECONDS

Prints one JSON line: events (by kind) and events per second delivered,
probes, probe trades seen, p50/p99/max ms of 202 → trade event, and why the
feed dropped this client if it did.
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid

SYMBOL = ("FEEDA", "FEEDB")


def pct(values: list[float], q: float):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def main() -> int:
    base = urllib.parse.urlsplit(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    key, other = os.environ["OMS_KEY"], os.environ["OMS_KEY_OTHER"]
    counts: dict[str, int] = {}
    trade_seen: dict[str, float] = {}  # buy order id -> when its trade arrived
    dropped = []
    lock = threading.Lock()
    stop = threading.Event()

    def follow() -> None:
        conn = http.client.HTTPConnection(base.hostname, base.port, timeout=seconds + 30)
        conn.request("GET", "/stream", headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        if resp.status != 200:
            dropped.append(f"GET /stream answered {resp.status}")
            return
        kind, data = "message", ""
        while not stop.is_set():
            line = resp.readline()
            if not line:
                break
            line = line.decode().rstrip("\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and data:
                now = time.monotonic()
                with lock:
                    counts[kind] = counts.get(kind, 0) + 1
                    if kind == "trade":
                        trade = json.loads(data)
                        trade_seen.setdefault(trade["buy_order_id"], now)
                    elif kind == "dropped":
                        dropped.append(json.loads(data)["reason"])
                kind, data = "message", ""

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(0.5)  # subscribed before the first probe
    started = time.monotonic()
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=10)
    sent: dict[str, float] = {}
    failures = 0
    while time.monotonic() - started < seconds:
        ok = True
        for api_key, side in ((key, "sell"), (other, "buy")):
            body = json.dumps({"src_currency": SYMBOL[0], "dst_currency": SYMBOL[1], "side": side,
                               "price": "1.00", "quantity": "1", "channel": 11,
                               "client_order_id": f"probe-{uuid.uuid4()}"})
            conn.request("POST", "/orders", body, {"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {api_key}"})
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 202:
                failures += 1
                ok = False
                break
            if side == "buy":
                sent[json.loads(answer)["id"]] = time.monotonic()
        if not ok:
            time.sleep(0.2)
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if all(i in trade_seen for i in sent):
                break
        time.sleep(0.05)
    stop.set()
    with lock:
        delays = [(trade_seen[i] - t) * 1000 for i, t in sent.items() if i in trade_seen]
        total = sum(counts.values())
        print(json.dumps({"seconds": round(elapsed, 1), "events": total, "by_kind": counts,
                          "events_per_second": round(total / max(elapsed, 1e-9), 1),
                          "probes": len(sent), "probe_failures": failures, "probe_trades": len(delays),
                          "p50_ms": pct(delays, 0.5), "p99_ms": pct(delays, 0.99),
                          "max_ms": round(max(delays), 2) if delays else None,
                          "dropped": dropped[0] if dropped else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
