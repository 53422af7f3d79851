"""Quieter, truer alerts: one per id, none for a bulk load by itself, no log noise."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from streams.handlers import _embedding_alerts
from streams.processing import DecodedRecord
from streams.settings import Settings
from trainers.drift.data import EmbeddingDriftMonitor
from trainers.drift.trigger import TriggerPolicy

DIM = 16


def _topic_vector(rng: random.Random, topic: int) -> list[float]:
    v = [rng.gauss(0.0, 0.3) for _ in range(DIM)]
    v[topic] += 3.0  # each topic has its own direction
    return v


def test_a_bulk_load_of_a_corpus_topic_after_topic_is_the_reference() -> None:
    rng = random.Random(0)
    corpus = [_topic_vector(rng, t) for t in range(8) for _ in range(300)]  # by topic
    first_500 = EmbeddingDriftMonitor(reference_size=500, window_size=200)
    assert [s for v in corpus if (s := first_500.update(v))], "the old reference alerts"

    monitor = EmbeddingDriftMonitor(reference_size=500, window_size=200, settle_s=5.0)
    clock = 0.0
    for lo in range(0, len(corpus), 64):  # one burst, in batches
        clock += 0.2
        assert [s for v in corpus[lo : lo + 64] if (s := monitor.update(v, clock))] == []
    clock += 60.0  # the load is over; later docs on the same topics: no drift
    later = [_topic_vector(rng, rng.randrange(8)) for _ in range(1000)]
    assert [s for v in later if (s := monitor.update(v, clock))] == []
    new_topic = [_topic_vector(rng, 12) for _ in range(1000)]  # something new: one alert
    assert len([s for v in new_topic if (s := monitor.update(v, clock))]) == 1


def test_one_alert_per_id_when_a_batch_flaps_in_and_out_of_an_episode(tmp_path: Path) -> None:
    rng = random.Random(1)
    monitor = EmbeddingDriftMonitor(reference_size=200, window_size=50, settle_s=1.0)
    for v in [_topic_vector(rng, 0) for _ in range(200)]:
        monitor.update(v, 0.0)
    services = SimpleNamespace(embedding_monitor=monitor, settings=Settings(data_dir=tmp_path))
    far = [_topic_vector(rng, 5) for _ in range(60)]
    near = [_topic_vector(rng, 0) for _ in range(60)]
    vectors = np.array(far + near + far)  # in, out, in again: two signals in one batch
    records = [DecodedRecord(0, 7, {"id": "d1", "text": "x", "op": "upsert"})]
    out = _embedding_alerts(services, records, vectors)  # type: ignore[arg-type]
    assert len(out) == 1 and len({o.key for o in out}) == 1


def test_a_cooldown_is_logged_once_not_every_tick(caplog: pytest.LogCaptureFixture) -> None:
    policy = TriggerPolicy("m", "events", volume_threshold=10, cooldown_seconds=300)
    for off in range(20):
        policy.observe(0, off, labelled=True)
    assert policy.tick(now=1000.0) is not None
    policy.job_update(policy.in_flight.job_id, "rejected")  # type: ignore[union-attr]
    for off in range(20, 40):
        policy.observe(0, off, labelled=True)
    with caplog.at_level(logging.INFO, logger="trainers.drift.trigger"):
        for t in range(60):
            assert policy.tick(now=1001.0 + t) is None
    infos = [r for r in caplog.records if r.levelno >= logging.INFO and "cooldown" in r.message]
    assert len(infos) == 1, [r.message for r in infos]
    assert sum("cooldown" in d for d in policy.decisions) == 1


def test_milvus_lite_start_up_logs_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:  # fmt: skip
    from retrieval.store import VectorStore

    with caplog.at_level(logging.DEBUG):
        store = VectorStore(str(tmp_path / "m.db"), collection="c", dim=8)
        store.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_per_key_drift_names_the_key(tmp_path: Path) -> None:
    """Tenant b's concept flips; tenant a's does not: b's own monitor alerts, naming b."""
    from trainers.online.learner import OnlineLearner
    from trainers.online.processor import OnlineProcessor

    rng = random.Random(4)
    service = OnlineProcessor(OnlineLearner("logreg"), None, per_key="tenant")
    alerts = []
    for i in range(16_000):
        tenant = "ab"[i % 2]
        x = rng.uniform(-1, 1)
        flipped = tenant == "b" and i >= 8000
        event = {"id": f"e{i}", "features": {"x": x, "tenant": tenant},
                 "label": (x > 0) != flipped}  # fmt: skip
        for contract, _k, value in service.process([DecodedRecord(0, i, event)]):
            if contract == "drift-alerts":
                alerts.append(value)
    keyed = [a for a in alerts if a.get("model_key") is not None]
    assert keyed and {a["model_key"] for a in keyed} == {"b"}
    assert all(a["window"]["offset"] > 8000 for a in alerts)
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
