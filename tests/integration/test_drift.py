"""Drift alerts and triggered jobs through real Kafka and the worker's learner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from river.datasets import synth

from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import Settings, TriggerSettings
from streams.topics import ensure_topics, topic_specs
from tests.conftest import make_settings
from tests.integration.worker import WorkerProcess


def _run(
    tmp_path: Path, bootstrap: str, stream: Any, n: int, trigger: TriggerSettings
) -> tuple[Settings, list[dict[str, Any]], list[dict[str, Any]]]:
    s = make_settings(tmp_path, bootstrap, partitions=1, trigger=trigger)
    ensure_topics(admin_client(s, bootstrap), topic_specs(s.topics))
    client = LiveLearnClient(s)
    for i, (x, y) in enumerate(stream.take(n)):
        client.send_event(f"s{i}", features=x, label=bool(y))
    client.flush()
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        last = None
        for p in client.subscribe("predictions", from_beginning=True, timeout_s=180):
            last = p["id"]
            if last == f"s{n - 1}":
                break
        assert last == f"s{n - 1}"
    finally:
        worker.stop()
    alerts = list(client.subscribe("drift-alerts", from_beginning=True, timeout_s=5))
    jobs = list(client.subscribe("training-jobs", from_beginning=True, timeout_s=5))
    return s, alerts, jobs


def test_abrupt_change_one_alert_one_retrain_over_the_history(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    stream = synth.ConceptDriftStream(
        synth.SEA(seed=1, variant=0), synth.SEA(seed=1, variant=3), position=5000, width=50,
        seed=1,
    )  # fmt: skip
    _s, alerts, jobs = _run(tmp_path, kafka_bootstrap, stream, 12_000,
                            TriggerSettings(volume_threshold=0))  # fmt: skip
    drifts = [a for a in alerts if a["severity"] == "drift"]
    assert len(drifts) == 1, alerts
    assert 5000 < drifts[0]["window"]["offset"] < 5500  # the delay: a few hundred records
    assert drifts[0]["action"] == "retrain" and drifts[0]["value"] > drifts[0]["baseline"]
    retrains = [j for j in jobs if j["kind"] == "retrain"]
    assert len(retrains) == 1 and retrains[0]["reason"] == "drift"
    lo, hi = retrains[0]["data"]["offsets"]["0"]
    # The whole history, up to the micro-batch in which 200 more labelled records (the
    # policy's drift_min_records) had arrived after the alert.
    at = drifts[0]["window"]["offset"] + 1
    assert lo == 0 and at + 200 <= hi <= at + 200 + 500


def test_stationary_stream_no_alert_and_volume_job(tmp_path: Path, kafka_bootstrap: str) -> None:
    _s, alerts, jobs = _run(tmp_path, kafka_bootstrap, synth.SEA(seed=7, variant=0), 20_000,
                            TriggerSettings(volume_threshold=15_000))  # fmt: skip
    assert alerts == []
    # Nothing serves yet, so the volume rule's job is the first retrain.
    assert [(j["kind"], j["reason"]) for j in jobs] == [("retrain", "volume")]
    lo, hi = jobs[0]["data"]["offsets"]["0"]
    assert lo == 0 and 15_000 <= hi < 15_500  # decided after the batch that crossed 15k
