"""Per-key models and the online model's own reaction to drift (no broker)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from river.datasets import synth

from trainers.drift.concept import ConceptDriftMonitor
from trainers.exceptions import ModelSpecError
from trainers.online.learner import OnlineLearner
from trainers.online.processor import OnlineService, SnapshotPredictor
from trainers.online.serving import ServingPolicy


def _rec(off: int, value: dict[str, Any]) -> Any:
    return SimpleNamespace(partition=0, offset=off, timestamp=0.0, value=value)


def _tenant_stream(n: int) -> list[Any]:
    """Two tenants whose labels mean opposite things for the same x."""
    out = []
    for i in range(n):
        tenant, x = ("a", "b")[i % 2], float((i // 2) % 10)
        label = x > 4 if tenant == "a" else x <= 4
        out.append(_rec(i, {"id": f"e{i}", "features": {"tenant": tenant, "x": x},
                            "label": label}))  # fmt: skip
    return out


def _accuracy(outputs: list[Any], records: list[Any]) -> float:
    labels = {r.value["id"]: r.value["label"] for r in records}
    preds = [v for c, _k, v in outputs if c == "predictions"]
    return sum(p["prediction"] == labels[p["id"]] for p in preds) / len(preds)


def test_per_key_models_learn_what_one_shared_model_cannot(tmp_path: Path) -> None:
    records = _tenant_stream(2000)
    shared = OnlineService(OnlineLearner("logreg"), None)
    keyed = OnlineService(OnlineLearner("logreg"), tmp_path / "m.ckpt", per_key="tenant")
    out_shared = shared.process(records)
    out_keyed = keyed.process(records)
    assert _accuracy(out_keyed[-500:], records) > 0.95 > 0.7 > _accuracy(out_shared[-500:], records)
    assert sorted(keyed.learners) == ["a", "b"]
    assert {v["model_key"] for c, _k, v in out_keyed if c == "predictions"} == {"a", "b"}
    assert sum(m.n_learned for m in keyed.learners.values()) == 2000
    # The per-key models survive a restart, and predictor replicas answer per key too.
    keyed.maybe_checkpoint(force=True)
    resumed = OnlineService(OnlineLearner("logreg"), tmp_path / "m.ckpt", per_key="tenant")
    assert {k: m.n_learned for k, m in resumed.learners.items()} == {"a": 1000, "b": 1000}
    replica = SnapshotPredictor(tmp_path / "m.ckpt", ServingPolicy("online", "classification"))
    probe = [_rec(0, {"id": "pa", "features": {"tenant": "a", "x": 9.0}}),
             _rec(1, {"id": "pb", "features": {"tenant": "b", "x": 9.0}})]  # fmt: skip
    assert [v["prediction"] for _c, _k, v in replica.process(probe)] == [True, False]


def test_keys_beyond_the_limit_share_the_default_model() -> None:
    svc = OnlineService(OnlineLearner("logreg"), None, per_key="tenant", max_keys=1)
    svc.process(_tenant_stream(10))
    assert list(svc.learners) == ["a"] and svc.overflow_keys == 5
    assert svc.learner.n_learned == 5  # tenant b learned into the shared model, not dropped


def _sea_flip(n: int, at: int) -> list[Any]:
    stream = synth.ConceptDriftStream(synth.SEA(seed=4, variant=0), synth.SEA(seed=4, variant=3),
                                      position=at, width=50, seed=4)  # fmt: skip
    return [_rec(i, {"id": f"s{i}", "features": x, "label": bool(y)})
            for i, (x, y) in enumerate(itertools.islice(stream, n))]  # fmt: skip


def test_a_fresh_model_takes_over_after_a_drift_when_it_is_better(tmp_path: Path) -> None:
    records = _sea_flip(8000, 4000)

    def run(reaction: str) -> tuple[OnlineService, float]:
        svc = OnlineService(OnlineLearner("logreg"), None, reaction=reaction,
                            monitor=ConceptDriftMonitor(min_samples=300))  # fmt: skip
        out = [o for o in svc.process(records) if o[0] == "predictions"]
        return svc, _accuracy(out[4000:5500], records)  # the change and the recovery

    plain, plain_acc = run("none")
    reacting, reacting_acc = run("fresh")
    assert reacting.reactions and "switched" in reacting.reactions[0]
    assert plain.reactions == [] and reacting_acc > plain_acc + 0.02
    # The switch is part of the checkpointed state.
    reacting.checkpoint_path = tmp_path / "r.ckpt"
    reacting.maybe_checkpoint(force=True)
    resumed = OnlineService(OnlineLearner("logreg"), tmp_path / "r.ckpt", reaction="fresh")
    assert resumed.learner.n_learned == reacting.learner.n_learned < 8000


def test_unknown_reaction_is_a_clear_error() -> None:
    with pytest.raises(ModelSpecError, match="none or fresh"):
        OnlineService(OnlineLearner("logreg"), None, reaction="restart")
