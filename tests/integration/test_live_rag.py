"""Live RAG through real Kafka and milvus-lite: upserts, updates, deletes, replays, crashes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings
from tests.conftest import make_settings
from tests.integration.helpers import (
    collection_state,
    expected_chunks,
    group_lag,
    stdlib_corpus,
    wait_caught_up,
)
from tests.integration.worker import WorkerProcess

CHUNK_TOKENS, OVERLAP = 64, 16


@pytest.fixture
def rag_settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    from streams.kafka import admin_client
    from streams.topics import ensure_topics, topic_specs

    s = make_settings(
        tmp_path,
        kafka_bootstrap,
        models=ModelSettings(chunk_tokens=CHUNK_TOKENS, chunk_overlap=OVERLAP),
    )
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    return s


def _with_group(settings: Settings, prefix: str) -> Settings:
    kafka = settings.kafka.model_copy(update={"group_prefix": prefix})
    return settings.model_copy(update={"kafka": kafka})


def _expected(final: dict[str, dict[str, Any]]) -> dict[str, str]:
    return expected_chunks(final.values(), CHUNK_TOKENS, OVERLAP)


def _collection_state(settings: Settings) -> dict[str, str]:
    return collection_state(settings.milvus_uri, settings.milvus.collection)


def _produce_story(
    client: LiveLearnClient,
    seed: int = 7,
    n: int = 200,
    updates: int = 20,
    deletes: int = 10,
    pause: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """``n`` docs, then ``updates`` updates (half of them much shorter), then ``deletes``
    deletes; ``pause`` is called after the first third of the docs."""
    rng = random.Random(seed)
    docs = stdlib_corpus(n, min_chars=150)
    assert len(docs) == n
    final = {d["id"]: d for d in docs}
    for i, d in enumerate(docs):
        if pause is not None and i == n // 3:
            client.flush()
            pause()
        client.produce("docs", d)
    updated = rng.sample(docs, updates)
    for i, d in enumerate(updated):
        text = d["text"][: len(d["text"]) // 4] if i % 2 else d["text"] + " Revised edition."
        new = dict(d, text=f"UPDATED {i}: {text}")
        final[d["id"]] = new
        client.produce("docs", new)
    for d in rng.sample([d for d in docs if d not in updated], deletes):
        client.produce("docs", {"id": d["id"], "op": "delete"})
        del final[d["id"]]
    client.flush()
    return final


def test_docs_updates_deletes_and_replay(rag_settings: Settings, tmp_path: Path) -> None:
    s = rag_settings
    client = LiveLearnClient(s)
    final = _produce_story(client)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs)
        # An updated doc is found by its new text; a deleted one is never returned.
        updated = next(d for d in final.values() if d["text"].startswith("UPDATED 0"))
        hits = worker.get(f"/search?q={quote(updated['text'][:200])}&k=3")["hits"]
        assert hits[0]["doc_id"] == updated["id"] and "UPDATED 0" in hits[0]["text"]
        deleted = {d["id"] for d in stdlib_corpus(200, min_chars=150)} - set(final)
        for doc_id in deleted:
            text = next(d["text"] for d in stdlib_corpus(200, 150) if d["id"] == doc_id)
            hits = worker.get(f"/search?q={quote(text[:200])}&k=10")["hits"]
            assert doc_id not in {h["doc_id"] for h in hits}
        answer = client.ask(updated["text"][:120], k=3, timeout_s=60)
        assert answer["contexts"][0]["doc_id"] == updated["id"]
    finally:
        worker.stop()
    expected = _expected(final)
    state = _collection_state(s)
    assert set(state) == set(expected)
    assert state == expected

    # Replay the whole topic from offset 0 (a new consumer group): nothing changes.
    replay = WorkerProcess(_with_group(s, s.kafka.group_prefix + "-replay"), tmp_path / "r.log")
    replay.start()
    try:
        wait_caught_up(s, f"{s.kafka.group_prefix}-replay-worker", s.topics.docs)
    finally:
        replay.stop()
    assert _collection_state(s) == expected


def test_killed_indexer_restarts_to_the_same_state(rag_settings: Settings, tmp_path: Path) -> None:
    s = rag_settings
    client = LiveLearnClient(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    group = f"{s.kafka.group_prefix}-worker"
    # The first third is indexed and committed; the rest arrives, and the plug is pulled
    # while the worker is in the middle of it (embedding takes seconds here).
    final = _produce_story(client, seed=11, n=90, updates=10, deletes=5,
                           pause=lambda: wait_caught_up(s, group, s.topics.docs))  # fmt: skip
    # 0.3 s: the worker has begun the rest but not committed all of it (commits come once a
    # second; with bfloat16 and adaptive batches the 60 docs took under 1.5 s once in CI).
    time.sleep(0.3)
    assert group_lag(s, group, s.topics.docs) > 0  # mid-stream
    worker.kill()
    worker = WorkerProcess(s, tmp_path / "worker2.log").start()
    try:
        wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs)
    finally:
        worker.stop()
    assert _collection_state(s) == _expected(final)
