"""The learner's lease: exclusive ownership of a model's learning through a consumer group on a
one-partition topic (the member assigned the partition is the learner), and the rejoins that
keep a lease from going unheld for good: a worker outside the group, or a group that holds the
partition nowhere.

The second is a race of a cluster that has just created the topic: the group's leader ran the
assignor on metadata from a node that did not know the topic yet, and assigned nobody.
librdkafka 2.16 rejoins only when the subscription's metadata *changes*, and it had already
seen the topic elsewhere, so the group stayed steady with the partition unassigned; on a fresh
three-node cluster this happened to one lease in four (nothing was learned for the whole test).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from streams import metrics
from streams.kafka import (
    admin_client,
    consumer,
)
from streams.settings import Settings
from streams.topics import TopicSpec, ensure_topics

__all__ = ["Lease", "orphaned"]

log = logging.getLogger("streams.learner_worker")  # where operators grep for lease events


def orphaned(group: Any, topic: str) -> bool:
    """Whether a described consumer group is steady yet holds no partition of ``topic``.

    ``group`` is a ``confluent_kafka.admin.ConsumerGroupDescription``. A group that is
    rebalancing, empty or unknown is not orphaned (the rebalance is the cure); a stable group
    whose members were all assigned nothing of ``topic`` is.

    >>> from confluent_kafka import ConsumerGroupState, TopicPartition
    >>> from types import SimpleNamespace as NS
    >>> member = lambda *tps: NS(assignment=NS(topic_partitions=list(tps)))
    >>> group = lambda state, *members: NS(state=state, members=list(members))
    >>> orphaned(group(ConsumerGroupState.STABLE, member(), member()), "lease")
    True
    >>> orphaned(group(ConsumerGroupState.STABLE, member(), member(TopicPartition("lease", 0))),
    ...          "lease")
    False
    >>> orphaned(group(ConsumerGroupState.COMPLETING_REBALANCING, member()), "lease")
    False
    >>> orphaned(group(ConsumerGroupState.STABLE), "lease")  # no members: nobody to hold it
    False
    """
    from confluent_kafka import ConsumerGroupState

    if group.state != ConsumerGroupState.STABLE or not group.members:
        return False
    held = (tp.topic for m in group.members for tp in m.assignment.topic_partitions)
    return topic not in held


def _close_quietly(c: Any) -> None:
    try:
        c.close()
    except Exception as exc:
        log.warning("closing a replaced lease consumer: %s", exc)


class Lease:
    """Exclusive ownership of ``name`` through a consumer group on a one-partition topic."""

    #: Seconds between two looks at the group by a member that does not hold the lease.
    ORPHAN_CHECK_S = 5.0

    def __init__(self, settings: Settings, bootstrap: str, name: str) -> None:
        self.topic = f"{settings.kafka.group_prefix}.lease.{name}"
        self.group = f"{settings.kafka.group_prefix}-lease-{name}"
        self.name = name
        self._admin = admin_client(settings, bootstrap)  # also describes the group (orphans)
        ensure_topics(self._admin, [TopicSpec(self.topic, 1, settings.topics.replication)])
        self.held = False
        self._settings, self._bootstrap = settings, bootstrap
        # Out of the group this long (no member id: a join that never completes, as librdkafka
        # can leave it after the broker restarted): the consumer is made again.
        self.rejoin_after_s = max(30.0, 3 * settings.kafka.session_timeout_ms / 1000)
        self._outside_since: float | None = None
        # A member of a group that holds the partition nowhere (see the module's docstring):
        # the group is described every ORPHAN_CHECK_S, and seen orphaned twice in a row, rejoined.
        self._next_check = time.monotonic() + self.ORPHAN_CHECK_S
        self._orphan_seen = False
        self.rejoins = 0
        self._consumer = self._join()

    def _join(self) -> Any:
        c = consumer(
            self._settings,
            self._bootstrap,
            self.group,
            **{
                "max.poll.interval.ms": 300_000,
                "partition.assignment.strategy": "range",
            },
        )
        c.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )  # fmt: skip
        return c

    def _on_assign(self, c: Any, parts: list[Any]) -> None:
        if c is not self._consumer:  # a replaced consumer's late callback
            return
        self.held = bool(parts)
        metrics.LEASE_HELD.labels(self.name).set(int(self.held))
        if self.held:
            log.info("lease %s acquired: this worker is the learner", self.topic)

    def _on_revoke(self, c: Any, _parts: list[Any]) -> None:
        if c is not self._consumer:
            return
        if self.held:
            log.warning("lease %s lost: stop learning", self.topic)
            metrics.LEASE_LOST.labels(self.name).inc()
        self.held = False
        metrics.LEASE_HELD.labels(self.name).set(0)

    def poll(self) -> bool:
        """Keep the group membership alive; return whether the lease is held.

        A worker that is not even a member of the lease's group for ``rejoin_after_s`` (its
        join stuck after a broker restart) makes its consumer again, so the learner cannot
        stop for good; a healthy standby is a member and is left alone.
        """
        self._consumer.poll(0)
        if self.held:
            self._outside_since = None
            return True
        now = time.monotonic()
        if self._consumer.memberid():
            self._outside_since = None
            if now >= self._next_check:
                self._next_check = now + self.ORPHAN_CHECK_S
                if self._check_orphaned():
                    log.warning("lease %s: its group holds the partition nowhere; joining "
                                "again", self.topic)  # fmt: skip
                    self._rejoin()
        elif self._outside_since is None:
            self._outside_since = now
        elif now - self._outside_since >= self.rejoin_after_s:
            log.warning("lease %s: not in its group for %.0f s; joining again", self.topic,
                        now - self._outside_since)  # fmt: skip
            self._rejoin()
        return self.held

    def _check_orphaned(self) -> bool:
        """True the second time in a row the group is seen holding the partition nowhere (once
        could be the moment between an assignment and its callback)."""
        from confluent_kafka import KafkaException

        group = self.group
        try:
            described = self._admin.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException as exc:  # a coordinator moving or loading: asked next time
            log.debug("describing lease group %s: %s", group, exc)
            self._orphan_seen = False
            return False
        seen, self._orphan_seen = self._orphan_seen, orphaned(described, self.topic)
        return seen and self._orphan_seen

    def _rejoin(self) -> None:
        """A new consumer joins the group (a rebalance: the assignor runs again)."""
        self._outside_since, self._orphan_seen = None, False
        self.rejoins += 1
        old, self._consumer = self._consumer, self._join()
        # Closed aside: a consumer stuck on its coordinator may take its time to close.
        threading.Thread(target=_close_quietly, args=(old,), daemon=True).start()

    def close(self) -> None:
        self.held = False  # first: the revoke that closing triggers is not a lost lease
        self._consumer.close()
        metrics.LEASE_HELD.labels(self.name).set(0)
