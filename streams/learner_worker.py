"""The learner loop: the single writer of the online model, on whichever worker holds the lease.

Learning must be single-writer (no label learned twice, no two diverging copies of a model),
yet every worker should be able to take over when the learner's process dies. So:

* **Lease**: every worker joins the consumer group ``<prefix>-lease-<model>`` on a
  one-partition topic. Kafka's group coordinator gives that partition to exactly one live
  member: that member is the learner. When it dies or stalls, the coordinator hands the
  partition to another worker after the session timeout.
* **Offsets live in the checkpoint**, not in the consumer group: the learner assigns itself
  every partition of ``events`` at the offsets stored with the model, so a new leader resumes
  exactly where the last checkpoint left off and replays the rest. Records before the
  checkpoint's offsets are never learned twice (their predictions may be produced again:
  at-least-once, keyed by event id).
* The loop decodes, dead-letters bad records, calls
  :class:`trainers.online.processor.OnlineProcessor`
  and produces its outputs without waiting for them. When a checkpoint is due it first waits
  for Kafka's acknowledgement of everything produced, then checkpoints: a checkpoint never
  moves the replay point past a record whose outputs Kafka does not hold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from streams import contracts, metrics
from streams.contracts import Limits, encode
from streams.events_thread import (
    OUTPUT_LINGER_MS,
    EventsThread,
    count_retries,
    export_latency_and_lag,
    export_status,
    key_bytes,
)
from streams.exceptions import ContractError, DeliveryError, ProducerStalledError
from streams.kafka import (
    consumer,
    deliver_or_retry,
    flush_or_raise,
    produce_or_wait,
    producer,
    retry_transient,
)
from streams.lease import (
    Lease,
)
from streams.ordering import EventTimeMerger
from streams.processing import OutRecord, RawRecord, dead
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["LearnerLoop", "Lease", "OnlineProcessor", "PredictorLoop"]


class OnlineProcessor(Protocol):
    """What the loop needs from the domain side (``trainers.online.processor.OnlineProcessor``)."""

    #: The event-time merge's state as of the records processed (saved with the checkpoint).
    ordering_state: dict[str, Any] | None

    def offsets(self) -> dict[int, int]:
        """Next offset to process per partition of ``events`` (from the checkpoint)."""
        ...

    def process(self, records: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Learn from decoded records; return ``(contract, key, value)`` outputs."""
        ...

    def checkpoint_due(self) -> bool:
        """Whether a checkpoint is due (the loop first waits for its outputs' delivery)."""
        ...

    def maybe_checkpoint(self, force: bool = False) -> bool:
        """Write the checkpoint (model + offsets) atomically when due; True if written."""
        ...

    def on_model_update(self, update: dict[str, Any]) -> None:
        """A ``model-updates`` record (job started/finished, version promoted)."""
        ...

    def take_rejected(self) -> list[Any]:
        """Valid records the model could not take since the last call: ``(partition,
        offset, reason)`` each (the loop dead-letters them)."""
        ...

    def start(self) -> None:
        """Load what serving needs before the first batch (the batch model, if any)."""
        ...

    def status(self) -> dict[str, Any]:
        """Serving versions and rolling metrics (exported as metrics)."""
        ...


@dataclass
class _Turn:
    """What one turn of the learner loop processed, for the emit step."""

    good: list[Any]  #: the records the processor took, in the order it learned them
    dead: list[OutRecord]  #: dead letters: records that broke their contract or were refused
    rejected: int  #: how many of ``dead`` the processor refused (valid, but not learnable)
    outputs: list[tuple[str, str, dict[str, Any]]]  #: the processor's outputs


class LearnerLoop(EventsThread):
    """Consume ``events`` while holding the lease; produce predictions and friends.

    Each turn of the loop is five named steps, in this order:

    1. :meth:`_lease_step`: keep the lease; on gaining it, build the processor from the
       checkpoint and assign ``events`` at its offsets; on losing it, drop the processor;
    2. :meth:`_updates_step`: apply the ``model-updates`` records that arrived;
    3. :meth:`_process_step`: decode a batch, merge it into event-time order, hand it to the
       processor (and, idle, still once a second: schedules and swaps are due anyway);
    4. :meth:`_emit_step`: produce the dead letters and the outputs without waiting;
    5. :meth:`_checkpoint_step`: when a checkpoint is due, wait for Kafka's acknowledgement
       of every output produced, then write it.

    Parameters
    ----------
    settings, bootstrap
        Where Kafka is and what the topics are called.
    make_processor
        Builds the domain processor from the latest checkpoint (called on each lease gain).
    batch_size
        Records taken per poll.
    limits
        The contract limits of the decoder (the settings' own when not given).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        make_processor: Callable[[], OnlineProcessor],
        batch_size: int = 500,
        limits: Limits | None = None,
    ) -> None:
        super().__init__("learner", settings, bootstrap, batch_size, limits)
        self.make_processor = make_processor
        self._held_raw: dict[tuple[int, int], RawRecord] = {}  # of the records the merge holds
        self._released_raw: list[RawRecord] = []  # of the records it released last
        # The Kafka side and the processor, for the duration of ``_run``.
        self._lease: Any = None
        self._events: Any = None
        self._updates: Any = None
        self._prod: Any = None
        self._processor: OnlineProcessor | None = None
        self._merger = EventTimeMerger(0.0)
        self._last_turn = 0.0

    def _run(self) -> None:
        s = self.settings
        self._lease = Lease(s, self.bootstrap, s.models.name)
        self._events = consumer(s, self.bootstrap,
                                f"{s.kafka.group_prefix}-learner-{s.models.name}")  # fmt: skip
        self._prod = producer(s, self.bootstrap, **{"linger.ms": OUTPUT_LINGER_MS})
        self._updates = consumer(s, self.bootstrap, f"{s.kafka.group_prefix}-learner-updates")
        try:
            while not self.stop_event.is_set():
                processor = self._lease_step()
                if processor is None:
                    continue
                self._updates_step(processor)
                turn = self._process_step(processor)
                if turn is not None:
                    self._emit_step(processor, turn)
                self._checkpoint_step(processor)
            self._last_checkpoint()
        except ProducerStalledError:  # a new learner (the supervisor's) makes a new producer
            self._prod.purge()  # unacknowledged: their inputs are processed again
            raise
        finally:
            self._prod.flush(10)
            self._events.close()
            self._updates.close()
            self._lease.close()

    # -- 1. lease -----------------------------------------------------------------------------

    def _lease_step(self) -> OnlineProcessor | None:
        """The processor while this worker holds the lease, else None (after a short wait).

        On gaining the lease the processor is built from the checkpoint and ``events`` is
        assigned at its offsets; on losing it the in-memory model is dropped: the new learner
        resumes from the checkpoint, and so will this one if the lease comes back.
        """
        if not self._lease.poll():
            if self._processor is not None:
                self._events.unassign()
                self._processor = None
            time.sleep(0.2)
            return None
        if self._processor is None:
            self._processor = self._resume()
        return self._processor

    def _resume(self) -> OnlineProcessor:
        """Build the processor from the checkpoint; read ``events`` from its offsets."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        topic = self.settings.topics.events
        processor = self.make_processor()
        processor.start()
        n = len(self._events.list_topics(topic, timeout=10).topics[topic].partitions)
        start = processor.offsets()
        self._events.assign(
            [TopicPartition(topic, p, start.get(p, OFFSET_BEGINNING)) for p in range(n)]
        )
        log.info("learning %s from offsets %s", topic, start or "the beginning")
        self._merger = self._merger_for(processor, start, n)
        self._follow_updates(self._updates)
        return processor

    # -- 2. updates ---------------------------------------------------------------------------

    def _updates_step(self, processor: OnlineProcessor) -> None:
        """Apply the ``model-updates`` records that arrived (jobs started, versions promoted)."""
        for m in self._updates.consume(100, 0):
            if m.error() is None:
                self._model_update(processor, m, self._prod)

    # -- 3. process ---------------------------------------------------------------------------

    def _process_step(self, processor: OnlineProcessor) -> _Turn | None:
        """Take a batch, decode it, merge it into event-time order and process what the merge
        releases; None when there is nothing to do. Idle, the processor still runs once a
        second: schedules and swaps are due whether records flow or not."""
        batch = self._take(self._events, 0.0 if self._merger.more_ready else 0.1)
        if not (batch or self._merger.buffered or time.monotonic() - self._last_turn >= 1.0):
            return None
        self._last_turn = time.monotonic()
        good, bad = self._decode(batch) if batch else ([], [])
        good = self._in_event_order(self._merger, self._events, batch, good)
        outputs = processor.process(good)
        rejected = self._rejected(processor, self._released_raw)
        return _Turn(good, bad + rejected, len(rejected), outputs)

    # -- 4. emit ------------------------------------------------------------------------------

    def _emit_step(self, processor: OnlineProcessor, turn: _Turn) -> None:
        """Produce the turn's dead letters and outputs (delivery reports are served; the
        records go out in the background) and export its metrics."""
        s = self.settings
        topic = s.topics.events
        by_contract = s.topics.by_contract()
        for rec in turn.dead:
            produce_or_wait(self._prod, rec.topic, rec.encoded(), key_bytes(rec.key))
            metrics.DEAD_LETTERS.labels(topic).inc()
        sent: dict[str, int] = {}
        for contract, key, value in turn.outputs:
            out_topic = by_contract[contract]
            produce_or_wait(self._prod, out_topic, encode(value), key.encode())
            sent[out_topic] = sent.get(out_topic, 0) + 1
            if contract == "drift-alerts":
                metrics.DRIFT_ALERTS.labels(
                    s.models.name, value["detector"], value["severity"]
                ).inc()
        for out_topic, n_out in sent.items():
            metrics.RECORDS_OUT.labels(out_topic).inc(n_out)
        self._prod.poll(0)
        export_latency_and_lag(self._events, topic, turn.good)  # as learned (after the merge)
        metrics.RECORDS_IN.labels(topic, "ok").inc(len(turn.good) - turn.rejected)
        metrics.RECORDS_IN.labels(topic, "dead").inc(len(turn.dead))
        export_status(s.models.name, processor.status())

    # -- 5. checkpoint ------------------------------------------------------------------------

    def _checkpoint_step(self, processor: OnlineProcessor) -> None:
        """Checkpoint when one is due, once Kafka acknowledged every output before it.

        The next batch does not wait for Kafka's acknowledgement of this one's outputs; a
        checkpoint does: it moves the replay point past their records, so it is written only
        once every output before it is acknowledged (sent again for as long as Kafka refuses
        them; a lost lease or a stop ends the wait without a checkpoint, and the records are
        processed again).
        """
        if not processor.checkpoint_due():
            return
        deliver_or_retry(self._prod, lambda: self.stop_event.is_set() or not self._lease.poll(),
                         on_retry=count_retries, stall_s=self.stall_s)  # fmt: skip
        processor.ordering_state = self._merger.state()
        if processor.maybe_checkpoint():
            self._commit_for_lag(self._events, processor.offsets(), self.settings.topics.events)

    def _last_checkpoint(self) -> None:
        """On a stop while holding the lease: a last checkpoint, if Kafka holds every output."""
        processor = self._processor
        if processor is None or not self._lease.held:
            return
        try:
            flush_or_raise(self._prod, 30)
        except DeliveryError as exc:  # no checkpoint past outputs Kafka lacks
            log.warning("stopping without a last checkpoint: %s", exc)
        else:
            processor.ordering_state = self._merger.state()
            processor.maybe_checkpoint(force=True)

    # -- helpers ------------------------------------------------------------------------------

    def _merger_for(self, processor: OnlineProcessor, start: dict[int, int], n: int
                    ) -> EventTimeMerger:  # fmt: skip
        """The event-time merge, resumed from the checkpoint's state (lateness 0 when the
        learner learns in arrival order)."""
        m = self.settings.models
        lateness = m.lateness_s if m.event_order == "event-time" else 0.0
        merger = EventTimeMerger(lateness, getattr(processor, "ordering_state", None))
        merger.assign({p: start.get(p, 0) for p in range(n)})
        self._held_raw = {}
        return merger

    def _in_event_order(self, merger: EventTimeMerger, events: Any, batch: list[RawRecord],
                        good: list[Any]) -> list[Any]:  # fmt: skip
        """Hand the batch to the merge; take what may be learned now, in event-time order."""
        from confluent_kafka import KafkaException, TopicPartition

        topic = self.settings.topics.events
        merger.consumed((r.partition, r.offset) for r in batch)
        merger.push(good, time.monotonic())
        raw = {(r.partition, r.offset): r for r in batch}
        for r in good:  # kept while held: a record the processor rejects is dead-lettered raw
            self._held_raw[(r.partition, r.offset)] = raw[(r.partition, r.offset)]
        ends: dict[int, int] = {}
        if merger.buffered and merger.lateness_s:
            for p in merger.partitions:
                try:  # the end of log as of the last fetch: a partition there holds nothing
                    _low, high = events.get_watermark_offsets(TopicPartition(topic, p),
                                                              cached=True)  # fmt: skip
                except KafkaException:
                    continue
                if high is not None and high >= 0:
                    ends[p] = high
        late = merger.late
        out = merger.pop(ends, time.monotonic(), self.batch_size)
        self._released_raw = [self._held_raw.pop((r.partition, r.offset)) for r in out]
        if merger.late > late:
            metrics.LATE_EVENTS.labels(topic).inc(merger.late - late)
        return out

    def _rejected(self, processor: OnlineProcessor, batch: list[RawRecord]) -> list[OutRecord]:
        """Dead letters for the valid records the processor could not take."""
        rejected = processor.take_rejected()
        if not rejected:
            return []
        by_offset = {(r.partition, r.offset): r for r in batch}
        dlq = self.settings.topics.dlq(self.settings.topics.events)
        lim = self.settings.limits.dlq_raw_bytes
        return [dead(by_offset[(r.partition, r.offset)], dlq, f"events: {r.reason}", lim)
                for r in rejected if (r.partition, r.offset) in by_offset]  # fmt: skip

    def _model_update(self, processor: OnlineProcessor, m: Any, prod: Any) -> None:
        """One ``model-updates`` record, checked against its contract; a bad one is
        dead-lettered with the reason, and the learner goes on."""
        s = self.settings
        topic = s.topics.model_updates
        try:
            processor.on_model_update(contracts.decode("model-updates", m.value()))
            return
        except ContractError as exc:
            reason = str(exc)
        except Exception as exc:  # the update is wrong in meaning (it names no real version)
            reason = f"model-updates: {type(exc).__name__}: {exc}"
        log.warning("model update at offset %d set aside: %s", m.offset(), reason)
        raw = RawRecord(topic, m.partition(), m.offset(), m.key(), m.value())
        rec = dead(raw, s.topics.dlq(topic), reason, s.limits.dlq_raw_bytes)
        produce_or_wait(prod, rec.topic, rec.encoded(), key_bytes(rec.key))
        metrics.DEAD_LETTERS.labels(topic).inc()

    def _follow_updates(self, updates: Any) -> None:
        """Read ``model-updates`` from now on (jobs decided before a restart are reconciled
        by their ids: the trainer trains a job id once)."""
        from confluent_kafka import TopicPartition

        topic = self.settings.topics.model_updates
        n = len(updates.list_topics(topic, timeout=10).topics[topic].partitions)
        parts = []
        for p in range(n):
            _low, high = retry_transient(updates.get_watermark_offsets, TopicPartition(topic, p),
                                         timeout=10)  # fmt: skip
            parts.append(TopicPartition(topic, p, high))
        updates.assign(parts)

    @staticmethod
    def _commit_for_lag(events: Any, offsets: dict[int, int], topic: str) -> None:
        """Mirror the checkpoint's offsets into the group, so lag tools see progress."""
        from confluent_kafka import KafkaException, TopicPartition

        if not offsets:
            return
        try:
            events.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                asynchronous=True,
            )
        except KafkaException as exc:  # informational only: the checkpoint is the truth
            log.debug("lag commit failed: %s", exc)


class PredictorLoop(EventsThread):
    """A predict-only replica: ``events`` in a consumer group → ``predictions``.

    With ``LIVELEARN_MODELS__PREDICT=replicas`` every worker runs one beside its learner loop
    (which then learns without answering). The group spreads the partitions of ``events`` over
    the replicas, so prediction scales with workers up to the partition count; each replica
    answers from the learner's latest snapshot
    (:class:`trainers.online.replica.SnapshotPredictor`).
    Offsets are committed after Kafka acknowledged the predictions: at least once, keyed by
    event id. Bad records are dead-lettered by the learner, which reads every record; a
    replica skips them. A replica answers in arrival order: it learns nothing, so the order
    of its partitions changes none of its answers (and holding events would only delay them).
    """

    def __init__(self, settings: Settings, bootstrap: str, make_predictor: Callable[[], Any],
                 batch_size: int = 500, limits: Limits | None = None) -> None:  # fmt: skip
        super().__init__("predictor", settings, bootstrap, batch_size, limits)
        self.make_predictor = make_predictor

    def _run(self) -> None:
        s = self.settings
        topic = s.topics.events
        out_topic = s.topics.predictions
        predictor = self.make_predictor()
        group = f"{s.kafka.group_prefix}-predictors-{s.models.name}"
        events = consumer(s, self.bootstrap, group)
        events.subscribe(
            [topic], on_assign=lambda _c, parts: log.info(
                "predicting partitions %s of %s", sorted(p.partition for p in parts), topic),
        )  # fmt: skip
        prod = producer(s, self.bootstrap, **{"linger.ms": OUTPUT_LINGER_MS})
        try:
            while not self.stop_event.is_set():
                batch = self._take(events, 0.2)
                if not batch:
                    continue
                good, _bad = self._decode(batch)
                for _contract, key, value in predictor.process(good):
                    produce_or_wait(prod, out_topic, encode(value), key.encode())
                    metrics.RECORDS_OUT.labels(out_topic).inc()
                deliver_or_retry(prod, self.stop_event.is_set, on_retry=count_retries,
                                 stall_s=self.stall_s)  # fmt: skip
                export_latency_and_lag(events, topic, batch)
                metrics.RECORDS_IN.labels(topic, "ok").inc(len(good))
                events.commit(asynchronous=False)
        except ProducerStalledError:
            prod.purge()  # unacknowledged: their inputs are not committed, and come again
            raise
        finally:
            events.close()
