"""Tests of the report code (no broker needed): `just test` runs them with
`python3 -m unittest omsbench.test_report` from scripts/."""

from __future__ import annotations

import copy
import json
import unittest
from pathlib import Path

from .config import ROOT
from .report import report, targets
from .results import CapacityStep, CpuPerOrder, Results, ScaleCpu, ScaleRun, from_json, to_json

COMMITTED = ROOT / "bench"


def committed() -> Results:
    return from_json(Results, json.loads((COMMITTED / "report.json").read_text()))


class ReportTest(unittest.TestCase):
    def test_the_committed_report_is_rendered_from_its_results(self):
        results = committed()
        self.assertEqual(report(results, COMMITTED, results.command), (COMMITTED / "REPORT.md").read_text())

    def test_results_survive_a_round_trip_through_json(self):
        results = committed()
        self.assertEqual(from_json(Results, json.loads(json.dumps(to_json(results)))), results)

    def test_unknown_keys_in_older_or_newer_results_are_ignored(self):
        raw = json.loads((COMMITTED / "report.json").read_text())
        raw["something_new"] = 1
        raw["modes"]["sqlite"]["drain"][0]["extra"] = "x"
        self.assertEqual(from_json(Results, raw), committed())

    def test_targets_say_met_only_when_every_bound_holds(self):
        r = copy.deepcopy(committed().modes["sqlite"])
        assert r.seed is not None
        r.seed.rps, r.seed.p95_ms, r.seed.failed_pct = 4_600.0, 7.9, 0.0
        line = next(t for t in targets(r) if t.startswith("`just up` defaults"))
        self.assertTrue(line.endswith(": met"), line)
        r.seed.p95_ms = 8.1
        line = next(t for t in targets(r) if t.startswith("`just up` defaults"))
        self.assertTrue(line.endswith("**missed**"), line)

    def test_a_capacity_with_no_step_within_the_p99_says_so(self):
        results = committed()
        cap = results.modes["sqlite"].capacity
        assert cap is not None
        cap.best = None
        text = report(results, COMMITTED, results.command)
        self.assertIn("No step kept p99 ≤ 10 ms.", text)
        line = next(t for t in targets(results.modes["sqlite"]) if t.startswith("capacity"))
        self.assertIn("none within the p99", line)
        self.assertTrue(line.endswith("**missed**"), line)

    def test_the_bare_relay_is_shown_beside_oms_as_the_floor(self):
        results = committed()
        cap = results.modes["sqlite"].capacity
        assert cap is not None
        cap.relay = [CapacityStep(connections=c, requests=100_000, rejected=0, seconds=10.0, rps=10_000.0,
                                  p50_ms=4.0, p95_ms=6.0, p99_ms=8.0,
                                  cpu_us_per_order=CpuPerOrder(oms=us, tansu=25.0)) for c, us in ((35, 48.0), (64, 43.0))]
        text = report(results, COMMITTED, results.command)
        self.assertIn("| bare relay, 64 | 10,000 | 4.00 | 6.00 | 8.00 | 0 | 43 / 25 |", text)
        line = next(t for t in targets(results.modes["sqlite"]) if t.startswith("CPU per order"))
        self.assertIn("a bare relay, HTTP → log only: 43 µs", line)
        again = from_json(Results, json.loads(json.dumps(to_json(results))))
        self.assertEqual(again.modes["sqlite"].capacity.relay, cap.relay)

    def test_a_read_answered_only_after_retry_after_misses_the_read_your_writes_target(self):
        r = copy.deepcopy(committed().modes["sqlite"])
        cap = r.capacity
        assert cap is not None
        cap.ryw_idle.failures = cap.ryw_load.failures = 0
        cap.ryw_idle.p99_ms = cap.ryw_load.p99_ms = 5.0
        line = next(t for t in targets(r) if t.startswith("read-your-writes"))
        self.assertTrue(line.endswith(": met"), line)
        cap.ryw_load.retried = 1
        line = next(t for t in targets(r) if t.startswith("read-your-writes"))
        self.assertIn("1 not 200 at first", line)
        self.assertTrue(line.endswith("**missed**"), line)

    def test_the_scale_row_compares_every_instance_count_with_one(self):
        results = committed()
        cpu = ScaleCpu(oms=100.0, tansu=120.0, postgres=40.0, nginx=0.0)
        results.modes["sqlite"].scale = [
            ScaleRun(instances=n, join_s=3.0, drain_orders=1_000, drain_seconds=4.0, drain_per_second=250.0 * n,
                     drain_cpu_us=cpu, ingest_connections=35, ingest_requests=100, ingest_rejected=0,
                     ingest_rps=4_000.0 / n, ingest_p99_ms=20.0,
                     ingest_cpu_us=ScaleCpu(oms=100.0 * n, tansu=120.0, postgres=40.0, nginx=30.0), stored=1_100)
            for n in (1, 2, 3)]
        text = report(results, COMMITTED, results.command)
        self.assertIn("| 3 | 3.0 | 4.0 | 750 (1,000) | 100 / 40 / 120 | 1,333 | 20.0 | 0 | 300 / 120 / 40 / 30 | 1,100 |", text)
        self.assertIn("From 1 to 3 instances: ingest 0.33 × the rate at 3.00 × oms' CPU per order; drain 3.00 × the rate (1.00 × after the join)", text)
        again = from_json(Results, json.loads(json.dumps(to_json(results))))
        self.assertEqual(again.modes["sqlite"].scale, results.modes["sqlite"].scale)


if __name__ == "__main__":
    unittest.main()
