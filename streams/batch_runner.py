"""An agent's batch: decode, call the domain, produce, and only then let faust acknowledge.

Every faust agent of the worker hands its batches to a :class:`BatchRunner`. A body never
raises: bad records go to the dead-letter topic, and a dependency that is down is retried with
backoff (raising would make faust acknowledge a batch that was never processed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams import metrics
from streams.contracts import Limits
from streams.kafka import deliver_or_retry, produce_or_wait
from streams.processing import OutRecord, RawRecord, Rejection, dead, decode_batch
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["MAX_BACKOFF_S", "BatchRunner", "hold"]

#: Longest wait between two tries of a dependency that is down (Milvus): once it is back, the
#: backlog starts moving within this many seconds, and a try against a down server is cheap.
MAX_BACKOFF_S = 5.0


class BatchRunner:
    """Runs one agent's batch: decode, call the domain, produce, and only then return."""

    def __init__(
        self,
        settings: Settings,
        contract: str,
        topic: str,
        handle: Callable[[Sequence[Any]], Awaitable[list[Any]]],
        producer: Any,
        limits: Limits,
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.contract = contract
        self.topic = topic
        self.dlq = settings.topics.dlq(topic)
        self.handle = handle
        self.retry_on = retry_on
        self.limits = limits
        self.stopping = threading.Event()  # set at shutdown: stop waiting for deliveries

    async def __call__(self, events: Sequence[Any]) -> None:
        """Process one batch; the batch is acknowledged only if this returns.

        faust's ``take_events`` acknowledges the events in its ``finally`` whatever the body
        did, so on any way out but success (a shutdown mid-retry, a bug) the events are
        held first: their offsets are never committed, and the records come again after a
        restart or a rebalance.
        """
        try:
            await self._run(events)
        except BaseException:
            hold(events)
            raise

    async def _run(self, events: Sequence[Any]) -> None:
        started = time.perf_counter()
        raw = [
            RawRecord(
                self.topic,
                e.message.partition,
                e.message.offset,
                e.message.key,
                e.message.value,
                (e.message.timestamp or 0.0),
            )
            for e in events
        ]
        good, bad = decode_batch(
            self.contract, raw, self.dlq, self.limits, self.settings.limits.dlq_raw_bytes
        )
        log.debug("%s: batch of %d, %d dead", self.contract, len(raw), len(bad))
        await self.produce(bad)  # dead letters never wait for a dependency
        dead_count = len(bad)
        bad.clear()
        results = await self._handle_with_retry(good, raw, bad)
        by_offset = {(r.partition, r.offset): r for r in raw}
        outputs: list[OutRecord] = []
        for out in results:
            if isinstance(out, Rejection):
                self._failed += 1
                bad.append(dead(by_offset[(out.partition, out.offset)], self.dlq, out.reason,
                                self.settings.limits.dlq_raw_bytes))  # fmt: skip
            else:
                outputs.append(out)
        await self.produce(bad + outputs)  # outputs, and records that failed processing
        metrics.RECORDS_IN.labels(self.topic, "ok").inc(len(good) - self._failed)
        metrics.RECORDS_IN.labels(self.topic, "dead").inc(dead_count + len(bad))
        metrics.BATCH_SECONDS.labels(self.contract).observe(time.perf_counter() - started)

    async def _handle_with_retry(
        self, good: list[Any], raw: list[RawRecord], bad: list[OutRecord]
    ) -> list[OutRecord]:
        self._failed = 0
        if not good:
            return []
        try:
            return await self._until_done(good)
        except Exception as exc:
            log.exception("%s: batch failed (%s); retrying record by record", self.contract, exc)
            return await self._one_by_one(good, raw, bad)

    async def _until_done(self, records: list[Any]) -> list[OutRecord]:
        """``handle(records)``, retried with backoff for as long as a dependency is down: the
        records (and their offsets) are kept, never dead-lettered for an outage."""
        delay = 0.5
        while True:
            try:
                return await self.handle(records)
            except self.retry_on as exc:
                metrics.RETRIES.labels(type(exc).__name__).inc()
                log.warning("%s: %s; retrying in %.1f s", self.contract, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _one_by_one(
        self, good: list[Any], raw: list[RawRecord], bad: list[OutRecord]
    ) -> list[OutRecord]:
        by_offset = {(r.partition, r.offset): r for r in raw}
        outputs: list[OutRecord] = []
        for rec in good:
            try:
                outputs.extend(await self._until_done([rec]))
            except Exception as exc:
                self._failed += 1
                reason = f"{self.contract}: processing failed: {type(exc).__name__}: {exc}"
                bad.append(dead(by_offset[(rec.partition, rec.offset)], self.dlq, reason))
        return outputs

    async def produce(self, records: Sequence[OutRecord]) -> None:
        """Produce and wait until Kafka acknowledged every record.

        Outputs go through one confluent-kafka producer per worker (idempotent, acks=all)
        rather than faust's own: its delivery is awaited explicitly before the batch's
        offsets may be acknowledged, and a null key is fine. A record Kafka refused (a broker
        down longer than the delivery timeout, not enough in-sync replicas) is sent again
        with backoff until it is taken (:func:`streams.kafka.deliver_or_retry`).
        """
        if not records:
            return
        for rec in records:
            key = rec.key.encode() if rec.key is not None else None
            produce_or_wait(self.producer, rec.topic, rec.encoded(), key)
            metrics.RECORDS_OUT.labels(rec.topic).inc()
            if rec.topic == self.dlq:
                metrics.DEAD_LETTERS.labels(self.topic).inc()
        await asyncio.get_running_loop().run_in_executor(
            None, deliver_or_retry, self.producer, self.stopping.is_set, 10.0, MAX_BACKOFF_S,
            _count_delivery_retries,
        )  # fmt: skip


def _count_delivery_retries(n: int) -> None:
    metrics.RETRIES.labels("delivery").inc(n)


def hold(events: Sequence[Any]) -> None:
    """Keep faust from acknowledging ``events``: one more reference on each message, so the
    acknowledgement that ``take_events`` makes in its ``finally`` is not the last one (the
    consumer commits only up to the first message not acknowledged)."""
    for event in events:
        event.message.incref()
