"""The learner's lease: exclusive ownership of a model's learning through a consumer group on a
one-partition topic (the member assigned the partition is the learner), and the rejoin that
keeps a worker from staying outside the group for good.
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

__all__ = ["Lease"]

log = logging.getLogger("streams.learner_worker")  # where operators grep for lease events


def _close_quietly(c: Any) -> None:
    try:
        c.close()
    except Exception as exc:
        log.warning("closing a replaced lease consumer: %s", exc)


class Lease:
    """Exclusive ownership of ``name`` through a consumer group on a one-partition topic."""

    def __init__(self, settings: Settings, bootstrap: str, name: str) -> None:
        self.topic = f"{settings.kafka.group_prefix}.lease.{name}"
        self.name = name
        ensure_topics(admin_client(settings, bootstrap),
                      [TopicSpec(self.topic, 1, settings.topics.replication)])  # fmt: skip
        self.held = False
        self._settings, self._bootstrap = settings, bootstrap
        # Out of the group this long (no member id: a join that never completes, as librdkafka
        # can leave it after the broker restarted): the consumer is made again.
        self.rejoin_after_s = max(30.0, 3 * settings.kafka.session_timeout_ms / 1000)
        self._outside_since: float | None = None
        self.rejoins = 0
        self._consumer = self._join()

    def _join(self) -> Any:
        c = consumer(
            self._settings,
            self._bootstrap,
            f"{self._settings.kafka.group_prefix}-lease-{self.name}",
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
        elif self._outside_since is None:
            self._outside_since = now
        elif now - self._outside_since >= self.rejoin_after_s:
            log.warning("lease %s: not in its group for %.0f s; joining again", self.topic,
                        now - self._outside_since)  # fmt: skip
            self._outside_since = None
            self.rejoins += 1
            old, self._consumer = self._consumer, self._join()
            # Closed aside: a consumer stuck on its coordinator may take its time to close.
            threading.Thread(target=_close_quietly, args=(old,), daemon=True).start()
        return self.held

    def close(self) -> None:
        self.held = False  # first: the revoke that closing triggers is not a lost lease
        self._consumer.close()
        metrics.LEASE_HELD.labels(self.name).set(0)
