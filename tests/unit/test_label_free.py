"""Drift seen before the labels come: prediction shift and CBPE-estimated accuracy."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from streams.processing import DecodedRecord
from streams.services import make_online_service
from streams.settings import Settings
from trainers.drift.label_free import (
    LABEL_FREE_SIGNALS,
    EstimatedAccuracyMonitor,
    LabelFreeMonitors,
)
from trainers.drift.trigger import TriggerPolicy

LATE, CHANGE, N = 5000, 12_000, 20_000


def _event(rng: random.Random, i: int) -> tuple[dict[str, float], bool]:
    """Two Gaussian classes; at ``CHANGE`` the inputs move to where the old model is unsure
    and mostly says True (a covariate shift), and the labels follow another rule."""
    if i < CHANGE:
        y = rng.random() < 0.5
        mu = (1.0, 1.0) if y else (-1.0, -1.0)
        x = {"x1": rng.gauss(mu[0], 1.0), "x2": rng.gauss(mu[1], 1.0)}
        return x, y
    x = {"x1": rng.gauss(1.5, 1.0), "x2": rng.gauss(-0.8, 1.0)}
    return x, x["x2"] > -0.8


def _records() -> tuple[list[DecodedRecord], int]:
    """Events without labels; each label comes as its own record ``LATE`` events later.
    Returns the records and the offset of the first label of the new concept."""
    rng = random.Random(7)
    labels: list[bool] = []
    out: list[DecodedRecord] = []
    first_new_label = -1
    for i in range(N):
        x, y = _event(rng, i)
        labels.append(y)
        out.append(DecodedRecord(0, len(out), {"id": f"e{i}", "ts": float(len(out)),
                                               "features": x}))  # fmt: skip
        j = i - LATE
        if j >= 0:
            if j == CHANGE:
                first_new_label = len(out)
            out.append(DecodedRecord(0, len(out), {"id": f"e{j}", "ts": float(len(out)),
                                                   "label": labels[j]}))  # fmt: skip
    return out, first_new_label


def test_labels_5000_late_the_label_free_monitors_alert_before_the_new_labels(
    tmp_path: Path,
) -> None:
    records, first_new_label = _records()
    change_offset = next(r.offset for r in records if r.value["id"] == f"e{CHANGE}")
    service: Any = make_online_service(Settings(data_dir=tmp_path))
    alerts = []
    for lo in range(0, len(records), 500):
        for contract, _key, value in service.process(records[lo : lo + 500]):
            if contract == "drift-alerts":
                alerts.append(value)
    label_free = [a for a in alerts if a["signal"] in LABEL_FREE_SIGNALS]
    assert {a["signal"] for a in label_free} == {"prediction:class_share", "estimated_accuracy"}
    for signal in LABEL_FREE_SIGNALS - {"prediction:distribution"}:
        first = min(a["window"]["offset"] for a in label_free if a["signal"] == signal)
        assert change_offset < first < first_new_label, (signal, change_offset, first,
                                                         first_new_label)  # fmt: skip
    assert all(a["action"] == "none" and a["severity"] == "warning" for a in label_free)
    assert len({a["alert_id"] for a in alerts}) == len(alerts)  # one alert per id


def test_no_label_free_alert_on_a_stationary_stream_with_late_labels() -> None:
    rng = random.Random(3)
    monitors = LabelFreeMonitors(window=500, min_labels=200)
    pending: list[tuple[str, bool]] = []
    signals = []
    for i in range(15_000):
        y = rng.random() < 0.3
        confident = rng.random() < 0.9
        pred = y if confident else not y
        p = rng.uniform(0.6, 0.99) if confident else rng.uniform(0.5, 0.7)
        signals += monitors.on_prediction(f"e{i}", pred, {str(pred): p, str(not pred): 1 - p})
        pending.append((f"e{i}", y))
        if len(pending) > 2000:
            monitors.on_label(*pending.pop(0))
    assert signals == []


def test_the_calibration_learns_how_often_the_model_is_right() -> None:
    monitor = EstimatedAccuracyMonitor(prior=20.0, memory=10**9)
    assert monitor.calibrated(0.9) == 0.9  # no labels yet: the model's own confidence
    for i in range(1000):  # says 0.9, right only 60% of the time
        monitor.learn(0.9, i % 10 < 6)
    assert abs(monitor.calibrated(0.91) - 0.6) < 0.02


def test_a_label_free_signal_has_its_own_action() -> None:
    policy = TriggerPolicy("m", "events", label_free_action="finetune", drift_action="retrain")
    assert policy.action_for("warning", True, "estimated_accuracy") == "finetune"
    assert policy.action_for("warning", True, "feature:x") == policy.data_drift_action == "none"
    assert TriggerPolicy("m", "events").action_for("warning", True, "prediction:class_share") \
        == "none"  # fmt: skip


def test_integer_labels_match_boolean_predictions() -> None:
    """river's binary classifiers answer True/False whatever the labels' type (0/1 here)."""
    monitors = LabelFreeMonitors(window=100)
    for i in range(200):
        monitors.on_prediction(f"e{i}", True, {"True": 0.95, "False": 0.05})
        monitors.on_label(f"e{i}", 1)
    assert monitors.accuracy.calibrated(0.95) > 0.95


def test_regression_watches_the_distribution_of_predicted_values() -> None:
    rng = random.Random(9)
    monitors = LabelFreeMonitors("regression", window=300, min_labels=50)
    for i in range(100):
        monitors.on_prediction(f"l{i}", rng.gauss(0, 1), None, label=0.0)
    signals = []
    for i in range(2000):  # no labels; at 1000 the predictions move up by one
        value = rng.gauss(0.0 if i < 1000 else 1.0, 1.0)
        signals += [(s.signal, i) for s in monitors.on_prediction(f"u{i}", value, None)]
    assert [(s, 1000 < i < 1300) for s, i in signals] == [("prediction:distribution", True)]
