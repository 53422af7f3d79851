"""Kafka client construction from settings, and finding (or starting) the broker."""

from __future__ import annotations

import logging
from typing import Any

from streams.broker import LocalBroker
from streams.exceptions import BrokerError, DeliveryError
from streams.settings import Settings
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

__all__ = [
    "admin_client",
    "consumer",
    "flush_or_raise",
    "produce_or_wait",
    "producer",
    "resolve_bootstrap",
]


def resolve_bootstrap(settings: Settings, start: bool = True) -> str:
    """The configured cluster, else the embedded broker (started when ``start`` is true)."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
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


def admin_client(settings: Settings, bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(settings.kafka.client_config(bootstrap))


def producer(settings: Settings, bootstrap: str, **extra: Any) -> Any:
    """An idempotent producer (acks=all): a record is acknowledged only once it is durable."""
    from confluent_kafka import Producer

    conf = settings.kafka.client_config(bootstrap)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": MAX_MESSAGE_BYTES,
            # A broker that stops hands its partitions to leader -1; librdkafka 2.16 sometimes
            # never looks for the leader again until its periodic metadata refresh (5 min by
            # default), and the records wait in its queue that long after the broker is back.
            "topic.metadata.refresh.interval.ms": 10_000,
        }
    )
    conf.update(extra)
    return Producer(conf)


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
        }
    )
    conf.update(extra)
    return Consumer(conf)


def produce_or_wait(
    prod: Any, topic: str, value: bytes, key: bytes | None = None, **kwargs: Any
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


def flush_or_raise(prod: Any, timeout_s: float = 30.0) -> None:
    """Flush the producer; raise if anything is still undelivered after ``timeout_s``."""
    remaining = prod.flush(timeout_s)
    if remaining:
        raise DeliveryError(f"{remaining} records not delivered after {timeout_s:.0f} s")
