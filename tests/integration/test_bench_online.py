"""``python -m bench online`` at its smallest, on the session's broker: every key of
``online.json``, with sane values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.bench_online import main

KEYS = {
    "events_per_s", "river_events_per_s", "throughput_ratio", "latency_p50_ms", "latency_p99_ms",
    "accuracy", "river_accuracy", "latency_stages", "worker_latency_ms_p50",
    "service_events_per_s", "machine",
}  # fmt: skip


def test_bench_online_smoke(tmp_path: Path, kafka_bootstrap: str) -> None:
    out = tmp_path / "online.json"
    assert main(["--smoke", "--bootstrap", kafka_bootstrap, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert KEYS <= set(r), KEYS - set(r)
    assert r["failures"] == []
    assert r["events_per_s"] > 0 and r["river_events_per_s"] > 0
    assert r["throughput_ratio"] == pytest.approx(r["events_per_s"] / r["river_events_per_s"])
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_max_ms"]
    assert all(math.isfinite(s["p99"]) for s in r["latency_stages"].values())
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["river_accuracy"] <= 1.0
    # one partition: the learner sees river's order, so the two agree (the test of the system's
    # prequential accuracy against river's own loop allows 0.5 pp)
    assert abs(r["accuracy"] - r["river_accuracy"]) <= 0.005
    assert r["accuracy_events"] == r["events"] + r["latency_events"]
    assert r["machine"]["cpu_count"] >= 1 and r["machine"]["river"]
