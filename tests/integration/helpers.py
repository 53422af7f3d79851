"""Helpers for integration tests: consumer-group progress, a real text corpus, what a Milvus
collection holds compared with what the docs should have produced, predictions and the
learner's checkpoint."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import closing
from typing import Any

import orjson

from retrieval.corpus import stdlib_corpus
from streams import status
from streams.contracts import FINAL_JOB_STATUSES
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from trainers.online.state import load_checkpoint

__all__ = [
    "wait_job_final",
    "collection_state",
    "expected_chunks",
    "group_lag",
    "stdlib_corpus",
    "wait_caught_up",
    "wait_checkpoint",
    "wait_predicted",
]


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` that ``group`` has not committed yet (-1: no commit yet)."""
    lag = status.group_lag(settings, settings.kafka.bootstrap_servers, group, topic).lag
    return -1 if lag is None else lag


def wait_caught_up(settings: Settings, group: str, topic: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    lag = -1
    while time.monotonic() < deadline:
        lag = group_lag(settings, group, topic)
        if lag == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"group {group} still {lag} behind on {topic} after {timeout_s} s")


def expected_chunks(
    docs: Iterable[Mapping[str, Any]], chunk_tokens: int, overlap: int
) -> dict[str, str]:
    """chunk id → text, by running the worker's chunker over the final version of each doc."""
    from retrieval.chunking import TokenChunker
    from retrieval.embedding import TextEmbedder

    chunker = TokenChunker(TextEmbedder().tokenizer, chunk_tokens, overlap)
    out = {}
    for doc in docs:
        for chunk in chunker.chunk(doc["id"], doc["text"]):
            out[chunk.chunk_id] = chunk.text
    return out


_READ_STATE = """
import sys, orjson
from retrieval.store import VectorStore
store = VectorStore(sys.argv[1], collection=sys.argv[2], dim=384)
rows = store.get(sorted(store.all_chunk_ids()))
sys.stdout.buffer.write(orjson.dumps({r["chunk_id"]: r["text"] for r in rows}))
"""


def collection_state(uri: str, collection: str) -> dict[str, str]:
    """chunk id → text of every row, read in a child process: a milvus-lite file is one
    process's (its lock is held until that process exits), so the worker must be stopped;
    a Milvus server URI can be read at any time."""
    out = subprocess.run(
        [sys.executable, "-c", _READ_STATE, uri, collection],
        capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    state: dict[str, str] = orjson.loads(out.stdout)
    return state


def wait_predicted(
    settings: Settings, ids: set[str], timeout_s: float = 120
) -> dict[str, list[dict[str, Any]]]:
    """Predictions by event id, once every id in ``ids`` has one (``timeout_s`` without a new
    prediction: fail)."""
    client = LiveLearnClient(settings)
    seen: dict[str, list[dict[str, Any]]] = {}
    missing = set(ids)
    with closing(client.subscribe("predictions", from_beginning=True, timeout_s=timeout_s)) as it:
        for p in it:
            seen.setdefault(p["id"], []).append(p)
            missing.discard(p["id"])
            if not missing:
                break
    assert not missing, f"{len(missing)} events never predicted, e.g. {sorted(missing)[:5]}"
    return seen


def wait_checkpoint(settings: Settings, n_records: int, timeout_s: float = 60) -> dict[str, Any]:
    """The learner's checkpoint once its offsets cover ``n_records`` records of ``events``."""
    path = settings.data_dir / "online" / f"{settings.models.name}.ckpt"
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = load_checkpoint(path)
        if state is not None and sum(state["offsets"].values()) >= n_records:
            return state
        time.sleep(0.5)
    raise AssertionError(
        f"checkpoint never covered {n_records} records: {state and state['offsets']}"
    )


def wait_job_final(client: LiveLearnClient, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    """The ``model-updates`` record that ends ``job_id`` (promoted, rejected or failed)."""
    for update in client.subscribe("model-updates", from_beginning=True, timeout_s=timeout_s):
        if update["job_id"] == job_id and update["status"] in FINAL_JOB_STATUSES:
            return update
    raise AssertionError(f"no final update for {job_id} within {timeout_s:.0f} s")
