"""What the system is doing: topics, consumer lag, model versions, the last alerts.

Used by ``livelearn status``, ``livelearn up`` and the tests; everything is read from Kafka and
the model registry, so it works from any machine that can reach them. When Kafka cannot answer,
:func:`try_snapshot` says why in words (:class:`KafkaProblem`) instead of raising a raw
``KafkaError``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from streams.kafka import admin_client, consumer
from streams.paths import StatePaths
from streams.settings import Settings

__all__ = [
    "GroupLag",
    "KafkaProblem",
    "Snapshot",
    "consumer_groups",
    "describe_error",
    "group_lag",
    "snapshot",
    "try_snapshot",
]


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

    from trainers.batch.registry import ModelRegistry

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
    registry = ModelRegistry(StatePaths.of(settings).registry)
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


# librdkafka error names (``KafkaError.name()``) by what they mean for someone asking for status.
_STARTING = {
    "NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "REPLICA_NOT_AVAILABLE",
    "NOT_ENOUGH_REPLICAS", "UNKNOWN_LEADER_EPOCH", "FENCED_LEADER_EPOCH", "OFFSET_NOT_AVAILABLE",
    "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "_WAIT_COORD",
    "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC",
}  # fmt: skip
_UNREACHABLE = {
    "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "REQUEST_TIMED_OUT",
    "BROKER_NOT_AVAILABLE", "_RESOLVE",
}  # fmt: skip
_DENIED = {
    "_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED", "_SSL",
}  # fmt: skip


@dataclass(frozen=True)
class KafkaProblem:
    """Why the Kafka side of the status could not be read, in words.

    ``state`` is ``starting`` (the broker answers but its partitions or group coordinators are
    still being elected or loaded: ask again in a few seconds), ``unreachable`` (no broker
    answers), ``denied`` (credentials or ACLs) or ``error`` (anything else).

    >>> from confluent_kafka import KafkaError, KafkaException
    >>> err = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, "Failed to get watermark offsets")
    >>> problem = describe_error(KafkaException(err), "localhost:9092")
    >>> problem.state
    'starting'
    >>> print(problem)
    Kafka at localhost:9092 is starting: its partitions are still electing leaders or loading
    (NOT_LEADER_FOR_PARTITION); try again in a few seconds
    """

    state: Literal["starting", "unreachable", "denied", "error"]
    bootstrap: str
    detail: str

    def __str__(self) -> str:
        where = f"Kafka at {self.bootstrap}"
        if self.state == "starting":
            return (f"{where} is starting: its partitions are still electing leaders or loading "
                    f"({self.detail}); try again in a few seconds")  # fmt: skip
        if self.state == "unreachable":
            return f"{where} is unreachable: no broker answers ({self.detail})"
        if self.state == "denied":
            return f"{where} refused us: check the SASL/SSL settings and ACLs ({self.detail})"
        return f"{where}: status unavailable ({self.detail})"


def describe_error(exc: BaseException, bootstrap: str) -> KafkaProblem:
    """What ``exc``, raised while reading the status, means (see :class:`KafkaProblem`).

    >>> describe_error(TimeoutError("no answer"), "b:9092").state
    'unreachable'
    >>> describe_error(ValueError("odd"), "b:9092").detail
    'ValueError: odd'
    """
    err: Any = exc.args[0] if exc.args else None
    name = getattr(err, "name", None)
    if callable(name):
        code = str(name())
        text = str(err.str()) if callable(getattr(err, "str", None)) else ""
        detail = f"{code}: {text}" if text and code not in _STARTING else code
        if code in _STARTING:
            return KafkaProblem("starting", bootstrap, detail)
        if code in _UNREACHABLE:
            return KafkaProblem("unreachable", bootstrap, detail)
        if code in _DENIED:
            return KafkaProblem("denied", bootstrap, detail)
        return KafkaProblem("error", bootstrap, detail)
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return KafkaProblem("unreachable", bootstrap, f"{type(exc).__name__}: {exc}")
    return KafkaProblem("error", bootstrap, f"{type(exc).__name__}: {exc}")


def try_snapshot(
    settings: Settings, bootstrap: str, last: int = 5, wait_s: float = 0.0
) -> Snapshot | KafkaProblem:
    """:func:`snapshot`, or why it cannot be read; a broker still ``starting`` is asked again
    for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return snapshot(settings, bootstrap, last)
        except Exception as exc:  # every failure becomes words; the caller decides what to do
            problem = describe_error(exc, bootstrap)
            if problem.state != "starting" or time.monotonic() >= deadline:
                return problem
            time.sleep(1.0)
