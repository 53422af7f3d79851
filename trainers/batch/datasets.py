"""Training examples from replayed ``events`` records: join, split by time, replay, labels.

The job runner in ``streams`` replays a range of Kafka offsets and hands the records here as
``(partition, offset, value)`` triples; nothing in this module knows about Kafka.

>>> records = [
...     (0, 10, {"id": "a", "ts": 1.0, "text": "good movie", "label": "pos"}),
...     (0, 11, {"id": "b", "ts": 2.0, "text": "awful plot"}),  # no label yet
...     (1, 5, {"id": "b", "label": "neg"}),  # late label joins the earlier text
... ]
>>> [(e.offset_key, e.text, e.label) for e in examples_from_records(records)]
[((0, 10), 'good movie', 'pos'), ((1, 5), 'awful plot', 'neg')]
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainers.exceptions import TrainingJobError

__all__ = [
    "Example",
    "LabelEncoder",
    "examples_from_records",
    "replay_sample",
    "split_at_change",
    "split_by_time",
]


@dataclass(frozen=True)
class Example:
    """One labelled training example.

    Parameters
    ----------
    offset_key
        ``(partition, offset)`` of the record that completed the example (the labelled one).
    ts
        Event time in epoch seconds (the record's ``ts``, else the earlier record's, else 0).
    text
        Input text, if the event had one.
    features
        Input features, if the event had them.
    label
        The target: a class (str, number, bool) or a number for regression.

    Examples
    --------
    >>> Example((0, 3), 1.5, "hi", None, "greeting").input
    'hi'
    """

    offset_key: tuple[int, int]
    ts: float
    text: str | None
    features: dict[str, float | str] | None
    label: Any

    @property
    def input(self) -> str | dict[str, float | str]:
        """The model input: the text if any, else the features."""
        if self.text is not None:
            return self.text
        return dict(self.features or {})


def examples_from_records(records: Iterable[tuple[int, int, Mapping[str, Any]]]) -> list[Example]:
    """Labelled examples from ``events`` records, in the order they were completed.

    Records without a label are remembered by ``id`` so that a later label-only record joins
    their text/features. A record id labelled twice (a replay, a corrected label) keeps the
    last one, so replaying a range changes nothing. Label-only records whose input was never
    seen are skipped: there is nothing to learn from.

    Parameters
    ----------
    records
        ``(partition, offset, value)`` with ``value`` an ``events`` contract dict.

    Returns
    -------
    list[Example]

    Examples
    --------
    >>> recs = [(0, 1, {"id": "x", "features": {"f": 1.0}, "label": 1}),
    ...         (0, 2, {"id": "y", "label": 0})]  # label for an unseen id: skipped
    >>> [e.label for e in examples_from_records(recs)]
    [1]
    """
    pending: dict[str, Mapping[str, Any]] = {}
    done: dict[str, Example] = {}
    for partition, offset, value in records:
        rid = str(value.get("id", ""))
        if not rid:
            continue
        has_input = value.get("text") is not None or value.get("features") is not None
        if "label" not in value or value.get("label") is None:
            if has_input:
                pending[rid] = value
            continue
        source = value if has_input else pending.get(rid)
        if source is None:
            source = _input_of(done.get(rid))
            if source is None:
                continue
        ts = value.get("ts", source.get("ts", 0.0))
        features = source.get("features")
        done.pop(rid, None)  # keep completion order of the latest label
        done[rid] = Example(
            offset_key=(int(partition), int(offset)),
            ts=float(ts if ts is not None else 0.0),
            text=source.get("text"),
            features=dict(features) if features is not None else None,
            label=value["label"],
        )
    return list(done.values())


def _input_of(example: Example | None) -> dict[str, Any] | None:
    if example is None:
        return None
    return {"ts": example.ts, "text": example.text, "features": example.features}


def _time_key(e: Example) -> tuple[float, int, int]:
    return (e.ts, e.offset_key[1], e.offset_key[0])


def split_by_time(
    examples: Sequence[Example], val_fraction: float = 0.2
) -> tuple[list[Example], list[Example]]:
    """Hold out the most recent ``val_fraction`` of examples (by ts, then offset).

    Evaluating on the newest slice asks the question that matters for a streaming model:
    how well does it do on the data that is arriving now.

    Parameters
    ----------
    examples
        Labelled examples.
    val_fraction
        Share held out, in ``[0, 1)``; at least one example is held out when there are two
        or more and the fraction is positive.

    Returns
    -------
    tuple[list[Example], list[Example]]
        ``(train, val)``, each sorted by time.

    Examples
    --------
    >>> ex = [Example((0, i), float(10 - i), None, {"x": i}, i % 2) for i in range(5)]
    >>> train, val = split_by_time(ex, 0.4)
    >>> [e.ts for e in train], [e.ts for e in val]
    ([6.0, 7.0, 8.0], [9.0, 10.0])
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TrainingJobError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(examples, key=_time_key)
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0 and len(ordered) >= 2:
        n_val = max(1, n_val)
    n_train = len(ordered) - n_val
    return ordered[:n_train], ordered[n_train:]


def split_at_change(
    examples: Sequence[Example],
    since: Mapping[int, int],
    val_fraction: float = 0.2,
    weight: float = 3.0,
    max_repeats: int = 20,
) -> tuple[list[Example], list[Example]]:
    """The split of a retrain decided on a drift noticed at offsets ``since``.

    The history before the change outnumbers what came after it, and the newest slice of the
    whole history (:func:`split_by_time`) would hold most of the new concept out of training.
    Here the newest ``val_fraction`` of the examples *after* the change is held out, and the
    rest of them is repeated (at most ``max_repeats`` times) so that the new concept weighs
    ``weight`` times as much as the history: where the two disagree, the new one wins, and
    the history still shapes what the change left alone.

    Returns
    -------
    tuple[list[Example], list[Example]]
        ``(train, val)``, each sorted by time (``train`` with the repeats).

    Examples
    --------
    >>> ex = [Example((0, i), float(i), None, {"x": i}, i % 2) for i in range(10)]
    >>> train, val = split_at_change(ex, {0: 6}, 0.5)
    >>> [e.offset_key[1] for e in val], len(train), sum(e.offset_key[1] >= 6 for e in train)
    ([8, 9], 24, 18)
    """

    def after(e: Example) -> bool:
        partition, offset = e.offset_key
        return partition in since and offset >= since[partition]

    recent = [e for e in examples if after(e)]
    if not recent:
        return split_by_time(examples, val_fraction)
    history = [e for e in examples if not after(e)]
    recent_train, val = split_by_time(recent, val_fraction)
    repeats = min(max_repeats, max(1, round(weight * len(history) / max(1, len(recent_train)))))
    return sorted(history + recent_train * repeats, key=_time_key), val


def replay_sample(old: Sequence[Example], n: int, seed: int) -> list[Example]:
    """A seeded sample of ``n`` old examples, mixed into a fine-tune against forgetting.

    Parameters
    ----------
    old
        Examples the serving model was trained on.
    n
        How many to draw (all of them when ``n >= len(old)``).
    seed
        Random seed; the same seed gives the same sample.

    Returns
    -------
    list[Example]
        The sample, in time order.

    Examples
    --------
    >>> old = [Example((0, i), float(i), None, {"x": i}, 0) for i in range(10)]
    >>> [e.offset_key[1] for e in replay_sample(old, 3, seed=1)] == [
    ...     e.offset_key[1] for e in replay_sample(old, 3, seed=1)]
    True
    >>> len(replay_sample(old, 50, seed=1))
    10
    """
    if n <= 0 or not old:
        return []
    ordered = sorted(old, key=_time_key)
    if n >= len(ordered):
        return ordered
    picked = sorted(random.Random(seed).sample(range(len(ordered)), n))
    return [ordered[i] for i in picked]


class LabelEncoder:
    """Maps class labels to ids in a stable order (saved in the version's manifest).

    The order is sorted by type name, then value, so the same set of labels always gives
    the same ids whatever order they arrived in.

    Parameters
    ----------
    classes
        Known classes, already in id order.

    Examples
    --------
    >>> enc = LabelEncoder.fit(["b", "a", "b", "c"])
    >>> enc.classes, enc.encode(["c", "a"]), enc.decode([1])
    (['a', 'b', 'c'], [2, 0], ['b'])
    >>> LabelEncoder.from_dict(enc.to_dict()).classes
    ['a', 'b', 'c']
    """

    def __init__(self, classes: Sequence[Hashable]) -> None:
        self.classes: list[Any] = list(classes)
        self._index = {c: i for i, c in enumerate(self.classes)}

    @classmethod
    def fit(cls, labels: Iterable[Hashable]) -> LabelEncoder:
        """Encoder for the distinct ``labels``."""
        distinct = set(labels)
        return cls(sorted(distinct, key=lambda v: (type(v).__name__, v)))

    def __len__(self) -> int:
        return len(self.classes)

    def unknown(self, labels: Iterable[Hashable]) -> list[Any]:
        """Labels this encoder has no id for."""
        return sorted({x for x in labels if x not in self._index}, key=str)

    def encode(self, labels: Iterable[Hashable]) -> list[int]:
        """Class ids of ``labels``; unknown labels raise :class:`TrainingJobError`."""
        try:
            return [self._index[x] for x in labels]
        except KeyError as exc:
            raise TrainingJobError(
                f"label {exc.args[0]!r} is not one of the model's classes {self.classes}; "
                "a new class needs a retrain job, not a fine-tune"
            ) from None

    def decode(self, ids: Iterable[int]) -> list[Any]:
        """Labels of class ids."""
        return [self.classes[int(i)] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelEncoder:
        """Inverse of :meth:`to_dict`."""
        return cls(d["classes"])
