"""The conformance checks (trainers.checks) over every batch model kind and both online
processors, in the manner of river's estimator checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace as R
from typing import Any

import pytest
import torch

from trainers.batch.datasets import LabelEncoder
from trainers.batch.models import (
    FeatureVectorizer,
    TabularMLP,
    TextClassifier,
    apply_lora,
    save_tiny_encoder,
)
from trainers.checks import check_batch_model, check_processor
from trainers.online.learner import MODEL_SPECS, OnlineLearner
from trainers.online.processor import OnlineProcessor
from trainers.online.replica import SnapshotPredictor
from trainers.online.serving import ServingPolicy

TEXTS = [f"{w} order number {i} arrived" for i, w in enumerate(["late", "early"] * 6)]
ROWS = [{"x": float(i % 3), "y": i * 0.5, "c": "ab"[i % 2]} for i in range(12)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_encoder(tmp_path_factory.mktemp("bert"), hidden=32, max_positions=64)


def _tabular(task: str) -> tuple[Any, list[Any], list[Any]]:
    labels = (
        [i % 2 for i in range(12)] if task == "classification" else [i * 1.5 for i in range(12)]
    )
    enc = LabelEncoder.fit(labels) if task == "classification" else None
    return (
        TabularMLP.build(FeatureVectorizer.fit(ROWS), task, enc, (7.0, 5.0), hidden=8),
        ROWS,
        labels,
    )  # type: ignore[arg-type]


def _text(base: str, task: str, lora: bool) -> tuple[Any, list[Any], list[Any]]:
    labels = ["late", "early"] * 6 if task == "classification" else [float(i) for i in range(12)]
    enc = LabelEncoder.fit(labels) if task == "classification" else None
    model = TextClassifier.from_pretrained(base, task, enc, (5.0, 3.0), max_length=32)  # type: ignore[arg-type]
    if lora:
        model = apply_lora(model, r=4, alpha=8)
        model.merge()
    return model, TEXTS, labels


KINDS = ["tabular-classification", "tabular-regression", "text-classification",
         "text-regression", "text-lora-merged"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_batch_model_kind_conforms(kind: str, tiny_bert: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    if kind.startswith("tabular"):
        model, inputs, labels = _tabular(kind.split("-")[1])
    else:
        task = "regression" if kind == "text-regression" else "classification"
        model, inputs, labels = _text(tiny_bert, task, lora=kind == "text-lora-merged")
    check_batch_model(model, inputs, labels, tmp_path / "saved")


def _records(task: str, n: int = 60) -> list[Any]:
    out = []
    for i in range(n):
        value: dict[str, Any] = {"id": f"e{i}", "features": {"x": float(i % 4), "z": i % 2}}
        if i % 3:  # some labelled at once, some later, some never
            value["label"] = (i % 4 >= 2) if task == "classification" else float(i % 4) * 2
        out.append(R(partition=i % 2, offset=i // 2, value=value, timestamp=0.0))
    out.append(R(partition=0, offset=n // 2, value={"id": "e0", "label": False if task ==
              "classification" else 0.0}, timestamp=0.0))  # fmt: skip
    return out


PROBES = [R(partition=0, offset=0, value={"id": f"p{i}", "features": {"x": float(i), "z": 1}},
            timestamp=0.0) for i in range(4)]  # fmt: skip


@pytest.mark.parametrize("spec", sorted(MODEL_SPECS))
def test_the_learning_processor_conforms_for_every_online_model(spec: str, tmp_path: Path) -> None:
    task = MODEL_SPECS[spec][1]
    path = tmp_path / "m.ckpt"

    def make() -> OnlineProcessor:
        return OnlineProcessor(OnlineLearner(spec, task), path, every_records=10**9)

    check_processor(make, _records(task), PROBES, learns=True)


@pytest.mark.parametrize("spec", ["logreg", "linreg"])
def test_the_predict_only_replica_conforms(spec: str, tmp_path: Path) -> None:
    task = MODEL_SPECS[spec][1]
    path = tmp_path / "m.ckpt"
    learner = OnlineProcessor(OnlineLearner(spec, task), path)
    learner.process(_records(task))
    assert learner.maybe_checkpoint(force=True)
    make: Callable[[], SnapshotPredictor] = lambda: SnapshotPredictor(  # noqa: E731
        path, ServingPolicy("online", task)
    )
    records = [r for r in _records(task, 20) if "features" in r.value]
    check_processor(make, records, PROBES, learns=False)
