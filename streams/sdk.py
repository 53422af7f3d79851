"""The Python SDK: produce events and documents, ask questions, subscribe to outputs.

Any Kafka client in any language can do the same by following the topic contracts; this
client validates records before they leave the process, so a mistake is an exception here
rather than a dead-letter record later.

    from streams.sdk import LiveLearnClient

    with LiveLearnClient() as ll:                 # embedded broker, or LIVELEARN_KAFKA__...
        ll.send_event("e1", features={"x": 1.5})  # a prediction will be produced
        ll.send_label("e1", True)                 # a late label teaches the online model
        ll.upsert_doc("d1", "Kafka is a log.", title="kafka")
        print(ll.ask("What is Kafka?")["answer"])
        for alert in ll.subscribe("drift-alerts"):
            print(alert["severity"], alert["detector"])
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import orjson

from streams import contracts
from streams.exceptions import ContractError, QueryTimeoutError
from streams.kafka import (
    consumer,
    flush_or_raise,
    move_to_new_producer,
    producer,
    resolve_bootstrap,
)
from streams.settings import Settings, load_settings

__all__ = ["LiveLearnClient"]

log = logging.getLogger(__name__)


class LiveLearnClient:
    """One producer and on-demand consumers over the configured (or embedded) Kafka.

    Parameters
    ----------
    settings
        Settings to use; read from the environment when omitted.
    bootstrap
        Bootstrap servers; overrides the settings (and never starts the embedded broker).
    stall_s
        Records waiting and none delivered for this long: the producer is replaced and its
        records are moved to the new one (:func:`streams.kafka.move_to_new_producer`: after a
        broker restart librdkafka can keep a producer that never delivers again).
    """

    def __init__(
        self, settings: Settings | None = None, bootstrap: str | None = None,
        stall_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.settings = settings or load_settings()
        self.bootstrap = bootstrap or resolve_bootstrap(self.settings, start=True)
        self.stall_s = stall_s
        self._producer = producer(self.settings, self.bootstrap)
        self._progress = (0, time.monotonic())  # (records delivered, when that count moved)
        from streams.schema_registry import WireEncoder

        self._wire = WireEncoder.from_settings(self.settings)  # Schema Registry framing, or None

    # -- producing -------------------------------------------------------------------------
    def _mend_if_stalled(self) -> None:
        """Replace the producer when it holds records and has delivered none for
        :attr:`stall_s`."""
        now = time.monotonic()
        delivered = self._producer.delivered_total
        if delivered != self._progress[0] or not len(self._producer):
            self._progress = (delivered, now)
        elif now - self._progress[1] > self.stall_s:
            log.warning("no record delivered for %.0f s with %d waiting: a new producer takes "
                        "them", now - self._progress[1], len(self._producer))  # fmt: skip
            self._producer = move_to_new_producer(
                self._producer, lambda: producer(self.settings, self.bootstrap)
            )
            self._progress = (self._producer.delivered_total, time.monotonic())

    def produce(self, contract: str, value: Mapping[str, Any], wait: bool = False) -> None:
        """Validate ``value`` against ``contract`` and produce it keyed by its id."""
        topic = self.settings.topics.by_contract()[contract]
        payload = contracts.encode_checked(contract, value)
        if self._wire is not None:
            payload = self._wire(topic, payload)
        key = value.get("id") or value.get("job_id") or value.get("alert_id")
        while True:
            try:
                self._producer.produce(
                    topic, payload, key=str(key).encode() if key is not None else None
                )
                break
            except BufferError:  # local queue full: let librdkafka drain it
                self._producer.poll(0.1)
                self._mend_if_stalled()
        self._producer.poll(0)
        if wait:
            self.flush()

    def send_event(
        self,
        id: str,
        features: Mapping[str, float | int | str] | None = None,
        text: str | None = None,
        label: Any = None,
        ts: float | None = None,
        wait: bool = False,
    ) -> None:
        """An event: features and/or text, and optionally its label (predict, then learn)."""
        value: dict[str, Any] = {"id": id, "ts": time.time() if ts is None else ts}
        if features is not None:
            value["features"] = dict(features)
        if text is not None:
            value["text"] = text
        if label is not None:
            value["label"] = label
        self.produce("events", value, wait)

    def send_label(self, id: str, label: Any, wait: bool = False) -> None:
        """A late label for an event produced earlier with the same id."""
        self.produce("events", {"id": id, "label": label, "ts": time.time()}, wait)

    def upsert_doc(
        self,
        id: str,
        text: str,
        title: str | None = None,
        source: str | None = None,
        meta: Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> None:
        """Add or replace a document; it is searchable about a second later."""
        value: dict[str, Any] = {"id": id, "op": "upsert", "text": text, "ts": time.time()}
        if title is not None:
            value["title"] = title
        if source is not None:
            value["source"] = source
        if meta:
            value["meta"] = dict(meta)
        self.produce("docs", value, wait)

    def delete_doc(self, id: str, wait: bool = False) -> None:
        """Remove a document and all its chunks from the index."""
        self.produce("docs", {"id": id, "op": "delete", "ts": time.time()}, wait)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything produced is acknowledged by the broker; raise
        :class:`DeliveryError` for a record whose delivery failed, or when records are still
        waiting after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self._progress = (self._producer.delivered_total, time.monotonic())
        while self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            self._mend_if_stalled()
        flush_or_raise(self._producer, 0, waited_s=timeout_s)

    # -- consuming -------------------------------------------------------------------------
    def _topic(self, stream: str) -> str:
        by_contract = self.settings.topics.by_contract()
        if stream in by_contract:
            return by_contract[stream]
        return stream  # any topic name, e.g. "events.dlq"

    def _assigned_consumer(self, topic: str, from_beginning: bool) -> Any:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        c = consumer(self.settings, self.bootstrap, f"livelearn-sdk-{uuid.uuid4().hex[:8]}")
        md = c.list_topics(topic, timeout=10)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            c.close()
            raise ContractError(f"topic {topic!r} does not exist; run `livelearn topics`")
        parts = []
        for p in meta.partitions:
            if from_beginning:
                offset = OFFSET_BEGINNING
            else:
                _low, offset = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            parts.append(TopicPartition(topic, p, offset))
        c.assign(parts)
        return c

    def subscribe(
        self,
        stream: str,
        from_beginning: bool = False,
        timeout_s: float | None = None,
        max_records: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Iterate over a stream's records (``predictions``, ``drift-alerts``, ...).

        Starts at the end (new records only) unless ``from_beginning``; stops after
        ``timeout_s`` seconds without a record, or after ``max_records``; else runs forever.
        Records that are not JSON objects are skipped (they are someone else's).
        """
        c = self._assigned_consumer(self._topic(stream), from_beginning)
        seen = 0
        try:
            idle_since = time.monotonic()
            while max_records is None or seen < max_records:
                msg = c.poll(0.5)
                if msg is None or msg.error() is not None:
                    if timeout_s is not None and time.monotonic() - idle_since > timeout_s:
                        return
                    continue
                idle_since = time.monotonic()
                raw = msg.value() or b"null"
                if raw[0] == 0 and len(raw) >= 5:  # Schema Registry wire format: skip its header
                    raw = raw[5:]
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    seen += 1
                    yield value
        finally:
            c.close()

    async def asubscribe(
        self, stream: str, from_beginning: bool = False, timeout_s: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The async form of :meth:`subscribe` (polls in a worker thread)."""
        iterator = self.subscribe(stream, from_beginning, timeout_s)
        sentinel = object()
        while True:
            item = await asyncio.to_thread(next, iterator, sentinel)
            if item is sentinel:
                return
            assert isinstance(item, dict)
            yield item

    def ask(
        self,
        question: str,
        k: int | None = None,
        filter: Mapping[str, Any] | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Ask a question through Kafka and wait for its answer (needs a running worker)."""
        query_id = f"q-{uuid.uuid4().hex}"
        c = self._assigned_consumer(self.settings.topics.answers, from_beginning=False)
        try:
            value: dict[str, Any] = {"id": query_id, "question": question, "ts": time.time()}
            if k is not None:
                value["k"] = k
            if filter:
                value["filter"] = dict(filter)
            self.produce("queries", value, wait=True)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                if msg.key() == query_id.encode():
                    answer: dict[str, Any] = orjson.loads(msg.value())
                    return answer
        finally:
            c.close()
        raise QueryTimeoutError(
            f"no answer to {query_id} within {timeout_s:.0f} s; is `livelearn worker` running?"
        )

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Flush what is pending and release the producer."""
        self.flush()

    def __enter__(self) -> LiveLearnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
