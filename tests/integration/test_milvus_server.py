"""Two workers indexing and answering at once against a real Milvus server (issue 19).

The server is the standalone Milvus 2.3.5 that the ``milvus`` wheel on PyPI ships (the newest
release served here; "v2.3.5-lite", a real Milvus with its embedded etcd and local storage,
one process: not a Milvus cluster). It predates BM25 (Milvus 2.5), so livelearn makes the
collection dense only and hybrid search runs as dense search (README, "Milvus without BM25").
Clients use only the public pymilvus API, as against any Milvus.

Two ``livelearn worker`` children share the ``docs`` and ``queries`` partitions (one faust
consumer group); one of them is killed (kill -9) while documents and questions keep coming.
Checked: both workers indexed, the collection ends exactly as the chunker says, every question
(those asked during the loss too) was answered, nothing dead-lettered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings
from streams.topics import ensure_topics, topic_specs
from tests.conftest import make_settings
from tests.integration.helpers import (
    collection_state,
    expected_chunks,
    stdlib_corpus,
    wait_caught_up,
)
from tests.integration.worker import WorkerProcess

CHUNK_TOKENS, OVERLAP = 64, 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from milvus import MilvusServer  # the `milvus` wheel: Milvus standalone 2.3.5

    server = MilvusServer()
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-standalone")))
    server.start()  # picks free ports for its proxy, etcd and metrics
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()


def _members_with(settings: Any, group: str, topic: str) -> int:
    from confluent_kafka import KafkaException

    admin = admin_client(settings, settings.kafka.bootstrap_servers)
    try:
        described = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except KafkaException:  # the group is still forming (NOT_COORDINATOR, COORDINATOR_LOAD...)
        return 0
    return sum(
        1
        for m in described.members
        if any(tp.topic == topic for tp in m.assignment.topic_partitions)
    )


def test_two_workers_index_and_answer_and_one_is_lost(
    tmp_path: Path, kafka_bootstrap: str, milvus_uri: str
) -> None:
    s = make_settings(
        tmp_path, kafka_bootstrap, partitions=4,
        models=ModelSettings(chunk_tokens=CHUNK_TOKENS, chunk_overlap=OVERLAP, learner=False),
    )  # fmt: skip
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    group = f"{s.kafka.group_prefix}-worker"
    env = {"LIVELEARN_MILVUS__URI": milvus_uri}
    client = LiveLearnClient(s)
    docs = stdlib_corpus(150, min_chars=150)
    first, second = docs[:60], docs[60:]
    questions = [
        {"id": f"q{i}", "question": d["text"][:120], "k": 3} for i, d in enumerate(docs[::10])
    ]
    a = WorkerProcess(s, tmp_path / "a.log", env)
    b = WorkerProcess(s, tmp_path / "b.log", env)
    starting = [threading.Thread(target=w.start) for w in (a, b)]
    for t in starting:
        t.start()
    for t in starting:
        t.join(300)
    try:
        deadline = time.monotonic() + 120
        while _members_with(s, group, s.topics.docs) < 2:  # both hold docs partitions
            assert time.monotonic() < deadline, "the two workers never shared docs"
            time.sleep(0.5)
        for d in first:
            client.produce("docs", d)
        client.flush()
        wait_caught_up(s, group, s.topics.docs, timeout_s=180)
        for q in questions[:5]:  # asked once there is something to find
            client.produce("queries", q)

        # Documents and questions keep coming while worker b dies without a word.
        for i, d in enumerate(second):
            client.produce("docs", d)
            if i == 20:
                client.flush()
                b.kill()
                killed = time.monotonic()
            if i % 9 == 0 and 5 + i // 9 < len(questions):
                client.produce("queries", questions[5 + i // 9])
            time.sleep(0.05)
        for q in questions[5 + len(second) // 9 + 1 :]:
            client.produce("queries", q)
        client.flush()
        wait_caught_up(s, group, s.topics.docs, timeout_s=180)
        wait_caught_up(s, group, s.topics.queries, timeout_s=180)
        recovered_s = time.monotonic() - killed
        answers = {
            r["id"]: r for r in client.subscribe("answers", from_beginning=True, timeout_s=10)
        }
        state = collection_state(milvus_uri, s.milvus.collection)  # a server: read it live
        assert a.proc is not None and a.proc.poll() is None
    finally:
        a.stop()
        b.stop()
    assert state == expected_chunks(docs, CHUNK_TOKENS, OVERLAP)
    assert set(answers) == {q["id"] for q in questions}
    assert all(r["contexts"] for r in answers.values())
    for topic in (s.topics.docs, s.topics.queries):
        assert list(client.subscribe(s.topics.dlq(topic), from_beginning=True, timeout_s=2)) == []
    print(
        f"\nmilvus server: {len(docs)} docs, {len(questions)} questions over two workers; one "
        f"killed, everything caught up {recovered_s:.1f} s later"
    )
