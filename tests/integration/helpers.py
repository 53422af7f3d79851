"""Helpers for integration tests: consumer-group progress and a real text corpus."""

from __future__ import annotations

import importlib
import inspect
import time
from typing import Any

from confluent_kafka import TopicPartition

from streams.kafka import admin_client, consumer
from streams.settings import Settings


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


def stdlib_corpus(limit: int = 400, min_chars: int = 200) -> list[dict[str, Any]]:
    """Docstrings of Python's standard library: real text that no one in the project wrote."""
    modules = [
        "json", "csv", "heapq", "bisect", "collections", "functools", "itertools", "pathlib",
        "shutil", "tempfile", "logging", "argparse", "subprocess", "threading", "queue",
        "socket", "sqlite3", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets",
        "random", "statistics", "decimal", "fractions", "datetime", "calendar", "textwrap",
        "difflib", "string", "re", "struct", "codecs", "uuid", "urllib.parse", "http.client",
        "email.message", "xml.etree.ElementTree", "contextlib", "dataclasses", "enum", "typing",
        "asyncio.queues", "concurrent.futures", "multiprocessing.pool", "pickle", "copy",
        "pprint", "operator", "weakref", "abc", "io", "os.path", "glob", "fnmatch", "sched",
    ]  # fmt: skip
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in modules:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            doc_id = f"{name}.{attr}"
            if len(doc) < min_chars or doc in seen:
                continue
            seen.add(doc)
            docs.append(
                {
                    "id": doc_id,
                    "op": "upsert",
                    "text": doc,
                    "title": doc_id,
                    "source": name,
                    "meta": {"module": name, "kind": type(obj).__name__},
                }
            )
            if len(docs) >= limit:
                return docs
    return docs
