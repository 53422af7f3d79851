"""Scrape /metrics of a real worker and a real trainer: they export what the dashboard reads.

A worker with a metrics port gets a few documents, one bad record and labelled events through
the SDK; its /metrics must then declare every metric family the dashboard queries, and carry
samples for the ones this traffic drives. A trainer's /metrics must declare the training ones.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import free_port
from streams.kafka import flush_or_raise, producer
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from tests.conftest import settings_env
from tests.integration.worker import WorkerProcess

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/livelearn.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names |= set(re.findall(r"\blivelearn_[a-z0-9_]+\b", target["expr"]))
    return names


def _scrape(port: int) -> tuple[set[str], dict[str, list[tuple[dict[str, str], float]]]]:
    """(every sample name the endpoint declares, samples by name) of ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    declared: set[str] = set()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        declared |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return declared, samples


def _total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for lbl, v in samples.get(name, []) if labels.items() <= lbl.items())


def _wait_for_metrics(port: int, settings: Settings, timeout_s: float = 60) -> Any:
    """Scrape until the traffic of the test shows in the worker's metrics."""
    t = settings.topics
    wanted = {
        "docs indexed": lambda s: _total(s, "livelearn_records_in_total", topic=t.docs) >= 4,
        "events learned": lambda s: _total(s, "livelearn_records_in_total", topic=t.events) >= 20,
        "predictions": lambda s: (
            _total(s, "livelearn_records_out_total", topic=t.predictions) >= 20
        ),
        "dead letter": lambda s: _total(s, "livelearn_dead_letters_total", topic=t.docs) >= 1,
        "freshness": lambda s: _total(s, "livelearn_freshness_seconds_count") >= 3,
        "batch time": lambda s: _total(s, "livelearn_batch_seconds_count", agent="docs") >= 1,
        "model metric": lambda s: bool(s.get("livelearn_model_metric")),
        "serving version": lambda s: _total(s, "livelearn_serving_model_info") >= 1,
        "prediction latency": lambda s: (
            _total(s, "livelearn_prediction_latency_seconds_count") >= 20
        ),
        "learner lag": lambda s: "livelearn_consumer_lag" in s,
    }
    deadline = time.monotonic() + timeout_s
    missing: list[str] = list(wanted)
    while time.monotonic() < deadline:
        declared, samples = _scrape(port)
        missing = [name for name, ok in wanted.items() if not ok(samples)]
        if not missing:
            return declared, samples
        time.sleep(0.5)
    raise AssertionError(f"no samples after {timeout_s} s for: {missing}")


def test_worker_metrics_cover_the_dashboard(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("LIVELEARN_METRICS_PORT", str(port))  # inherited by the worker
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        client = LiveLearnClient(settings)
        for i in range(3):
            client.upsert_doc(f"d{i}", f"Kafka keeps record {i} in a partitioned log.")
        for i in range(20):
            client.send_event(f"e{i}", features={"x": float(i), "y": i % 3}, label=i % 2 == 0)
        client.flush()
        bad = producer(settings, settings.kafka.bootstrap_servers)
        bad.produce(settings.topics.docs, b"{not json", key=b"bad")
        flush_or_raise(bad, 30)
        declared, _samples = _wait_for_metrics(port, settings)
    finally:
        worker.stop()
    worker_metrics = {m for m in _dashboard_metrics() if not m.startswith("livelearn_training_")}
    assert worker_metrics, "the dashboard reads no worker metric"
    missing = worker_metrics - declared
    assert not missing, f"the dashboard reads metrics the worker does not export: {missing}"


def test_trainer_metrics_cover_the_dashboard(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = settings_env(settings)
    env["LIVELEARN_METRICS_PORT"] = str(port)
    log = (tmp_path / "trainer.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "trainer"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            try:
                declared, _samples = _scrape(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "the trainer never served /metrics"
                time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    training = {m for m in _dashboard_metrics() if m.startswith("livelearn_training_")}
    assert training, "the dashboard shows no training job metric"
    assert training <= declared, f"not exported by the trainer: {training - declared}"
