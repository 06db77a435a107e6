"""The report's charts, and the Grafana dashboard drawn from Prometheus."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from .config import PROM_PORT, ROOT, STORE_TITLES, TARGET_P95_MS, TARGET_RPS
from .procs import http_get
from .results import Results

def save(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    if ax is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def charts(results: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results.modes)
    stores = [i.store for i in results.modes[modes[0]].ingest]
    labels = [STORE_TITLES[s] for s in stores]
    width = 0.8 / len(modes)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, mode in enumerate(modes):
        r = results.modes[mode]
        xs = [j + k * width for j in range(len(stores))]
        bars = ax.bar(xs, [i.rps for i in r.ingest], width, label=f"POST /orders, broker {mode}")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
        ax.axhline(r.ceiling.rps, linestyle=":", color=bars.patches[0].get_facecolor(),
                   label=f"GET /healthz ceiling, broker {mode}")
    ax.axhline(TARGET_RPS, color="red", linestyle="--", label="redpanda101 (5,059 req/s)")
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(stores))], labels)
    ax.set_ylabel("requests/s (k6, 0 % failed required)")
    ax.set_title(f"Ingest throughput by store ({results.profile.vus} VUs, all co-located)")
    save(fig, ax, out / "throughput.png")

    fig, axes = plt.subplots(1, len(modes), figsize=(9, 4.5), sharey=False, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        r = results.modes[mode]
        for k, (key, name) in enumerate([("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")]):
            xs = [j + k * 0.27 for j in range(len(stores))]
            ax.bar(xs, [getattr(i, key) for i in r.ingest], 0.27, label=name)
        ax.axhline(TARGET_P95_MS, color="red", linestyle="--", label="redpanda101 p95 (5.68 ms)")
        ax.set_xticks([j + 0.27 for j in range(len(stores))], labels, rotation=20, fontsize=8)
        ax.set_title(f"broker {mode}")
        ax.set_ylabel("POST /orders latency, ms")
        ax.legend(fontsize=8)
    fig.suptitle("Request latency by store")
    save(fig, None, out / "latency.png")

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = ["raw consume"] + [STORE_TITLES[d.store] for d in results.modes[modes[0]].drain]
    for k, mode in enumerate(modes):
        r = results.modes[mode]
        xs = [j + k * width for j in range(len(names))]
        bars = ax.bar(xs, [r.raw_consume.per_second] + [d.per_second for d in r.drain], width,
                      label=f"broker {mode}")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(names))], names)
    ax.set_ylabel("orders/s")
    ax.set_title(f"Consumer alone: draining {results.orders:,} orders into an empty store")
    save(fig, ax, out / "drain.png")


def dashboard(window: tuple[float, float], out: Path) -> bool:
    """Renders every panel of the Grafana dashboard from the benchmark's Prometheus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads((ROOT / "deployment/grafana/dashboards/oms.json").read_text())
    panels = [p for p in board["panels"] if p.get("targets")]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    start, end = window
    step_s = max(1, int((end - start) / 300))
    drawn = 0
    for ax, panel in zip(axes.flat, panels):
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "15s")
            q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step_s})
            status, body = http_get(f"http://127.0.0.1:{PROM_PORT}/api/v1/query_range?{q}", timeout=30)
            if status != 200:
                continue
            for series in json.loads(body)["data"]["result"]:
                ts, vs, last = [], [], None
                for t, v in series["values"]:
                    if last is not None and float(t) - last > 3 * step_s:
                        ts.append(float("nan"))  # a gap between runs: do not join across it
                        vs.append(float("nan"))
                    ts.append((float(t) - start) / 60)
                    vs.append(float(v))
                    last = float(t)
                legend = target.get("legendFormat", "")
                for k, v in series["metric"].items():
                    legend = legend.replace("{{" + k + "}}", v)
                ax.plot(ts, vs, label=legend or expr[:40], linewidth=1)
                drawn += 1
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xlabel("minutes into the run", fontsize=7)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("oms dashboard (deployment/grafana) over the benchmark run", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "dashboard.png", dpi=100)
    plt.close(fig)
    return drawn > 0


