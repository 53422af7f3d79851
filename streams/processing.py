"""The part of every agent that is not Kafka: decode a batch, dead-letter the bad records.

An agent receives a batch of raw messages, calls :func:`decode_batch`, hands the valid
records to a domain function (``retrieval`` or ``trainers``), then produces the outputs and the
dead letters and only then lets its offsets be committed. Everything here is pure and runs
without a broker:

>>> batch = [
...     RawRecord("events", 0, 10, b"e1", b'{"id": "e1", "features": {"x": 1}}'),
...     RawRecord("events", 0, 11, b"e2", b'{"id": "e2", "features": '),
... ]
>>> good, bad = decode_batch("events", batch, dlq_topic="events.dlq")
>>> [r.value["id"] for r in good]
['e1']
>>> bad[0].topic, bad[0].value["offset"], bad[0].value["error"][:27]
('events.dlq', 11, 'events: not valid JSON: une')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams import contracts
from streams.exceptions import ContractError

__all__ = ["DecodedRecord", "OutRecord", "RawRecord", "Rejection", "dead", "decode_batch"]


@dataclass(frozen=True)
class RawRecord:
    """A message as it came from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float = 0.0  # produce time (epoch seconds) from the record's timestamp


@dataclass(frozen=True)
class DecodedRecord:
    """A message that passed its contract."""

    partition: int
    offset: int
    value: dict[str, Any]
    timestamp: float = 0.0


@dataclass(frozen=True)
class OutRecord:
    """A record to produce: topic, key and a JSON-able value."""

    topic: str
    key: str | None
    value: Mapping[str, Any]

    def encoded(self) -> bytes:
        return contracts.encode(self.value)


@dataclass(frozen=True)
class Rejection:
    """A valid record the domain refused (e.g. a document over the chunk limit): the agent
    dead-letters it with ``reason`` and goes on."""

    partition: int
    offset: int
    reason: str


def decode_batch(
    contract: str,
    batch: Sequence[RawRecord],
    dlq_topic: str,
    limits: contracts.Limits = contracts.DEFAULT_LIMITS,
    max_raw_bytes: int = 64_000,
) -> tuple[list[DecodedRecord], list[OutRecord]]:
    """Split a batch into valid records and dead letters (never raises on bad input)."""
    good: list[DecodedRecord] = []
    bad: list[OutRecord] = []
    for rec in batch:
        try:
            value = contracts.decode(contract, rec.value, rec.key, limits)
        except ContractError as exc:
            bad.append(dead(rec, dlq_topic, str(exc), max_raw_bytes))
            continue
        except Exception as exc:  # a decoder bug must not stop the stream either
            bad.append(
                dead(rec, dlq_topic, f"{contract}: {type(exc).__name__}: {exc}", max_raw_bytes)
            )
            continue
        good.append(DecodedRecord(rec.partition, rec.offset, value, rec.timestamp))
    return good, bad


def dead(rec: RawRecord, dlq_topic: str, error: str, max_raw_bytes: int = 64_000) -> OutRecord:
    """The dead-letter output for one raw record."""
    value = contracts.dead_letter(
        rec.topic, rec.partition, rec.offset, rec.key, rec.value, error, max_raw_bytes
    )
    return OutRecord(dlq_topic, value["key"], value)
