"""Conformance checks every model kind and every online processor must pass.

In the manner of river's ``utils.estimator_checks``: one set of checks, run by the test suite
over every batch model kind (:func:`check_batch_model`) and both online processors
(:func:`check_processor`), and usable by anyone adding a kind of their own. Each check
raises ``AssertionError`` with what went wrong; nothing here needs a broker.

>>> import torch
>>> from trainers.batch.datasets import LabelEncoder
>>> from trainers.batch.models import FeatureVectorizer, TabularMLP
>>> _ = torch.manual_seed(0)
>>> rows = [{"x": float(i % 3), "c": "ab"[i % 2]} for i in range(12)]
>>> model = TabularMLP.build(FeatureVectorizer.fit(rows), "classification",
...                          LabelEncoder.fit([0, 1]), hidden=8)
>>> import tempfile
>>> check_batch_model(model, rows, [i % 2 for i in range(12)], tempfile.mkdtemp())
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from trainers.batch.models import BatchModel, load_model
from trainers.online.records import has_input

__all__ = ["check_batch_model", "check_processor", "odd_inputs"]


def odd_inputs(example: Any) -> list[Any]:
    """Inputs a model has never seen the like of, built from one of its own inputs: unknown
    and missing feature keys, a string where a number was; an empty and a very long text."""
    if isinstance(example, str):
        return ["", "word " * 2000, "ünïcödé ✓ 🙂"]
    odd = {f"never-seen-{i}": float(i) for i in range(3)}
    first = next(iter(example), None)
    changed = dict(example)
    if first is not None:
        changed[first] = "a string now"
    return [odd, {}, changed, {**example, **odd}]


def _check_answers(model: BatchModel, inputs: Sequence[Any], what: str) -> tuple[list[Any], Any]:
    labels, probas = model.predict(list(inputs))
    assert len(labels) == len(inputs), f"{what}: {len(labels)} predictions for {len(inputs)}"
    if model.task == "classification":
        assert model.labels is not None
        classes = {str(c) for c in model.labels.classes}
        assert probas is not None and len(probas) == len(inputs), f"{what}: probas missing"
        for y, p in zip(labels, probas, strict=True):
            assert set(p) == classes, f"{what}: proba keys {sorted(p)} != classes {classes}"
            assert abs(sum(p.values()) - 1.0) < 1e-4, f"{what}: probas sum to {sum(p.values())}"
            assert y in model.labels.classes, f"{what}: {y!r} is not a class"
    else:
        assert probas is None, f"{what}: a regressor gave probabilities"
        assert all(math.isfinite(float(y)) for y in labels), f"{what}: non-finite prediction"
    return labels, probas


def _same(a: tuple[list[Any], Any], b: tuple[list[Any], Any], what: str) -> None:
    assert a[0] == b[0] or all(
        math.isclose(float(x), float(y), rel_tol=1e-4, abs_tol=1e-5)
        for x, y in zip(a[0], b[0], strict=True)
    ), f"{what}: predictions differ: {a[0][:5]} vs {b[0][:5]}"
    if a[1] is not None:
        for p, q in zip(a[1], b[1], strict=True):
            assert all(abs(p[k] - q[k]) < 1e-4 for k in p), f"{what}: probabilities differ"


def check_batch_model(
    model: BatchModel, inputs: Sequence[Any], labels: Sequence[Any], directory: str | Path
) -> None:
    """Every batch model kind: shapes, determinism, a training step, save/load, odd inputs.

    ``inputs`` and ``labels`` are a few training examples of the model's own kind.
    """
    name = type(model).__name__
    first = _check_answers(model, inputs, f"{name} predict")
    _same(first, model.predict(list(inputs)), f"{name} predicting twice")
    # One training step: a finite loss whose gradients reach the weights.
    model.module.train()
    batch = model.collate(model.encode(list(inputs)))
    loss = model.loss(model.forward(batch), model.encode_targets(list(labels)))
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    loss.backward()
    grads = [p.grad for p in model.module.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), f"{name}: no gradient"
    model.module.zero_grad()
    model.module.eval()
    # save → load gives the same answers, in a model of the same kind.
    before = model.predict(list(inputs))
    model.save(directory)
    loaded = load_model(directory)
    assert type(loaded) is type(model), f"{name}: loaded as {type(loaded).__name__}"
    _same(before, loaded.predict(list(inputs)), f"{name} save/load")
    # Inputs unlike anything seen in training are answered, not raised on.
    _check_answers(loaded, odd_inputs(inputs[0]), f"{name} odd inputs")


def check_processor(
    make: Callable[[], Any],
    records: Sequence[Any],
    probes: Sequence[Any],
    learns: bool,
    model_name: str = "default",
) -> None:
    """Both online processors: shapes, state round trip, replay idempotence, odd inputs.

    ``make()`` returns a processor reading (or, when ``learns``, resuming from and writing)
    the same state file each time; ``records`` have partitions and offsets, ``probes``
    are events with an input and no label. A learning processor has consumed nothing yet.
    """
    proc = make()
    outputs = proc.process(list(records))
    predicted = [o.value["id"] for o in outputs if o.contract == "predictions"]
    wanted = [r.value["id"] for r in records if has_input(r.value)]
    if learns:
        assert not proc.take_rejected(), "the learner set aside a record of its own kind"
    assert sorted(predicted) == sorted(wanted), f"predicted {predicted[:5]}, wanted {wanted[:5]}"
    for o in outputs:
        assert isinstance(o.contract, str) and isinstance(o.key, str), f"untyped output {o}"
        if o.contract == "predictions":
            assert {"id", "prediction", "model", "model_version", "source", "ts"} <= set(o.value)
            assert o.value["model"] == model_name
    if learns:
        learned = proc.learner.n_learned
        assert proc.maybe_checkpoint(force=True)
    answers = _probe(proc, probes)
    # The state round trip: a new processor from the saved state answers the same.
    again = make()
    assert _probe(again, probes) == answers, "answers changed across the state round trip"
    # A replay of what the state has seen changes nothing.
    replayed = again.process(list(records))
    if learns:
        assert again.learner.n_learned == learned, "a replayed record was learned twice"
        assert again.offsets() == proc.offsets()
        assert not [o for o in replayed if o.contract == "predictions"], "replay re-answered"
    else:
        assert sorted(o.value["id"] for o in replayed) == sorted(wanted)
    assert _probe(again, probes) == answers, "answers changed after a replay"
    # Odd inputs are answered (or, for the learner, set aside), never raised on.
    last = max((r.offset for r in records), default=-1)
    base = next((p.value for p in probes if "features" in p.value), None)
    if base is not None:
        odd = [_like(records[0], last + 1 + i, {"id": f"odd-{i}", "features": f})
               for i, f in enumerate(odd_inputs(base["features"]))]  # fmt: skip
        out = again.process(odd)
        got = {o.value["id"] for o in out if o.contract == "predictions"}
        rejected = {r.offset for r in again.take_rejected()} if learns else set()
        for rec in odd:
            assert rec.value["id"] in got or rec.offset in rejected, f"{rec.value} dropped"
    pickle.dumps([o.value for o in outputs])  # outputs are plain data


def _like(rec: Any, offset: int, value: dict[str, Any]) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(partition=rec.partition, offset=offset, value=value, timestamp=0.0)


def _probe(proc: Any, probes: Sequence[Any]) -> list[Any]:
    """The processor's answers to ``probes``, without it learning or moving its offsets."""
    if hasattr(proc, "maybe_checkpoint"):  # the learner: ask its models directly
        out = []
        for p in probes:
            learner = proc._learner(proc._key(p.value))
            pred = learner.predict(learner.features(p.value))
            out.append((pred.prediction, pred.proba))
        return out
    return [(o.value["prediction"], o.value.get("proba")) for o in proc.process(list(probes))]
