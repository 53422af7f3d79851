"""What the learner loop and the predictor replica share: a thread over ``events``.

An :class:`EventsThread` has a stop flag and the error it died of (the worker's
:class:`streams.threads.ThreadSupervisor` starts a new one), takes batches from a consumer
without librdkafka's wait, and decodes them against the ``events`` contract; the functions
below export what both loops measure (latency, lag, the serving version).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from streams import metrics
from streams.contracts import Limits
from streams.processing import RawRecord, decode_batch
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_LINGER_MS",
    "EventsThread",
    "count_retries",
    "export_latency_and_lag",
    "export_status",
    "key_bytes",
]

#: librdkafka's ``linger.ms`` for predictions (5 ms elsewhere): a batch's outputs are produced
#: in one go, so waiting for more would only add to every prediction's latency.
OUTPUT_LINGER_MS = 1


class EventsThread(threading.Thread):
    """A worker thread over ``events``: a stop flag, and the error it died of (the worker's
    thread supervisor logs it and starts a new thread)."""

    def __init__(self, name: str, settings: Settings, bootstrap: str, batch_size: int,
                 limits: Limits | None = None) -> None:  # fmt: skip
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.limits = limits or settings.limits.contract_limits()
        #: No delivery at all for this long while outputs wait: the thread's producer is
        #: stuck (see :func:`streams.kafka.deliver_or_retry`), the thread ends and the
        #: supervisor starts a new one, with a new producer.
        self.stall_s = max(30.0, settings.kafka.delivery_timeout_ms / 2000)

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # kept for the thread supervisor, which starts a new one
            log.exception("%s loop crashed", self.name)
            self.error = exc

    def _run(self) -> None:
        raise NotImplementedError

    def _take(self, events: Any, timeout_s: float) -> list[RawRecord]:
        """Up to ``batch_size`` records: those already fetched, else the first to arrive
        within ``timeout_s`` and whatever came with it. (librdkafka's ``consume(n, t)`` waits
        the whole ``t`` unless ``n`` records are there: 100 ms added to every record's
        latency at a steady rate.)"""
        msgs = events.consume(self.batch_size, 0)
        if not msgs:
            first = events.poll(timeout_s)
            if first is None:
                return []
            msgs = [first, *events.consume(self.batch_size - 1, 0)]
        return self._raw(msgs)

    def _raw(self, msgs: list[Any]) -> list[RawRecord]:
        topic = self.settings.topics.events
        return [
            RawRecord(topic, m.partition(), m.offset(), m.key(), m.value(),
                      m.timestamp()[1] / 1000.0)
            for m in msgs if m.error() is None
        ]  # fmt: skip

    def _decode(self, batch: list[RawRecord]) -> tuple[list[Any], list[Any]]:
        s = self.settings
        return decode_batch(
            "events", batch, s.topics.dlq(s.topics.events), self.limits, s.limits.dlq_raw_bytes
        )


_served: dict[str, str] = {}


def export_latency_and_lag(events: Any, topic: str, batch: list[Any]) -> None:
    """Produce-to-prediction latency per record, and the lag left per partition."""
    from confluent_kafka import TopicPartition

    now = time.time()
    last: dict[int, int] = {}
    for rec in batch:
        if rec.timestamp > 0:
            metrics.PREDICTION_LATENCY.observe(max(0.0, now - rec.timestamp))
        last[rec.partition] = rec.offset
    for partition, offset in last.items():
        _low, high = events.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        if high is not None and high >= 0:
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(0, high - offset - 1))


def export_status(model: str, status: dict[str, Any]) -> None:
    """Rolling metrics and the serving version as Prometheus gauges."""
    for name, value in (status.get("online_metrics") or {}).items():
        if name != "n":
            metrics.MODEL_METRIC.labels(model, "online", name).set(value)
    paired = status.get("paired")
    if paired:
        metrics.MODEL_METRIC.labels(model, "batch", "paired_score").set(paired["batch"])
        metrics.MODEL_METRIC.labels(model, "online", "paired_score").set(paired["online"])
    source = status.get("serving", "online")
    version = status.get("batch_version") if source == "batch" else "online"
    label = f"{source}:{version}"
    if _served.get(model) != label:
        old = _served.get(model)
        if old is not None:
            metrics.SERVING_VERSION.remove(model, *old.split(":", 1))
        metrics.SERVING_VERSION.labels(model, source, str(version)).set(1)
        _served[model] = label


def count_retries(n: int) -> None:
    metrics.RETRIES.labels("delivery").inc(n)


def key_bytes(key: str | None) -> bytes | None:
    return key.encode() if key is not None else None
