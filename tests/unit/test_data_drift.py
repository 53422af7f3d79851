"""Data drift on input features and on document embeddings (no broker)."""

from __future__ import annotations

import hashlib
import itertools
import pickle
import random
from types import SimpleNamespace
from typing import Any

from river.datasets import synth

from trainers.drift.data import EmbeddingDriftMonitor, FeatureDriftMonitor
from trainers.drift.trigger import TriggerPolicy
from trainers.online.learner import OnlineLearner
from trainers.online.processor import OnlineService


def _sea(n: int, seed: int) -> list[dict[str, Any]]:
    return [x for x, _y in itertools.islice(synth.SEA(seed=seed, variant=0), n)]


def test_a_stationary_stream_raises_nothing() -> None:
    monitor = FeatureDriftMonitor()
    assert [s for x in _sea(20_000, 7) if (s := monitor.update(x))] == []


def test_a_shifted_numeric_feature_raises_one_alert_naming_it() -> None:
    monitor = FeatureDriftMonitor()
    signals = []
    for i, x in enumerate(_sea(12_000, 3)):
        if i >= 5000:
            x = {**x, 1: x[1] * 0.5 + 5.0}  # the sensor now reads the upper half, compressed
        if (s := monitor.update(x)) is not None:
            signals.append(s)
    assert [(s.detector, s.signal) for s in signals] == [("ks", "feature:1")]
    assert 5000 < signals[0].index <= 5000 + monitor.window_size
    assert signals[0].value >= monitor.min_effect


def test_a_restored_monitor_checks_as_the_original_and_checkpoints_hold_no_derived_columns() -> (
    None
):
    original = FeatureDriftMonitor()
    stream = _sea(12_000, 3)
    for x in stream[:5000]:
        original.update(x)
    restored = pickle.loads(pickle.dumps(original))
    assert "_columns" in original.__dict__ and "_columns" not in restored.__dict__
    shifted = [{**x, 1: x[1] * 0.5 + 5.0} for x in stream[5000:]]
    ours = [(s.signal, s.index) for x in shifted if (s := original.update(x))]
    theirs = [(s.signal, s.index) for x in shifted if (s := restored.update(x))]
    assert ours == theirs and ours[0][0] == "feature:1"


def test_a_shifted_category_raises_a_psi_alert_and_the_episode_ends_when_it_comes_back() -> None:
    rng = random.Random(5)
    monitor = FeatureDriftMonitor(reference_size=500, window_size=500, check_every=100)
    signals = []
    for i in range(6000):
        weights = (0.1, 0.2, 0.7) if 2000 <= i < 4000 else (0.6, 0.3, 0.1)
        x = {"plan": rng.choices(["free", "pro", "team"], weights)[0], "x": rng.random()}
        if (s := monitor.update(x)) is not None:
            signals.append(s)
    # One alert when the mix changes, none while it stays changed, one more only after the
    # mix came back (episode over) and ... it did not change again: so exactly one.
    assert [(s.detector, s.signal) for s in signals] == [("psi", "feature:plan")]
    assert 2000 < signals[0].index <= 2500 and signals[0].value > 0.25
    assert not monitor.in_episode  # back to the reference mix at the end


def test_the_reference_moves_after_a_promotion() -> None:
    rng = random.Random(2)
    monitor = FeatureDriftMonitor(reference_size=500, window_size=500, check_every=100)
    seen = []
    for i in range(5000):
        if i == 2600:
            monitor.reset_reference()  # a model trained on the new world was promoted
        if (s := monitor.update({"x": rng.gauss(0.0 if i < 2000 else 3.0, 1.0)})) is not None:
            seen.append(s.index)
    assert len(seen) == 1 and 2000 < seen[0] <= 2500  # and nothing after the reset


def _event(off: int, x: dict[str, Any]) -> Any:
    return SimpleNamespace(partition=0, offset=off, timestamp=0.0,
                           value={"id": f"e{off}", "features": x, "label": x[0] > 5})  # fmt: skip


def test_the_service_alerts_on_input_drift_and_the_policy_decides() -> None:
    # A fine-tune with nothing serving yet becomes the first retrain.
    for action, kinds in (("none", []), ("finetune", ["retrain"])):
        policy = TriggerPolicy("m", "events", volume_threshold=0, data_drift_action=action)
        svc = OnlineService(OnlineLearner("logreg", name="m"), None, policy=policy,
                            data_monitor=FeatureDriftMonitor(500, 500, 100))  # fmt: skip
        rows = _sea(4000, 11)
        outputs = []
        for off, x in enumerate(rows):
            if off >= 2000:
                x = {**x, 2: x[2] + 8.0}
            outputs += svc.process([_event(off, x)])
        alerts = [v for c, _k, v in outputs if c == "drift-alerts"]
        assert [(a["detector"], a["signal"], a["action"]) for a in alerts] == [
            ("ks", "feature:2", action)
        ]
        assert [v["kind"] for c, _k, v in outputs if c == "training-jobs"] == kinds


def test_embeddings_of_a_new_kind_of_document_raise_an_embedding_alert() -> None:
    from retrieval.corpus import stdlib_corpus
    from retrieval.embedding import TextEmbedder

    embedder = TextEmbedder("sentence-transformers/all-MiniLM-L6-v2")
    docs = [d["text"][:400] for d in stdlib_corpus(500, min_chars=150)]  # ~300 on 3.11
    random.Random(0).shuffle(docs)  # a docs stream mixes topics (the corpus is module-ordered)
    # Then the upstream breaks and ships hex digests instead of documentation.
    junk = [hashlib.sha256(str(i).encode()).hexdigest() * 3 for i in range(200)]
    vectors = embedder.encode(docs + junk)
    monitor = EmbeddingDriftMonitor(reference_size=200, window_size=50)
    signals = [(i, s) for i, v in enumerate(vectors) if (s := monitor.update(v.tolist()))]
    # Nothing while documentation keeps coming; one alert soon after the junk starts.
    assert len(docs) > 250
    assert len(signals) == 1 and len(docs) <= signals[0][0] < len(docs) + 50, signals
    assert signals[0][1].signal == "embedding:centroid_distance"
