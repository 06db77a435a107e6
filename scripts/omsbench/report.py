"""bench/REPORT.md from the results: tables per broker mode, the targets."""

from __future__ import annotations

from pathlib import Path

from .config import CAPACITY_P99_MS, STORE_TITLES, TARGET_P95_MS, TARGET_RPS
from .results import ModeResult, Results, ScaleRun

def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def mib(x: float | None) -> str:
    """A store server's RSS; embedded stores live in oms' own (–)."""
    return "–" if x is None else f"{x:.0f}"


def report(results: Results, out: Path, command: str) -> str:
    m = results.machine
    lines = [
        "# oms benchmark: in-memory stores vs. a database behind a Kafka-API log",
        "",
        f"- Date: {results.date}",
        f"- Machine: {m.cores} cores ({m.cpu}), {m.memory_gib} GiB, {m.os}, kernel {m.kernel}; "
        "broker, PostgreSQL, oms and k6 all on this one machine (shared, noisy: compare the ratios "
        "within this run, not absolute numbers across runs)",
        *([f"- Machine speed: the CPU-only book benchmark (\"Matching in process\" below) ran at "
           f"{fmt(results.matching.orders_per_second)} orders/s — a fixed workload, so when two reports "
           "differ, compare this first"] if results.matching else []),
        f"- Versions: oms {m.oms} (release build), tansu {m.tansu}, PostgreSQL {m.postgres}, "
        f"k6 {m.k6}",
        f"- Command: `{command}`",
        f"- Load profile: {results.profile.vus} VUs, {results.profile.ramp} ramp then "
        f"{results.profile.steady} steady, no sleep, a unique `client_order_id` per order "
        "(the original redpanda101 profile: 35 VUs, 2 minutes)",
        f"- Backlog for the raw-broker and consumer-alone steps: {results.orders:,} orders",
        "",
        "How to read it: **ingest** is the whole path a user sees — HTTP, validation, the produce "
        "with `acks=all`, the 202 — while the consumer stores the same orders in the background; "
        "*lag* is orders acknowledged but not yet stored (sampled every 0.5 s), *catch-up* how long "
        "the consumer needed after the load stopped. **Consumer alone** drains a backlog into an "
        "empty store (oms restarted on a pre-filled topic). **Raw broker** is rdkafka with oms' "
        "settings and nothing else, the ceiling both paths are compared to. *CPU* is in cores "
        "(1.00 = one core busy) over the step. *Store RSS* is the peak RSS of the store's own server "
        "when it runs one per step (Redis); redb and sled live inside oms' RSS.",
        "",
    ]
    for mode, r in results.modes.items():
        title = "durable: tansu on sqlite, as `just up` runs it" if mode == "sqlite" else "tansu in memory"
        raw_p, raw_c = r.raw_produce, r.raw_consume
        lines += [f"## Broker {mode} ({title})", "",
                  "### Ingest: k6 POST /orders", "",
                  "| path | req/s | p50 ms | p95 ms | p99 ms | failed % | lag max | lag mean | catch-up s "
                  "| oms RSS MiB | store RSS MiB | CPU oms / tansu / k6 | CPU µs per order oms / tansu |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        rows = ([("**seed profile: 0 → 35 VUs over 2 min**, POST /orders → redb (`just up` defaults)", r.seed)]
                if r.seed else []) + [("GET /healthz (HTTP ceiling)", r.ceiling)] + \
               [(f"POST /orders → {STORE_TITLES[i.store]}", i) for i in r.ingest]
        for name, x in rows:
            c = x.cpu_cores
            lag = ((fmt(x.lag_max), fmt(x.lag_mean), fmt(x.catch_up_s, 1)) if x.lag_max is not None
                   else ("–",) * 3)
            lines.append(f"| {name} | {fmt(x.rps)} | {x.p50_ms:.2f} | {x.p95_ms:.2f} | "
                         f"{x.p99_ms:.2f} | {x.failed_pct:.2f} | {lag[0]} | {lag[1]} | {lag[2]} | "
                         f"{x.oms_rss_mib:.0f} | {mib(x.store_rss_mib)} | {c.oms:.2f} / {c.tansu:.2f} / {c.k6:.2f} | "
                         f"{x.cpu_us_per_order('oms'):.0f} / {x.cpu_us_per_order('tansu'):.0f} |")
        f = r.seed.feed if r.seed else None
        if f:
            kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(f.by_kind.items()))
            lines += ["", f"A live-feed subscriber followed the seed profile (`bench/feed_watch.py`: `GET /stream`, "
                      f"every symbol and kind): **{fmt(f.events_per_second)} events/s delivered** "
                      f"({f.events:,} in {f.seconds:.0f} s: {kinds}); its probe pairs crossing on a symbol of their "
                      f"own, **202 → trade event p50 {f.p50_ms} / p99 {f.p99_ms} ms** (max {f.max_ms}) over "
                      f"{f.probe_trades} of {f.probes} probes"
                      + (f"; the feed dropped it: {f.dropped}" if f.dropped else "; never dropped") + "."]
        cap = r.capacity
        if cap:
            lines += ["", "### Capacity: wrk POST /orders (one thread, rising connections), redb", "",
                      "| connections | req/s | p50 ms | p95 ms | p99 ms | not 202 | CPU µs per order oms / tansu |",
                      "|---:|---:|---:|---:|---:|---:|---|"]
            for name, x in [("", x) for x in cap.steps] + [("bare relay, ", x) for x in cap.relay]:
                u = x.cpu_us_per_order
                lines.append(f"| {name}{x.connections} | {fmt(x.rps)} | {x.p50_ms:.2f} | {x.p95_ms:.2f} | "
                             f"{x.p99_ms:.2f} | {x.rejected} | {u.oms:.0f} / {u.tansu:.0f} |")
            if cap.relay:
                lines += ["", "The bare relay rows (`examples/relay.rs`, on the same broker right after oms) "
                          "answer `202` once the broker has the request body: HTTP and librdkafka with oms' "
                          "producer settings, nothing else — no validation, consumer or store. Their CPU "
                          "per order is the floor under oms' on this machine."]
            best = cap.best
            lines += ["", (f"Capacity at p99 ≤ {CAPACITY_P99_MS:.0f} ms: **{fmt(best.rps)} req/s** "
                           f"({best.connections} connections)." if best else
                           f"No step kept p99 ≤ {CAPACITY_P99_MS:.0f} ms."),
                      "", f"Read-your-writes (202 → 200 of its `Location`, `bench/read_after_write.py`): idle "
                      f"p50 {cap.ryw_idle.p50_ms} / p99 {cap.ryw_idle.p99_ms} ms; at "
                      f"{fmt(cap.ryw_load.rps)} req/s p50 {cap.ryw_load.p50_ms} / p99 "
                      f"{cap.ryw_load.p99_ms} ms; answers other than 200: "
                      f"{cap.ryw_idle.failures + cap.ryw_load.failures}, read only after a 503's "
                      f"`Retry-After`: {cap.ryw_idle.retried + cap.ryw_load.retried}. "
                      f"oms peak RSS {cap.oms_rss_mib:.0f} MiB."]
        lines += ["", f"Raw broker, same settings, no HTTP: **{fmt(raw_p.per_second)} orders/s produced** "
                  f"(asynchronously, {raw_p.seconds:.1f} s for {raw_p.produced:,}). Best ingest "
                  f"rate = {max(i.rps for i in r.ingest) / raw_p.per_second:.2f} × that.", "",
                  "### Consumer alone: draining the backlog into an empty store", ""]
        # Reports from before restarts were measured render as they were.
        restarts = any(d.restart_s is not None for d in r.drain)
        readies = any(d.ready_s is not None for d in r.drain)
        if readies:
            lines += ["`ready s`, `no lag s`: oms stopped after the drain and started again on the full store, "
                      "until `/readyz` answers 200 (the store open — for the memory engine its last snapshot "
                      "loaded — the broker reachable, the consumer running), and until it also reports no lag "
                      "(the log watcher looks every 2 s, so this one moves in steps of that). The drain's own "
                      "seconds are what a restart without a snapshot replays.", ""]
        elif restarts:
            lines += ["`restart s`: oms stopped after the drain and started again on the full store, until "
                      "`/readyz` answers 200 with no lag — for the memory engine loading its last snapshot "
                      "and reading the log after it; the drain's own seconds are what a restart without a "
                      "snapshot replays.", ""]
        extra = [("ready s", lambda d: d.ready_s)] if readies else []
        extra += [("no lag s" if readies else "restart s", lambda d: d.restart_s)] if restarts else []
        lines += ["| store | orders | seconds | orders/s | vs. raw consume | oms CPU | oms RSS MiB | store RSS MiB |"
                  + "".join(f" {name} |" for name, _ in extra),
                  "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra),
                  f"| raw consume, no store | {raw_c.records:,} | {raw_c.seconds:.1f} | "
                  f"{fmt(raw_c.per_second)} | 1.00 | – | – | – |" + " – |" * len(extra)]
        for d in r.drain:
            restart = "".join(" – |" if get(d) is None else f" {get(d):.2f} |" for _, get in extra)
            lines.append(f"| {STORE_TITLES[d.store]} | {d.orders:,} | {d.seconds:.1f} | "
                         f"{fmt(d.per_second)} | {d.per_second / raw_c.per_second:.2f} | "
                         f"{d.oms_cpu_cores:.2f} | {d.oms_rss_mib:.0f} | {mib(d.store_rss_mib)} |{restart}")
        if raw_p.on_log != raw_p.produced:
            lines += ["", f"Note: tansu acknowledged {raw_p.produced:,} records, served all of them "
                      f"({raw_c.records:,} read), but its watermarks report {raw_p.on_log:,} "
                      "(a tansu 0.6 memory-engine quirk): every step here counts acknowledged and stored "
                      "orders, never watermarks."]
        lines += scale_section(r)
        lines += ["", "### Targets", ""] + [f"- {t}" for t in targets(r)] + [""]
    if results.matching:
        x = results.matching
        lines += ["## Matching in process", "",
                  f"`cargo bench --bench matching` ({x.orders:,} limit orders into one symbol's book, "
                  f"starting at {x.resting_before:,} resting orders on 400 price levels, prices within "
                  f"±1.00 of the mid): **{fmt(x.orders_per_second)} orders/s, {x.ns_per_order:.0f} ns per "
                  f"order**, {x.trades:,} trades, {x.resting_after:,} orders resting at the end"
                  + (f" ({x.book_bytes_per_order:.0f} bytes of heap per resting order)"
                     if x.book_bytes_per_order else "")
                  + ". The ingest and drain tables above compare redb with matching on (the default) "
                  "and off.", ""]
        t = results.matching_terms
        if t:
            lines += [f"With the order types (`OMS_BENCH_TERMS=mixed`: one order in ten each a market "
                      f"order, `ioc`, `fok` and `post_only`, the rest resting limit orders): "
                      f"**{fmt(t.orders_per_second)} orders/s, {t.ns_per_order:.0f} ns per order**, "
                      f"{t.trades:,} trades, {t.expired:,} expired, {t.rejected:,} rejected, "
                      f"{t.resting_after:,} resting at the end.", ""]
    if results.key_check:
        k = results.key_check
        lines += ["## The API key check", "",
                  f"Every order request passes it (`src/auth/ring.rs`); `cargo bench --bench auth` "
                  f"({k.keys:,} keys in the file, {k.checks:,} checks): **{k.ns_per_check_no_limits:.0f} ns "
                  f"per request** without limits, {k.ns_per_check_rate_and_in_flight:.0f} ns with a rate and "
                  "an in-flight limit. Every k6 and wrk request of this report carries a key.", ""]
    lines += ["## Charts", "", "![throughput](throughput.png)", "", "![latency](latency.png)", "",
              "![drain](drain.png)", ""]
    if results.dashboard:
        lines += ["The Grafana dashboard's panels over this run, rendered from the benchmark's own "
                  "Prometheus (scraping oms every second):", "", "![dashboard](dashboard.png)", ""]
    if results.analysis:
        lines += ["## Where the time goes", "", results.analysis, ""]
    text = "\n".join(lines)
    return text


def after_join(x: ScaleRun) -> float:
    """Drain rate once the group owned every partition (nothing is stored before)."""
    return x.drain_orders / max(x.drain_seconds - x.join_s, 1e-9)


def scale_section(r: ModeResult) -> list[str]:
    """Several instances in group mode: what coordination costs per order."""
    if not r.scale:
        return []
    lines = ["", "### Scale: 1, 2, 3 oms instances in group mode on one Postgres (disk), behind nginx", "",
             "Each count on a fresh broker and database: the instances drain a backlog from the log (the "
             "clock starts at launch, so joining the group is included), then wrk posts through nginx "
             f"({r.scale[0].ingest_connections} connections). CPU µs per order is summed over every "
             "instance, the whole Postgres cluster and nginx.", "",
             "| instances | join s | drain s | drain orders/s (after the join) | drain CPU µs oms / Postgres / tansu "
             "| ingest req/s | p99 ms | not 202 | ingest CPU µs oms / tansu / Postgres / nginx | stored |",
             "|---:|---:|---:|---:|---|---:|---:|---:|---|---:|"]
    for x in r.scale:
        d, i = x.drain_cpu_us, x.ingest_cpu_us
        lines.append(f"| {x.instances} | {x.join_s:.1f} | {x.drain_seconds:.1f} | {fmt(x.drain_per_second)} "
                     f"({fmt(after_join(x))}) | "
                     f"{d.oms:.0f} / {d.postgres:.0f} / {d.tansu:.0f} | {fmt(x.ingest_rps)} | "
                     f"{x.ingest_p99_ms:.1f} | {x.ingest_rejected} | "
                     f"{i.oms:.0f} / {i.tansu:.0f} / {i.postgres:.0f} / {i.nginx:.0f} | {x.stored:,} |")
    one, top = r.scale[0], r.scale[-1]
    lines += ["", f"From {one.instances} to {top.instances} instances: ingest "
              f"{top.ingest_rps / max(one.ingest_rps, 1e-9):.2f} × the rate at "
              f"{top.ingest_cpu_us.oms / max(one.ingest_cpu_us.oms, 1e-9):.2f} × oms' CPU per order; drain "
              f"{top.drain_per_second / max(one.drain_per_second, 1e-9):.2f} × the rate "
              f"({after_join(top) / max(after_join(one), 1e-9):.2f} × after the join). Broker, Postgres, nginx, "
              "the load generator and every instance share this one machine's cores, so more instances cannot "
              "raise the absolute rate much: what this row shows is the cost of coordination (group "
              "membership, fenced writes, one more HTTP hop), which a machine with spare cores per "
              "instance would pay for the same orders."]
    return lines


def targets(r: ModeResult) -> list[str]:
    ok = lambda b: "met" if b else "**missed**"
    best = max(r.ingest, key=lambda i: i.rps)
    drains = {d.store: d.per_second for d in r.drain}
    raw = r.raw_consume.per_second
    out = [f"{TARGET_RPS:,.0f} req/s with p95 ≤ {TARGET_P95_MS} ms and 0 % failed (best store, "
           f"{STORE_TITLES[best.store]}: {best.rps:,.0f} req/s, p95 {best.p95_ms:.2f} ms, "
           f"{best.failed_pct:.2f} %): "
           + ok(best.rps >= TARGET_RPS and best.p95_ms <= TARGET_P95_MS and best.failed_pct == 0)]
    for i in r.ingest:
        bounded = i.catch_up_s < 10
        out.append(f"consumer keeps up under load, {STORE_TITLES[i.store]}: lag max {i.lag_max:,.0f}, "
                   f"caught up {i.catch_up_s:.1f} s after the load: {ok(bounded)}")
    redb = r.seed or next((i for i in r.ingest if i.store == "redb"), None)
    if redb:
        out.append(f"`just up` defaults (redb): ≥ 4,500 req/s with p95 ≤ 8 ms and 0 failed ({redb.rps:,.0f} "
                   f"req/s, p95 {redb.p95_ms:.2f} ms, {redb.failed_pct:.2f} %): "
                   + ok(redb.rps >= 4500 and redb.p95_ms <= 8 and redb.failed_pct == 0))
    cap = r.capacity
    if cap:
        best = cap.best
        out.append(f"capacity ≥ 15,000 req/s at p99 ≤ {CAPACITY_P99_MS:.0f} ms "
                   f"({fmt(best.rps) if best else 'none within the p99'}): "
                   + ok(bool(best) and best.rps >= 15_000))
        top = max(cap.steps, key=lambda x: x.rps)
        u = top.cpu_us_per_order
        floor = (f"; a bare relay, HTTP → log only: {min(x.cpu_us_per_order.oms for x in cap.relay):.0f} µs"
                 if cap.relay else "")
        out.append(f"CPU per order at capacity ≤ 40 µs oms and ≤ 60 µs broker ({u.oms:.0f} / {u.tansu:.0f} µs "
                   f"at {fmt(top.rps)} req/s{floor}): " + ok(u.oms <= 40 and u.tansu <= 60))
        i, b = cap.ryw_idle, cap.ryw_load
        missed = i.failures + b.failures + i.retried + b.retried
        out.append(f"read-your-writes: never anything but 200, p99 ≤ 20 ms idle and ≤ 50 ms under load "
                   f"({i.p99_ms} / {b.p99_ms} ms, {missed} not 200 at first): "
                   + ok(missed == 0 and (i.p99_ms or 1e9) <= 20 and (b.p99_ms or 1e9) <= 50))
    memory = next((d for d in r.drain if d.store == "memory"), None)
    if memory:
        out.append(f"the memory engine drains at ≥ 95 % of the raw consume rate: {memory.per_second / raw:.1%}: "
                   + ok(memory.per_second >= 0.95 * raw))
        if memory.ready_s is not None:
            out.append(f"the memory engine restarts on a snapshot of {memory.orders:,} orders ready in ≤ 2 s: "
                       f"{memory.ready_s:.2f} s (no lag reported after {memory.restart_s:.2f} s; a full replay: "
                       f"{memory.seconds:.1f} s): " + ok(memory.ready_s <= 2.0))
        elif memory.restart_s is not None:
            out.append(f"the memory engine restarts on a snapshot of {memory.orders:,} orders, ready with no "
                       f"lag, in ≤ 2 s: {memory.restart_s:.2f} s (a full replay: {memory.seconds:.1f} s): "
                       + ok(memory.restart_s <= 2.0))
    if "redb" in drains:
        out.append(f"redb drains at ≥ 90 % of the raw consume rate: {drains['redb'] / raw:.1%}: "
                   + ok(drains['redb'] >= 0.9 * raw))
        if "sled" in drains:
            out.append(f"sled drains at ≥ 70 % of the raw consume rate: {drains['sled'] / raw:.1%}: "
                       + ok(drains['sled'] >= 0.7 * raw))
        for pg in ("postgres", "postgres-tmpfs"):
            if pg in drains:
                out.append(f"{STORE_TITLES[pg]} drains at ≥ 60 % of redb: {drains[pg] / drains['redb']:.1%}: "
                           + ok(drains[pg] >= 0.6 * drains['redb']))
    return out


