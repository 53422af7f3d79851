"""Kafka client construction from settings, and finding (or starting) the broker.

Every producer made here is a :class:`TrackedProducer`: it records each delivery that
failed (timed out, refused, too large), so :func:`flush_or_raise` and
:func:`deliver_or_retry` can tell "still queued" from "delivered" from "failed". A
``flush()`` that returns 0 only says the queue is empty; a record whose delivery failed has
left the queue too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import KafkaError
from confluent_kafka import Producer as _Producer

from streams.broker import LocalBroker
from streams.cluster import LocalCluster
from streams.exceptions import BrokerError, DeliveryError, ProducerStalledError
from streams.settings import Settings
from streams.topics import MAX_MESSAGE_BYTES

_T = TypeVar("_T")
log = logging.getLogger(__name__)

__all__ = [
    "FailedDelivery",
    "TrackedProducer",
    "TRANSIENT_ERRORS",
    "admin_client",
    "consumer",
    "deliver_or_retry",
    "flush_or_raise",
    "move_to_new_producer",
    "local_cluster",
    "produce_or_wait",
    "producer",
    "retry_transient",
    "resolve_bootstrap",
]

#: Errors that the same record will meet again however often it is sent: no retry helps.
#: Only the record's own size is that; a record the broker refuses to validate
#: (INVALID_RECORD, INVALID_TIMESTAMP) or to take (authorisation, replicas) depends on topic
#: settings, ACLs and brokers that an operator can mend, so it is sent again with backoff.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError._INVALID_ARG,
    }
)


def resolve_bootstrap(settings: Settings, start: bool = True) -> str:
    """The configured cluster, else the embedded broker (started when ``start`` is true)."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    cluster = local_cluster(settings)
    state = cluster.running()
    if state is not None:  # `livelearn broker up --brokers N` started one
        return state.bootstrap
    if settings.broker.brokers > 1:
        return cluster.start() if start else _running_cluster(cluster)
    broker = LocalBroker(settings.data_dir, settings.broker)
    running = broker.running()
    if running is not None:
        return running.bootstrap
    if not start:
        raise BrokerError(
            "no Kafka configured and the embedded broker is not running: run "
            "`livelearn broker up` or set LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"
        )
    return broker.start()


def local_cluster(settings: Settings) -> LocalCluster:
    """The local Kafka cluster these settings describe (``LIVELEARN_BROKER__BROKERS``)."""
    return LocalCluster(
        settings.data_dir, settings.broker, settings.broker.brokers, settings.broker.node_heap
    )


def _running_cluster(cluster: LocalCluster) -> str:
    state = cluster.running()
    if state is None:
        raise BrokerError(
            "no Kafka configured and the local cluster is not running: run "
            "`livelearn broker up --brokers N` or set LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"
        )
    return state.bootstrap


def admin_client(settings: Settings, bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(settings.kafka.client_config(bootstrap))


@dataclass(frozen=True)
class FailedDelivery:
    """A record Kafka did not take, with what is needed to send it again."""

    topic: str
    key: bytes | None
    value: bytes | None
    error: str
    code: int

    @property
    def permanent(self) -> bool:
        """True when sending the same record again cannot succeed (e.g. too large)."""
        return self.code in PERMANENT_ERRORS


class TrackedProducer(_Producer):
    """A confluent-kafka ``Producer`` that keeps the records whose delivery failed.

    A callback given to :meth:`produce` still runs; the failure is recorded first.
    :meth:`take_failures` hands the failures over (and forgets them).
    """

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.failed: list[FailedDelivery] = []
        self.failed_total = 0
        self.delivered_total = 0
        self._report_cb = self._report

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append(
                FailedDelivery(msg.topic(), msg.key(), msg.value(), str(err), err.code())
            )
            self.failed_total += 1
        else:
            self.delivered_total += 1

    def produce(self, topic: str, value: Any = None, key: Any = None, *args: Any,
                **kwargs: Any) -> None:  # fmt: skip
        user = kwargs.pop("on_delivery", None) or kwargs.pop("callback", None)
        if user is None:
            callback = self._report_cb
        else:

            def callback(err: Any, msg: Any) -> None:
                self._report(err, msg)
                user(err, msg)

        kwargs["on_delivery"] = callback
        super().produce(topic, value, key, *args, **kwargs)

    def take_failures(self) -> list[FailedDelivery]:
        failed, self.failed = self.failed, []
        return failed


#: librdkafka's local queues in kB: the producer's (records not yet acknowledged) and a
#: consumer's (records fetched ahead of the caller).
PRODUCER_QUEUE_KB = 64 * 1024
CONSUMER_QUEUE_KB = 32 * 1024


def producer(settings: Settings, bootstrap: str, **extra: Any) -> TrackedProducer:
    """An idempotent producer (acks=all): a record is acknowledged only once it is durable."""
    conf = settings.kafka.client_config(bootstrap)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": MAX_MESSAGE_BYTES,
            # How long librdkafka keeps retrying one record before it reports it as failed;
            # the callers then send it again (deliver_or_retry) or raise (flush_or_raise).
            "message.timeout.ms": settings.kafka.delivery_timeout_ms,
            # A broker that stops hands its partitions to leader -1; librdkafka 2.16 sometimes
            # never looks for the leader again until its periodic metadata refresh (5 min by
            # default), and the records wait in its queue that long after the broker is back.
            "topic.metadata.refresh.interval.ms": 10_000,
            # librdkafka queues up to 1 GB by default while the broker is away: a bound on
            # the worker's memory (four records of the largest size); produce_or_wait waits.
            "queue.buffering.max.kbytes": PRODUCER_QUEUE_KB,
        }
    )
    conf.update(extra)
    return TrackedProducer(conf)


def consumer(settings: Settings, bootstrap: str, group: str | None, **extra: Any) -> Any:
    """A consumer that never auto-commits: callers commit after the effect is durable."""
    from confluent_kafka import Consumer

    conf = settings.kafka.client_config(bootstrap)
    conf.update(
        {
            "group.id": group or f"{settings.kafka.group_prefix}-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.kafka.session_timeout_ms,
            "enable.partition.eof": False,
            # Prefetched records a lagging consumer holds (64 MB by default, per consumer).
            "queued.max.messages.kbytes": CONSUMER_QUEUE_KB,
        }
    )
    conf.update(extra)
    return Consumer(conf)


def produce_or_wait(
    prod: Any, topic: str, value: bytes | None, key: bytes | None = None, **kwargs: Any
) -> None:
    """``prod.produce``, waiting while the producer's local queue is full: librdkafka raises
    ``BufferError`` rather than queue more, and the caller must neither drop the record nor
    spin (back-pressure, not loss)."""
    while True:
        try:
            prod.produce(topic, value, key=key, **kwargs)
            return
        except BufferError:
            prod.poll(0.05)


#: librdkafka's codes for a record taken back by ``purge()``: never sent (queued), or sent
#: without an answer yet (in flight: it may have been written).
PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def move_to_new_producer(
    prod: TrackedProducer, make: Callable[[], TrackedProducer], settle_s: float = 5.0
) -> TrackedProducer:
    """Take back every record a stalled producer still holds and hand them to ``make()``'s
    new producer, in the order they were produced; the old one is dropped.

    librdkafka 2.16 can keep a producer that never delivers again after a broker restart: a
    partition whose leader was briefly -1 stays without a leader whatever later metadata says
    (confluentinc/librdkafka#5430, its log line "new leader-1 not found in cache"), while a new
    producer delivers at once. Queued records are taken back first; records already sent get
    ``settle_s`` for their answer, then are taken back too, and one of those may then be
    written twice (at-least-once, as after any retry). Failures that came before the move stay
    with the new producer, for its caller to see.
    """
    prod.purge(in_queue=True, in_flight=False)
    prod.flush(settle_s)  # serves the purged records' callbacks; in-flight ones get answered
    prod.purge(in_queue=True, in_flight=True)
    prod.poll(0)
    taken = prod.take_failures()
    new = make()
    moved = [f for f in taken if f.code in PURGED]
    new.failed.extend(f for f in taken if f.code not in PURGED)
    for f in moved:
        produce_or_wait(new, f.topic, f.value, f.key)
    log.warning("a stalled producer's %d records were moved to a new producer", len(moved))
    return new


def _failures(prod: Any) -> list[FailedDelivery]:
    take = getattr(prod, "take_failures", None)
    return take() if take is not None else []


def _describe(failures: list[FailedDelivery]) -> str:
    first = failures[0]
    return f"{len(failures)} records failed delivery (first: {first.error} on {first.topic})"


def flush_or_raise(prod: Any, timeout_s: float = 30.0, waited_s: float = 0.0) -> None:
    """Flush the producer; raise :class:`DeliveryError` if anything is still queued after
    ``timeout_s`` or if any record's delivery failed since the last call (``waited_s``: how
    long the caller already waited, for the message)."""
    remaining = prod.flush(timeout_s)
    failures = _failures(prod)
    if failures:
        raise DeliveryError(_describe(failures))
    if remaining:
        raise DeliveryError(f"{remaining} records not delivered after {waited_s + timeout_s:.0f} s")


#: Kafka error names that pass on their own: a coordinator or a leader moving or loading, a
#: high watermark not caught up after a leader change, a broker restarting.
TRANSIENT_ERRORS = frozenset(
    "NOT_COORDINATOR COORDINATOR_LOAD_IN_PROGRESS COORDINATOR_NOT_AVAILABLE _WAIT_COORD "
    "OFFSET_NOT_AVAILABLE LEADER_NOT_AVAILABLE NOT_LEADER_FOR_PARTITION _TRANSPORT "
    "_TIMED_OUT _ALL_BROKERS_DOWN _DESTROY_BROKER".split()
)


def retry_transient(
    fn: Callable[..., _T], *args: Any, timeout_s: float = 60.0, **kwargs: Any
) -> _T:
    """``fn(*args, **kwargs)``, called again every 0.5 s for up to ``timeout_s`` while Kafka
    answers with an error that passes on its own (:data:`TRANSIENT_ERRORS`, or one it marks
    retriable); any other error, or the last one, is raised.

    >>> retry_transient(lambda a, b=0: a + b, 1, b=2)
    3
    """
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn(*args, **kwargs)
        except KafkaException as exc:
            err = exc.args[0]
            passes = err.name() in TRANSIENT_ERRORS or err.retriable()
            if not passes or time.monotonic() > deadline:
                raise
            log.info("%s; asking again", err)
            time.sleep(0.5)


def deliver_or_retry(
    prod: Any,
    should_stop: Callable[[], bool] = lambda: False,
    wait_s: float = 10.0,
    max_backoff_s: float = 5.0,
    on_retry: Callable[[int], None] | None = None,
    stall_s: float | None = None,
) -> None:
    """Return once Kafka has acknowledged every record produced so far.

    Records whose delivery failed for a reason that may pass (a broker down, not enough
    in-sync replicas, a timeout) are sent again with backoff, for as long as it takes: the
    caller's offsets must not move before its outputs are durable. Raises
    :class:`DeliveryError` for a failure no retry can mend (a record too large), or when
    ``should_stop()`` turns true while records are still undelivered; and
    :class:`ProducerStalledError` when ``stall_s`` is given and a :class:`TrackedProducer`
    delivered nothing at all for that long: after a broker restart, librdkafka was seen to
    keep a producer that never delivered again (re-sent records timed out in it for minutes
    while the worker's other clients had reconnected), and only a new producer mends that.
    """
    delay = 0.25
    delivered = getattr(prod, "delivered_total", None)
    progress_at = time.monotonic()
    while True:
        remaining = prod.flush(wait_s)
        failures = _failures(prod)
        if not remaining and not failures:
            return
        permanent = [f for f in failures if f.permanent]
        if permanent:
            raise DeliveryError(_describe(permanent) + "; a retry cannot succeed")
        if should_stop():
            raise DeliveryError(
                f"stopping with {remaining + len(failures)} records undelivered "
                "(their inputs are not acknowledged and will be processed again)"
            )
        now = time.monotonic()
        if getattr(prod, "delivered_total", None) != delivered:
            delivered, progress_at = getattr(prod, "delivered_total", None), now
        elif stall_s is not None and delivered is not None and now - progress_at > stall_s:
            raise ProducerStalledError(
                f"no record delivered for {now - progress_at:.0f} s with "
                f"{remaining + len(failures)} waiting: this producer is replaced (their inputs "
                "are not acknowledged and will be processed again)"
            )
        if not failures:  # still in librdkafka's hands: it retries them itself
            log.warning("%d records still undelivered after %.0f s; waiting", remaining, wait_s)
            continue
        log.warning("%s; sending them again in %.2f s", _describe(failures), delay)
        if on_retry is not None:
            on_retry(len(failures))
        time.sleep(delay)
        delay = min(2 * delay, max_backoff_s)
        for f in failures:
            produce_or_wait(prod, f.topic, f.value, f.key)
