"""Topics the project creates, with their partitions, replication and retention.

``docs`` is compacted (the latest version of each document is kept forever, a delete leaves a
tombstone-free ``op: delete`` record so replays stay correct); ``events`` is kept for as long
as configured (forever by default) because a full retrain replays the whole history.

>>> from streams.settings import TopicSettings
>>> specs = {s.name: s for s in topic_specs(TopicSettings(partitions=3))}
>>> specs["docs"].config["cleanup.policy"]
'compact'
>>> specs["events"].config["retention.ms"]
'-1'
>>> specs["events.dlq"].partitions
3
>>> specs["events"].config["max.message.bytes"]  # 16 MiB: a 10 MB record reaches the DLQ
'16777216'
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from streams.exceptions import TopicError
from streams.settings import TopicSettings

__all__ = ["MAX_MESSAGE_BYTES", "TopicSpec", "ensure_topics", "topic_specs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor and topic configs."""

    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


#: The largest record an input topic, a livelearn producer and the embedded broker accept
#: (Kafka's own default is 1 MB). Records up to this size reach the worker, which dead-letters
#: the ones over ``LIVELEARN_LIMITS__MAX_RECORD_BYTES`` with the reason; larger ones are refused
#: to their producer by Kafka.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """Every topic of the design, with a DLQ for each topic whose records are decoded: the
    inputs, and the control topics (jobs and model updates) that workers read."""
    p, r = topics.partitions, topics.replication
    keep = str(topics.output_retention_ms)
    big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    specs = [
        TopicSpec(
            topics.docs, p, r, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", **big}
        ),
        TopicSpec(topics.events, p, r, {"retention.ms": str(topics.events_retention_ms), **big}),
        TopicSpec(topics.queries, p, r, {"retention.ms": keep, **big}),
        TopicSpec(topics.predictions, p, r, {"retention.ms": keep}),
        TopicSpec(topics.answers, p, r, {"retention.ms": keep}),
        TopicSpec(topics.drift_alerts, 1, r, {"retention.ms": "-1"}),
        # Jobs and model updates are the audit trail of every version: kept forever.
        TopicSpec(topics.training_jobs, p, r, {"retention.ms": "-1"}),
        TopicSpec(topics.model_updates, 1, r, {"retention.ms": "-1"}),
        # Style examples are the generator's training history (a retrain replays them all).
        TopicSpec(topics.style_examples, p, r, {"retention.ms": "-1", **big}),
        TopicSpec(topics.feedback, p, r, {"retention.ms": keep, **big}),
    ]
    inputs = (topics.docs, topics.events, topics.queries, topics.style_examples, topics.feedback)
    for source in inputs:
        specs.append(TopicSpec(topics.dlq(source), p, r, {"retention.ms": keep}))
    # The audit trail (kept forever); drift-alerts.dlq: what the webhook sink could not deliver.
    for source in (topics.training_jobs, topics.model_updates, topics.drift_alerts):
        specs.append(TopicSpec(topics.dlq(source), 1, r, {"retention.ms": "-1"}))
    return specs


#: Errors of a cluster that is electing a controller or restarting a node: asked again.
_TRANSIENT = ("_DESTROY_BROKER", "_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "NOT_CONTROLLER",
              "REQUEST_TIMED_OUT", "BROKER_NOT_AVAILABLE", "LEADER_NOT_AVAILABLE")  # fmt: skip


def ensure_topics(
    admin: Any, specs: list[TopicSpec], timeout_s: float = 30.0, attempts: int = 4
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    ``admin`` is a ``confluent_kafka.admin.AdminClient``. Existing topics are left as they are
    (their partition count is checked: fewer partitions than configured is reported). A
    creation that fails for a reason that passes (a controller moving, a node restarting) is
    asked again, up to ``attempts`` times; any other failure is a :class:`TopicError`. A
    creation returns once the topics have a leader for every partition (a single broker, too,
    answers before its metadata has them: a client listing topics at once could miss one);
    on a cluster of several nodes, after a short wait more (:func:`_settle`), so that a
    client subscribing next finds the topics on every node.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    created: list[str] = []
    raced: list[str] = []  # created by someone else meanwhile: as new to the cluster
    for attempt in range(attempts):
        existing_md = admin.list_topics(timeout=timeout_s)
        existing = existing_md.topics
        wanted = [s for s in specs if s.name not in existing]
        for spec in specs:
            meta = existing.get(spec.name)
            if meta is not None and len(meta.partitions) < spec.partitions:
                raise TopicError(
                    f"topic {spec.name!r} has {len(meta.partitions)} partitions, fewer than the "
                    f"configured {spec.partitions}; add partitions with kafka-topics --alter "
                    "or configure LIVELEARN_TOPICS__PARTITIONS to match"
                )
        if not wanted:
            break
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication,
                    config=s.config,
                )
                for s in wanted
            ],  # fmt: skip
            operation_timeout=timeout_s,
        )
        retry = False
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):  # a concurrent creator won: fine
                    raced.append(name)
                    continue
                if attempt + 1 < attempts and any(t in str(exc) for t in _TRANSIENT):
                    log.warning("creating topic %s: %s; asking again", name, exc)
                    retry = True
                    continue
                raise TopicError(f"could not create topic {name!r}: {exc}") from exc
        if not retry:
            break
        time.sleep(1.0 + attempt)
    if created or raced:  # one node applies a new topic a moment after it answered too
        _settle(admin, created + raced, timeout_s, SETTLE_S if len(existing_md.brokers) > 1 else 0)
    return created


#: After creating topics on a cluster of several nodes: how long to let every node learn of
#: them before a client subscribes (see :func:`_settle`).
SETTLE_S = 1.0


def _settle(admin: Any, names: list[str], timeout_s: float, then_s: float = SETTLE_S) -> None:
    """Wait until ``names`` have a leader for every partition, then ``then_s`` more.

    Each node of a KRaft cluster applies a new topic on its own, milliseconds apart. A client
    that subscribes at once can ask one node, see the topic, then ask another (the group
    coordinator, for the assignor) that does not know it yet: the group is given nothing,
    and librdkafka 2.16 does not rebalance, as the topic's metadata it has does not change
    (measured: 4 leases of 10 made right after their topic's creation on a 3-node cluster).
    The lease also repairs that (:func:`streams.lease.orphaned`); other subscribers do not.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(
            name in topics
            and topics[name].error is None
            and topics[name].partitions
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            break
        time.sleep(0.1)
    time.sleep(then_s)
