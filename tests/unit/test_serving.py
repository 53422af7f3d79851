"""The serving policy and hot swaps inside the online service (no broker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from trainers.exceptions import ModelSpecError
from trainers.online.learner import OnlineLearner
from trainers.online.processor import OnlineService
from trainers.online.serving import ServingPolicy


class ThresholdModel:
    """A batch version that predicts ``x > cut`` (the protocol of trainers.batch.jobs.Predictor)."""

    def __init__(self, version: str, cut: float) -> None:
        self.version, self.cut, self.calls = version, cut, 0

    def predict_many(self, xs: list[Any]) -> list[tuple[Any, dict[str, float] | None]]:
        self.calls += 1
        return [(x["x"] > self.cut, {"True": float(x["x"] > self.cut)}) for x in xs]


def _records(start: int, n: int, labelled: bool = True) -> list[Any]:
    out = []
    for off in range(start, start + n):
        x = float(off % 10)
        value: dict[str, Any] = {"id": f"e{off}", "features": {"x": x}}
        if labelled:
            value["label"] = x > 4
        out.append(SimpleNamespace(partition=0, offset=off, value=value, timestamp=0.0))
    return out


def _service(policy: str, versions: list[ThresholdModel], min_samples: int = 20) -> OnlineService:
    it = iter(versions)
    serving = ServingPolicy(
        policy, "classification", load=lambda: next(it), min_samples=min_samples
    )
    return OnlineService(OnlineLearner("logreg"), None, serving=serving)


def _preds(outputs: list[Any]) -> list[dict[str, Any]]:
    return [v for c, _k, v in outputs if c == "predictions"]


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ModelSpecError, match="online, batch or best"):
        ServingPolicy("newest", "classification")


def test_online_policy_never_loads_a_batch_model() -> None:
    svc = _service("online", [ThresholdModel("v1", 4.0)])
    svc.start()
    preds = _preds(svc.process(_records(0, 50)))
    assert {p["source"] for p in preds} == {"online"} and svc.serving.version is None


def test_batch_policy_serves_the_promoted_version_from_the_next_batch_on() -> None:
    svc = _service("batch", [ThresholdModel("v1", 4.0), ThresholdModel("v2", 100.0)])
    before = _preds(svc.process(_records(0, 20)))  # nothing serving yet: the online model
    assert {p["source"] for p in before} == {"online"}
    svc.on_model_update({"model": "default", "job_id": "j1", "status": "promoted",
                         "model_version": "v1"})  # fmt: skip
    svc.serving.apply_pending(wait=5)
    first = _preds(svc.process(_records(20, 20)))
    assert {(p["model_version"], p["source"]) for p in first} == {("v1", "batch")}
    assert all(p["prediction"] == (float(i % 10) > 4) for i, p in enumerate(first, 20))
    svc.on_model_update({"model": "default", "job_id": "j2", "status": "promoted",
                         "model_version": "v2"})  # fmt: skip
    svc.serving.apply_pending(wait=5)
    second = _preds(svc.process(_records(40, 20)))
    assert {p["model_version"] for p in second} == {"v2"}
    assert {p["prediction"] for p in second} == {False}  # v2's threshold is above every x
    # Exactly one prediction per event through the swaps.
    ids = [p["id"] for p in before + first + second]
    assert ids == [f"e{i}" for i in range(60)]
    # The online model learned every label all along.
    assert svc.learner.n_learned == 60


def test_best_policy_switches_only_on_evidence_and_back_when_worse() -> None:
    good, bad = ThresholdModel("good", 4.0), ThresholdModel("bad", 100.0)
    svc = _service("best", [good, bad], min_samples=20)
    svc.start()
    # The online model starts knowing nothing; the batch version needs 20 scored records.
    preds = _preds(svc.process(_records(0, 20)))
    assert {p["source"] for p in preds} == {"online"}
    preds = _preds(svc.process(_records(20, 20)))
    assert {p["source"] for p in preds} == {"batch"}  # right on every record so far
    assert svc.status()["serving"] == "batch" and svc.status()["batch_version"] == "good"
    # A worse version is promoted: it starts over, loses to the online model, is not served.
    for _ in range(30):  # let the online model get good first
        svc.process(_records(40, 10))
    svc.on_model_update({"model": "default", "job_id": "j", "status": "promoted"})
    svc.serving.apply_pending(wait=5)
    for start in range(1000, 1100, 20):
        preds = _preds(svc.process(_records(start, 20)))
    assert {p["source"] for p in preds} == {"online"}
    assert svc.status()["paired"]["batch"] < svc.status()["paired"]["online"]


def test_late_labels_score_the_batch_model_too() -> None:
    svc = _service("best", [ThresholdModel("v1", 4.0)], min_samples=5)
    svc.start()
    svc.process(_records(0, 10, labelled=False))
    labels = [
        SimpleNamespace(partition=0, offset=10 + i,
                        value={"id": f"e{i}", "label": float(i % 10) > 4}, timestamp=0.0)
        for i in range(10)
    ]  # fmt: skip
    svc.process(labels)
    rolling = svc.serving.rolling()
    assert len(svc.serving.paired) == 10 and rolling is not None and rolling[1] == 1.0


def test_a_failed_load_keeps_serving_what_is_there() -> None:
    calls = iter([ThresholdModel("v1", 4.0)])

    def load() -> Any:
        try:
            return next(calls)
        except StopIteration:
            raise OSError("registry unreachable") from None

    serving = ServingPolicy("batch", "classification", load=load)
    serving.request_reload()
    assert serving.apply_pending(wait=5) and serving.version == "v1"
    serving.request_reload()
    assert not serving.apply_pending(wait=5) and serving.version == "v1"
