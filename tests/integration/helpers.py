"""Helpers for integration tests: consumer-group progress and a real text corpus."""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition

from retrieval.corpus import stdlib_corpus
from streams.kafka import admin_client, consumer
from streams.settings import Settings

__all__ = ["group_lag", "stdlib_corpus", "wait_caught_up"]


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` that ``group`` has not committed yet (-1: no commit yet)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    bootstrap = settings.kafka.bootstrap_servers
    admin = admin_client(settings, bootstrap)
    n = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(n)])]
    result = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
    committed = {tp.partition: tp.offset for tp in result.topic_partitions}
    c = consumer(settings, bootstrap, None)
    try:
        lag = 0
        for p in range(n):
            _low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            done = committed.get(p, -1001)
            if high == 0:
                continue
            if done < 0:
                return -1
            lag += max(0, high - done)
        return lag
    finally:
        c.close()


def wait_caught_up(settings: Settings, group: str, topic: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    lag = -1
    while time.monotonic() < deadline:
        lag = group_lag(settings, group, topic)
        if lag == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"group {group} still {lag} behind on {topic} after {timeout_s} s")
