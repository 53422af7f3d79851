"""What the system is doing: topics, consumer lag, model versions, the last alerts.

Used by ``livelearn status`` and by the tests; everything is read from Kafka and the model
registry, so it works from any machine that can reach them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.kafka import admin_client, consumer
from streams.settings import Settings

__all__ = ["GroupLag", "Snapshot", "consumer_groups", "group_lag", "snapshot"]


def consumer_groups(settings: Settings) -> dict[str, str]:
    """The project's consumer groups and the topic each one consumes (lag is read there)."""
    p, t = settings.kafka.group_prefix, settings.topics
    return {
        f"{p}-worker": t.docs,  # faust: docs indexer and queries agents
        f"{p}-learner-{settings.models.name}": t.events,  # mirrors the learner's checkpoint
        f"{p}-trainers": t.training_jobs,
    }


@dataclass(frozen=True)
class GroupLag:
    """A consumer group's committed position on one topic."""

    group: str
    topic: str
    lag: int | None  # None: the group has committed nothing yet
    end: int  # records in the topic (sum of high watermarks)
    committed: dict[int, int] = field(default_factory=dict)  # partition → next offset


def group_lag(settings: Settings, bootstrap: str, group: str, topic: str) -> GroupLag:
    """Records of ``topic`` that ``group`` has not committed yet."""
    from confluent_kafka import TopicPartition

    # A consumer with the group's id reads its commits without joining it. The admin API's
    # ListConsumerGroupOffsets is not used: librdkafka 2.16 crashes the process (SIGSEGV in
    # rd_kafka_cgrp_op) or times out when the group coordinator is still loading, as it is
    # right after a broker starts or restarts.
    c = consumer(settings, bootstrap, group)
    try:
        n = len(c.list_topics(topic, timeout=10).topics[topic].partitions)
        parts = _committed(c, [TopicPartition(topic, i) for i in range(n)])
        committed = {tp.partition: tp.offset for tp in parts if tp.offset >= 0}
        lag, end = 0, 0
        for i in range(n):
            _low, high = c.get_watermark_offsets(TopicPartition(topic, i), timeout=10)
            end += high
            lag += max(0, high - committed.get(i, 0))
        return GroupLag(group, topic, lag if committed or end == 0 else None, end, committed)
    finally:
        c.close()


def _committed(c: Any, parts: list[Any], timeout_s: float = 30.0) -> list[Any]:
    """``c.committed(parts)``, retried while the group's coordinator moves or loads."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE}  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result: list[Any] = c.committed(parts, timeout=max(1.0, deadline - time.monotonic()))
            return result
        except KafkaException as exc:
            if exc.args[0].code() not in transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _last(settings: Settings, bootstrap: str, topic: str, n: int) -> list[dict[str, Any]]:
    """The last ``n`` JSON records of ``topic`` (over all partitions, by timestamp)."""
    from confluent_kafka import TopicPartition

    c = consumer(settings, bootstrap, None)
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts = []
        for i in md.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, i), timeout=10)
            if high > low:
                parts.append(TopicPartition(topic, i, max(low, high - n)))
        if not parts:
            return []
        c.assign(parts)
        want = n * len(parts)
        out: list[tuple[int, dict[str, Any]]] = []
        misses = 0
        while len(out) < want and misses < 4:
            msgs = c.consume(500, 0.5)
            if not msgs:
                misses += 1
                continue
            for m in msgs:
                if m.error() is None:
                    try:
                        value = orjson.loads(m.value() or b"null")
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(value, dict):
                        out.append((m.timestamp()[1], value))
        out.sort(key=lambda item: item[0])
        return [v for _, v in out[-n:]]
    finally:
        c.close()


@dataclass
class Snapshot:
    """Everything ``livelearn status`` shows."""

    bootstrap: str
    topics: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (parts, records)
    lags: list[GroupLag] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    serving: str | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)


def snapshot(settings: Settings, bootstrap: str, last: int = 5) -> Snapshot:
    """Read topics, lag, registry versions and the last alerts and model updates."""
    from confluent_kafka import TopicPartition

    from trainers.registry import ModelRegistry

    snap = Snapshot(bootstrap)
    admin = admin_client(settings, bootstrap)
    md = admin.list_topics(timeout=10)
    ours = set(settings.topics.by_contract().values())
    ours |= {settings.topics.dlq(t) for t in ours}
    c = consumer(settings, bootstrap, None)
    try:
        for name in sorted(ours & set(md.topics)):
            parts = md.topics[name].partitions
            total = 0
            for i in parts:
                low, high = c.get_watermark_offsets(TopicPartition(name, i), timeout=10)
                total += high - low
            snap.topics[name] = (len(parts), total)
    finally:
        c.close()
    for group, topic in consumer_groups(settings).items():
        if topic in md.topics:
            snap.lags.append(group_lag(settings, bootstrap, group, topic))
    registry = ModelRegistry(settings.data_dir / "registry")
    serving = registry.serving(settings.models.name)
    snap.serving = serving.version if serving is not None else None
    for v in registry.list(settings.models.name)[-last:]:
        snap.versions.append({"version": v.version, "status": v.status,
                              "kind": v.manifest.get("kind"), "metrics": v.metrics})  # fmt: skip
    if settings.topics.drift_alerts in md.topics:
        snap.alerts = _last(settings, bootstrap, settings.topics.drift_alerts, last)
    if settings.topics.model_updates in md.topics:
        snap.updates = _last(settings, bootstrap, settings.topics.model_updates, last)
    return snap
