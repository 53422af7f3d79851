"""The online wing's typed seams: the records that go in, the outputs that come out.

* :class:`InputRecord` — what the processor reads of a record (where it is, its decoded
  value); the learner loop's records, faust's events and test namespaces all fit it;
* :class:`Output` — one record to produce: ``(contract, key, value)``;
* :class:`Rejected` — a valid record the model could not take, with the reason;
* :func:`prediction_record` — the one ``predictions`` value the learner and the predict-only
  replicas both build.

>>> out = Output("predictions", "e1", {"id": "e1"})
>>> out.contract, out.key
('predictions', 'e1')
>>> contract, key, value = out  # an Output is a tuple too
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = [
    "InputRecord",
    "Output",
    "Rejected",
    "has_input",
    "model_input",
    "model_key",
    "prediction_record",
]


class InputRecord(Protocol):
    """A decoded ``events`` record: partition, offset, its value and the broker timestamp."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> dict[str, Any]: ...


class Output(NamedTuple):
    """One record to produce: the contract (topic kind) it goes to, its key, its value."""

    contract: str
    key: str
    value: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    """A valid record that could not be processed: the loop dead-letters it with ``reason``."""

    partition: int
    offset: int
    reason: str


def has_input(event: dict[str, Any]) -> bool:
    """Whether an event carries something to answer (features or text), not a label alone.

    >>> has_input({"id": "a", "features": {}}), has_input({"id": "a", "label": 1})
    (True, False)
    """
    return "features" in event or "text" in event


def model_input(event: dict[str, Any]) -> Any:
    """The batch model's input for an event: its text if any, else its features.

    >>> model_input({"text": "hi", "features": {"x": 1}}), model_input({"features": {"x": 1}})
    ('hi', {'x': 1})
    """
    text = event.get("text")
    return text if text is not None else dict(event.get("features") or {})


def model_key(event: dict[str, Any], per_key: str) -> str | None:
    """The value of the ``per_key`` feature that selects the event's own model, or None.

    >>> model_key({"features": {"tenant": 7}}, "tenant"), model_key({"text": "x"}, "tenant")
    ('7', None)
    """
    if not per_key:
        return None
    value = (event.get("features") or {}).get(per_key)
    return None if value is None else str(value)


def prediction_record(
    event_id: str,
    model: str,
    version: str,
    source: str,
    answer: tuple[Any, dict[str, float] | None],
    started: float,
    now: float,
    key: str | None = None,
) -> dict[str, Any]:
    """A ``predictions`` value: the one shape the learner and the replicas both produce.

    >>> v = prediction_record("e1", "m", "online-3", "online", (True, {"True": 0.9}), 0.0, 5.0)
    >>> sorted(v)
    ['id', 'latency_ms', 'model', 'model_version', 'prediction', 'proba', 'source', 'ts']
    >>> v["prediction"], v["proba"]
    (True, {'True': 0.9})
    """
    value: dict[str, Any] = {
        "id": event_id,
        "prediction": answer[0],
        "model": model,
        "model_version": version,
        "source": source,
        "ts": now,
        "latency_ms": max(0.0, (time.perf_counter() - started) * 1000) if started else 0.0,
    }
    if answer[1] is not None:
        value["proba"] = answer[1]
    if key is not None:
        value["model_key"] = key
    return value
