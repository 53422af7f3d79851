"""Honest first versions: with nothing serving, a candidate must beat the trivial model."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.unit.test_jobs import TAB, job, tabular_records
from trainers.batch.evaluation import gate
from trainers.batch.jobs import JobConfig, run_job
from trainers.batch.registry import ModelRegistry


def _noise(n: int) -> list[tuple[int, int, dict[str, Any]]]:
    """Labels unrelated to the features, 80% of them "lo": nothing to learn but the prior."""
    rng = random.Random(5)
    return [(0, i, {"id": f"n{i}", "ts": float(i),
                    "features": {"x": rng.uniform(-1, 1), "y": rng.uniform(-1, 1)},
                    "label": "lo" if rng.random() < 0.8 else "hi"})
            for i in range(n)]  # fmt: skip


def test_a_first_version_no_better_than_the_majority_class_is_rejected(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    recs = _noise(300)
    res = run_job(job("noise-1", "retrain", recs), recs, [], reg, "m", JobConfig.from_dict(TAB))
    assert res.status == "rejected", res
    assert reg.serving("m") is None
    v = reg.get("m", res.version or "")
    trivial = v.manifest["gate"]["trivial_metrics"]
    assert res.metrics["accuracy"] <= trivial["accuracy"]
    assert "majority class" in v.manifest["gate"]["reason"]


def test_a_first_version_that_learned_something_is_promoted(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    recs = tabular_records(240)
    res = run_job(job("tab-1", "retrain", recs), recs, [], reg, "m", JobConfig.from_dict(TAB))
    assert res.status == "promoted", res
    trivial = reg.get("m", res.version or "").manifest["gate"]["trivial_metrics"]
    assert res.metrics["accuracy"] > trivial["accuracy"]


def test_regression_first_versions_must_beat_the_mean() -> None:
    assert not gate({"mae": 2.0}, None, "mae", higher_is_better=False, trivial={"mae": 2.0}).promote
    assert gate({"mae": 1.0}, None, "mae", higher_is_better=False, trivial={"mae": 2.0}).promote
