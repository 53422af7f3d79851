"""Scoring a model on a held-out slice, and the gate that decides promotion.

>>> gate({"accuracy": 0.91}, {"accuracy": 0.88}).promote
True
>>> gate({"mae": 2.0}, {"mae": 1.5}, metric="mae", higher_is_better=False).reason
'mae 2 vs serving 1.5 fails (needs <= 1.5)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainers.batch.datasets import Example

__all__ = [
    "LOWER_IS_BETTER",
    "GateDecision",
    "classification_metrics",
    "gate",
    "score",
    "trivial_metrics",
]

LOWER_IS_BETTER = frozenset({"mae", "rmse", "loss"})


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate replaces the serving model, and why (for the manifest and logs)."""

    promote: bool
    reason: str
    #: The trivial model's metrics on the same slice, when the candidate was held to them.
    trivial: dict[str, float] | None = field(default=None, repr=False)


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, float]:
    """Accuracy and macro F1 over the classes seen in either sequence.

    Examples
    --------
    >>> m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    >>> m["accuracy"], round(m["macro_f1"], 3)
    (0.75, 0.733)
    """
    n = len(y_true)
    if n == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0.0}
    correct = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p)
    f1s = []
    for c in {*y_true, *y_pred}:
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": correct / n, "macro_f1": sum(f1s) / len(f1s), "n": float(n)}


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """MAE and RMSE.

    Examples
    --------
    >>> regression_metrics([1.0, 2.0], [1.0, 4.0])
    {'mae': 1.0, 'rmse': 1.414..., 'n': 2.0}
    """
    n = len(y_true)
    if n == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "n": 0.0}
    errors = [float(p) - float(t) for t, p in zip(y_true, y_pred, strict=True)]
    return {
        "mae": sum(abs(e) for e in errors) / n,
        "rmse": math.sqrt(sum(e * e for e in errors) / n),
        "n": float(n),
    }


def score(model: Any, val_examples: Sequence[Example], task: str) -> dict[str, float]:
    """Metrics of ``model`` (anything with ``predict(inputs) -> (labels, probas)``).

    Parameters
    ----------
    model
        A :class:`trainers.batch.models.BatchModel` or any object with the same ``predict``.
    val_examples
        Held-out examples.
    task
        ``"classification"`` (accuracy, macro_f1) or ``"regression"`` (mae, rmse).

    Examples
    --------
    >>> class Always:
    ...     def predict(self, xs):
    ...         return ["a"] * len(xs), None
    >>> ex = [Example((0, i), 0.0, "t", None, y) for i, y in enumerate("aab")]
    >>> score(Always(), ex, "classification")["accuracy"]
    0.666...
    """
    inputs = [e.input for e in val_examples]
    preds, _ = model.predict(inputs) if inputs else ([], None)
    truth = [e.label for e in val_examples]
    if task == "regression":
        return regression_metrics(truth, preds)
    return classification_metrics(truth, preds)


def trivial_metrics(
    train_labels: Sequence[Any], val_examples: Sequence[Example], task: str
) -> dict[str, float]:
    """Metrics, on the held-out slice, of the trivial model: always the training data's
    majority class (classification) or its mean (regression). A first version must beat it.

    Examples
    --------
    >>> val = [Example((0, i), 0.0, "t", None, y) for i, y in enumerate("aab")]
    >>> trivial_metrics(["b", "b", "a"], val, "classification")["accuracy"]
    0.333...
    >>> trivial_metrics([1.0, 3.0], [Example((0, 0), 0.0, "t", None, 4.0)], "regression")["mae"]
    2.0
    """
    truth = [e.label for e in val_examples]
    if task == "regression":
        mean = sum(float(y) for y in train_labels) / len(train_labels) if train_labels else 0.0
        return regression_metrics(truth, [mean] * len(truth))
    counts: dict[Any, int] = {}
    for y in train_labels:
        counts[y] = counts.get(y, 0) + 1
    majority = max(counts, key=lambda y: counts[y]) if counts else None
    return classification_metrics(truth, [majority] * len(truth))


def gate(
    candidate_metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, float] | None,
    metric: str = "accuracy",
    margin: float = 0.0,
    higher_is_better: bool = True,
    min_samples: int = 0,
    trivial: Mapping[str, float] | None = None,
) -> GateDecision:
    """Promote the candidate when it beats the serving model by at least ``margin``.

    A tie passes at ``margin=0``: the candidate saw fresher data. With nothing serving yet,
    the candidate must do strictly better than the ``trivial`` model (the majority class,
    :func:`trivial_metrics`) on the same slice, when one is given; a missing or NaN candidate
    metric rejects; so does a held-out slice smaller than ``min_samples`` (its ``n``): too few
    records to judge.

    Examples
    --------
    >>> gate({"accuracy": 0.8}, None)
    GateDecision(promote=True, reason='no serving model to compare with')
    >>> gate({"accuracy": 0.25}, None, trivial={"accuracy": 0.5}).reason
    'no serving model; accuracy 0.25 vs the majority class 0.5 fails (needs > 0.5)'
    >>> gate({"accuracy": 0.8}, None, trivial={"accuracy": 0.5}).promote
    True
    >>> gate({"accuracy": 0.8}, {"accuracy": 0.79}, margin=0.02).promote
    False
    >>> gate({"accuracy": 1.0, "n": 6}, {"accuracy": 0.0, "n": 6}, min_samples=20)
    GateDecision(promote=False, reason='held-out slice of 6 records, fewer than 20 to judge by')
    """
    n = candidate_metrics.get("n")
    if n is not None and n < min_samples:
        return GateDecision(
            False, f"held-out slice of {n:g} records, fewer than {min_samples} to judge by"
        )
    value = candidate_metrics.get(metric)
    if value is None or math.isnan(float(value)):
        return GateDecision(False, f"candidate has no {metric} to compare on")
    if baseline_metrics is None:
        base = None if trivial is None else trivial.get(metric)
        if base is None or math.isnan(float(base)):
            return GateDecision(True, "no serving model to compare with")
        ok = float(value) > base if higher_is_better else float(value) < base
        what = "the majority class" if higher_is_better else "the mean"
        return GateDecision(
            ok, f"no serving model; {metric} {float(value):g} vs {what} {float(base):g} "
            f"{'passes' if ok else 'fails'} (needs {'>' if higher_is_better else '<'} "
            f"{float(base):g})", dict(trivial or {}),
        )  # fmt: skip
    base = baseline_metrics.get(metric)
    if base is None or math.isnan(float(base)):
        return GateDecision(True, f"serving model has no {metric} on this slice")
    value, base = float(value), float(base)
    if higher_is_better:
        needed = base + margin
        ok = value >= needed
        op = ">="
    else:
        needed = base - margin
        ok = value <= needed
        op = "<="
    verdict = "passes" if ok else "fails"
    return GateDecision(
        ok, f"{metric} {value:g} vs serving {base:g} {verdict} (needs {op} {needed:g})"
    )
