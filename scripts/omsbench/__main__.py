"""The store comparison benchmark behind `just bench` (scripts/bench.sh installs
and builds what it needs, sets the paths, and runs `python3 -m omsbench`).

For each broker mode (tansu on sqlite = durable, as `just up` runs it; tansu in
memory) it measures, in one run:
  1. the raw broker: rdkafka producing N orders straight to the log with oms'
     producer settings, then consuming them with no store;
  2. the consumer alone: `oms serve` draining that backlog into each empty store
     (orders/s, CPU and peak RSS of oms);
  3. capacity: wrk at rising connection counts, CPU per order per process, and
     the read-your-writes delay;
  4. the seed's own k6 profile and the HTTP ceiling (GET /healthz);
  5. the ingest path: k6 POST /orders against oms with each store, with the
     consumer's lag sampled throughout and the catch-up time after the load;
  6. scale: 1, 2 and 3 instances in group mode on one Postgres behind nginx,
     draining a backlog and taking wrk load, with CPU per order per process;
  7. matching in process (benches/matching.rs); redb appears twice in the
     store steps, with matching on (the default) and off.
It writes bench/REPORT.md, bench/report.json and the charts (or, with --smoke,
all of that to a scratch folder with tiny sizes, and checks it is complete).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .charts import charts, dashboard
from .config import MODES, OMS, OMS_PORT, PROM_PORT, ROOT, STATE, STORES
from .procs import STARTED, say, stop
from .report import report
from .results import ModeResult, Profile, Results, from_json, to_json
from .stack import pg_env, stack, start_broker
from .steps import (capacity, ceiling, drain, ingest, key_check_bench, machine, matching_bench, raw_broker,
                    scale, seed_profile)


def rewrite_report(args) -> int:
    """Rewrites REPORT.md and the charts from bench/report.json (e.g. after
    editing the analysis), without measuring anything again."""
    out = ROOT / "bench"
    results = from_json(Results, json.loads((out / "report.json").read_text()))
    if args.analysis:
        results.analysis = args.analysis.read_text()
        write_json(results, out)
    charts(results, out)
    tsdb = STATE / "prometheus"
    if results.window and tsdb.is_dir():
        # The benchmark's Prometheus data is still there: draw the dashboard again.
        stack("start", "prometheus", OMS_HTTP_PORT=str(OMS_PORT), OMS_PROM_PORT=str(PROM_PORT))
        try:
            results.dashboard = dashboard((results.window[0], results.window[1]), out)
        finally:
            stack("stop", "prometheus")
    (out / "REPORT.md").write_text(report(results, out, results.command or "just bench"))
    say(f"rewrote {out / 'REPORT.md'} and the charts from report.json")
    return 0


def write_json(results: Results, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(to_json(results), indent=2))


def run(args) -> int:
    smoke = args.smoke
    orders = args.orders or (5_000 if smoke else 1_000_000)
    profile = Profile(vus=args.vus or (10 if smoke else 35), ramp="1s" if smoke else "10s",
                      steady=args.steady or ("2s" if smoke else "110s"))
    out = args.out or (Path(tempfile.mkdtemp(prefix="oms-bench-smoke-")) if smoke else ROOT / "bench")
    out.mkdir(parents=True, exist_ok=True)
    STATE.mkdir(parents=True, exist_ok=True)
    bench_key()
    modes = args.modes.split(",")
    stores = args.stores.split(",")
    command = "just bench" + (" --smoke" if smoke else "") + \
              (f" --modes {args.modes}" if args.modes != "sqlite,memory" else "") + \
              (f" --stores {args.stores}" if args.stores != ",".join(STORES) else "") + \
              (f" --orders {args.orders}" if args.orders else "") + (f" --vus {args.vus}" if args.vus else "") + \
              (f" --steady {args.steady}" if args.steady else "")
    say(f"benchmark ({'smoke' if smoke else 'full'}): brokers {modes}, stores {stores}, "
        f"{orders:,} orders backlog, k6 {profile.vus} VUs for {profile.ramp} + {profile.steady}; "
        f"state and logs in {STATE}")

    pg_kinds = sorted({"tmpfs" if s == "postgres-tmpfs" else "disk" for s in stores if s.startswith("postgres")})
    for kind in pg_kinds:
        if kind == "tmpfs":
            shutil.rmtree(pg_env(kind)["OMS_STATE"], ignore_errors=True)  # a fresh cluster in RAM
        stack("start", "postgres", **pg_env(kind))
    shutil.rmtree(STATE / "prometheus", ignore_errors=True)
    stack("start", "prometheus", OMS_HTTP_PORT=str(OMS_PORT), OMS_PROM_PORT=str(PROM_PORT),
          OMS_SCRAPE_INTERVAL="1s")

    results = Results(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(),
                      command=command, orders=orders, profile=profile, modes={})
    results.matching = matching_bench(smoke)
    results.matching_terms = matching_bench(smoke, "mixed")
    results.key_check = key_check_bench()
    window = [time.time(), time.time()]
    for mode in modes:
        say(f"broker: tansu {MODES[mode]} (a fresh one for the backlog and for each k6 run)")
        broker = start_broker(mode)
        try:
            raw_produce, raw_consume = raw_broker("backlog", orders)
            drains = [drain(s, "backlog", raw_consume.records, mode) for s in stores]
        finally:
            stop(broker)
        if mode == modes[-1]:
            window[0] = time.time()
        cap = capacity(mode, smoke)
        seed = seed_profile(mode, smoke)
        top = ceiling(profile, mode)
        runs = [ingest(s, profile, mode) for s in stores]
        # Several instances: on the first broker mode (the durable one in a
        # default run), when Postgres is among the stores.
        grown = scale(mode, smoke) if mode == modes[0] and "postgres" in stores else []
        window[1] = time.time()
        results.modes[mode] = ModeResult(raw_produce=raw_produce, raw_consume=raw_consume, drain=drains,
                                         ceiling=top, ingest=runs, capacity=cap, seed=seed, scale=grown)

    say("writing the report and charts")
    results.analysis = args.analysis.read_text() if args.analysis else ""
    results.window = window
    charts(results, out)
    results.dashboard = dashboard((window[0], window[1]), out)
    write_json(results, out)
    (out / "REPORT.md").write_text(report(results, out, command))
    say(f"wrote {out / 'REPORT.md'}, report.json and the charts")
    if smoke:
        check_smoke(results, out, scaled="postgres" in stores)
    return 0


def check_smoke(results: Results, out: Path, scaled: bool) -> None:
    """The smoke run proves the benchmark works end to end, not how fast."""
    problems = []
    for mode, r in results.modes.items():
        if r.raw_consume.records != r.raw_produce.produced:
            problems.append(f"{mode}: raw consume read {r.raw_consume.records} of {r.raw_produce.produced}")
        for d in r.drain:
            if d.per_second <= 0:
                problems.append(f"{mode}: drain into {d.store} measured nothing")
            if d.store.startswith("redis") and not d.store_rss_mib:
                problems.append(f"{mode}: drain into {d.store} has no Redis RSS")
        for i in r.ingest + [r.ceiling]:
            if i.requests == 0 or i.failed_pct > 0 or i.checks_pct < 100:
                problems.append(f"{mode}: a k6 run had no requests or failures: {i}")
        f = r.seed.feed if r.seed else None
        if r.seed and (not f or not f.events or not f.probe_trades or f.probe_trades < f.probes or f.dropped):
            problems.append(f"{mode}: the feed subscriber of the seed profile: {f}")
        cap = r.capacity
        for x in r.scale:
            if x.ingest_requests == 0 or x.ingest_rejected or x.stored < x.drain_orders + x.ingest_requests:
                problems.append(f"{mode}: scale step with {x.instances} instance(s): {x}")
        if scaled and mode == next(iter(results.modes)) and not r.scale:
            problems.append(f"{mode}: no scale step")
        if cap is None or not cap.steps or not cap.relay or any(x.requests == 0 for x in cap.steps + cap.relay):
            problems.append(f"{mode}: a capacity or bare-relay step had no requests")
        elif cap.ryw_idle.failures or cap.ryw_load.failures:
            # A 503 read again after its Retry-After is the protocol working (the debug
            # build's consumer can trail wrk by more than http.read_wait_ms); anything
            # else, a 404 above all, is not.
            problems.append(f"{mode}: a read after a 202 never answered 200: {cap.ryw_idle} {cap.ryw_load}")
        for i in r.ingest:
            if (i.stored or 0) < i.requests:
                problems.append(f"{mode}: {i.store} stored {i.stored} of {i.requests} accepted orders")
    for chart in ("throughput.png", "latency.png", "drain.png", "dashboard.png", "REPORT.md"):
        if not (out / chart).is_file() or (out / chart).stat().st_size == 0:
            problems.append(f"{chart} was not written")
    if not results.dashboard:
        problems.append("no dashboard query returned data")
    if not results.key_check or results.key_check.ns_per_check_no_limits <= 0:
        problems.append(f"the key-check benchmark measured nothing: {results.key_check}")
    if not results.matching or results.matching.orders_per_second <= 0 or not results.matching.trades:
        problems.append(f"the matching benchmark measured nothing: {results.matching}")
    t = results.matching_terms
    if not t or t.orders_per_second <= 0 or not t.trades or not t.expired or not t.rejected:
        problems.append(f"the order-types matching benchmark measured nothing: {t}")
    if problems:
        raise RuntimeError("benchmark smoke run failed:\n  " + "\n  ".join(problems))
    say("benchmark smoke run: every step measured, every accepted order stored, report and charts written")
    shutil.rmtree(out, ignore_errors=True)


def bench_key() -> None:
    """One API key without limits for every oms the benchmark starts (they
    inherit the key file's path) and every load generator (`OMS_KEY`)."""
    keys = STATE / "keys.toml"
    keys.unlink(missing_ok=True)
    made = subprocess.run([OMS, "keys", "create", "--keys-file", str(keys), "--account", "bench",
                           "--rate", "0", "--in-flight", "0"], check=True, capture_output=True, text=True)
    os.environ["OMS__AUTH__KEYS_FILE"] = str(keys)
    os.environ["OMS_KEY"] = made.stdout.strip().splitlines()[-1].split(" ")[1]
    # A second account: the feed watcher's probe pairs cross between the two
    # (an account's orders never trade with each other).
    other = subprocess.run([OMS, "keys", "create", "--keys-file", str(keys), "--account", "bench-other",
                            "--rate", "0", "--in-flight", "0"], check=True, capture_output=True, text=True)
    os.environ["OMS_KEY_OTHER"] = other.stdout.strip().splitlines()[-1].split(" ")[1]


def main() -> int:
    # `kill` (and `just` on Ctrl-C) must still stop what the benchmark started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes; report to a scratch folder")
    parser.add_argument("--modes", default="sqlite,memory", help="broker modes: sqlite,memory")
    parser.add_argument("--stores", default=",".join(STORES), help="stores: " + ",".join(STORES))
    parser.add_argument("--orders", type=int, default=0, help="backlog size (default 1,000,000)")
    parser.add_argument("--vus", type=int, default=0, help="k6 virtual users (default 35)")
    parser.add_argument("--steady", default="", help="k6 steady phase after the 10 s ramp (default 110s)")
    parser.add_argument("--out", type=Path, help="where the report goes (default bench/; smoke: a scratch folder)")
    parser.add_argument("--analysis", type=Path, help="markdown for the report's 'Where the time goes'")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite bench/REPORT.md and the charts from bench/report.json; measure nothing")
    args = parser.parse_args()
    if args.report_only:
        return rewrite_report(args)
    try:
        return run(args)
    finally:
        for proc in reversed(list(STARTED)):
            proc.stop()
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), "stop", "prometheus"], check=False)
        for kind in ("disk", "tmpfs"):
            subprocess.run([str(ROOT / "scripts" / "stack.sh"), "stop", "postgres"], check=False,
                           env={**os.environ, **pg_env(kind)})
        shutil.rmtree("/dev/shm/oms-bench", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
