"""Six partitions, produced flat out: the learner learns the stream in its true order.

A burst produced into six partitions reaches the learner interleaved by partition (thousands
of records out of order). With the event-time merge it learns them in ``ts`` order: its
prequential accuracy is river's ``progressive_val_score`` on the stream as produced, and its
first drift alert comes within one batch of river's own detector on that order, none before
the change.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from river import drift, evaluate, metrics
from river.datasets import synth

from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.topics import ensure_topics, topic_specs
from tests.conftest import make_settings
from tests.integration.worker import WorkerProcess
from trainers.online.learner import build_model, to_features

N, POSITION, WIDTH, BATCH = 10_000, 5_000, 50, 500
STAGGER_VALUES = (("small", "medium", "large"), ("red", "green", "blue"),
                  ("square", "circle", "triangle"))  # fmt: skip


def _stream(name: str) -> list[tuple[dict[str, Any], bool]]:
    concepts = {
        "stagger": (synth.STAGGER(classification_function=0, seed=1),
                    synth.STAGGER(classification_function=1, seed=1)),
        "sine": (synth.Sine(classification_function=0, seed=1),
                 synth.Sine(classification_function=2, seed=1)),
        "agrawal": (synth.Agrawal(classification_function=0, seed=1),
                    synth.Agrawal(classification_function=2, seed=1)),
        "sea": (synth.SEA(variant=0, seed=1), synth.SEA(variant=3, seed=1)),
    }[name]  # fmt: skip
    stream = synth.ConceptDriftStream(*concepts, position=POSITION, width=WIDTH, seed=1)
    out = []
    for x, y in itertools.islice(stream, N):
        if name == "stagger":  # categories as an events record carries them: strings
            features: dict[str, Any] = {k: STAGGER_VALUES[i][int(v)]
                                        for i, (k, v) in enumerate(x.items())}  # fmt: skip
        else:
            features = {str(k): float(v) for k, v in x.items()}
        out.append((features, bool(y)))
    return out


def _river(stream: list[tuple[dict[str, Any], bool]]) -> tuple[float, int | None]:
    """Prequential accuracy in the true order, and river's ADWIN's first alert after the
    change started (1-based record number)."""
    data = [(to_features({"features": x}), y) for x, y in stream]
    accuracy = evaluate.progressive_val_score(data, build_model("logreg"), metrics.Accuracy())
    model, detector = build_model("logreg"), drift.ADWIN(delta=0.002)
    first = None
    for i, (x, y) in enumerate(data, start=1):
        detector.update(0.0 if model.predict_one(x) == y else 1.0)
        model.learn_one(x, y)
        if first is None and i > POSITION - WIDTH and detector.drift_detected:
            first = i
    return accuracy.get(), first


# Categorical (stagger), many mixed features (agrawal), two numeric ones (sea); sine, numeric
# like sea, ran here too until the suite's time had to shrink.
@pytest.mark.parametrize("name", ["stagger", "agrawal", "sea"])
def test_a_burst_over_six_partitions_is_learned_in_event_order(
    name: str, tmp_path: Path, kafka_bootstrap: str
) -> None:
    stream = _stream(name)
    s = make_settings(tmp_path, kafka_bootstrap, partitions=6)
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    client = LiveLearnClient(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        for i, (x, y) in enumerate(stream):  # flat out, while the learner reads
            client.send_event(f"{name}{i}", features=x, label=y)
        client.flush()
        predicted: dict[str, Any] = {}
        for p in client.subscribe("predictions", from_beginning=True, timeout_s=120):
            predicted[p["id"]] = p["prediction"]
            if len(predicted) == N:
                break
    finally:
        worker.stop()
    assert len(predicted) == N
    alerts = list(client.subscribe("drift-alerts", from_beginning=True, timeout_s=5))

    accuracy = sum(predicted[f"{name}{i}"] == y for i, (_x, y) in enumerate(stream)) / N
    river_accuracy, river_first = _river(stream)
    assert abs(accuracy - river_accuracy) <= 0.005, (accuracy, river_accuracy)
    at = sorted(int(a["window"]["event_id"][len(name) :]) + 1 for a in alerts)
    assert all(a > POSITION - WIDTH for a in at), alerts  # nothing before the change
    drifts = sorted(int(a["window"]["event_id"][len(name) :]) + 1 for a in alerts
                    if a["severity"] == "drift" and a["signal"] == "concept")  # fmt: skip
    assert river_first is not None and drifts, (river_first, alerts)
    assert drifts[0] <= river_first + BATCH, (drifts[0], river_first)
