"""ChunkIndexer: last op wins, shorter updates prune, deletes remove, replays change nothing."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.chunking import TokenChunker
from retrieval.corpus import stdlib_corpus
from retrieval.embedding import resolve_model_path
from retrieval.indexing import ChunkIndexer, IndexReport, latest_ops, plan_index_ops
from retrieval.store import VectorStore

DIM = 32


def stdlib_docs(limit: int) -> list[dict[str, Any]]:
    """Standard-library docstrings as ``docs`` records, each with its own timestamp."""
    docs = stdlib_corpus(limit, min_chars=150)
    return [dict(d, ts=1_700_000_000.0 + i) for i, d in enumerate(docs)]


class HashingEmbedder:
    """Deterministic bag-of-words vectors; counts its calls (the indexer must batch)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, zlib.crc32(word.encode()) % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


@pytest.fixture(scope="module")
def chunker() -> TokenChunker:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    return TokenChunker(tokenizer, chunk_tokens=64, overlap_tokens=16)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    s = VectorStore(str(tmp_path / "idx.db"), dim=DIM)
    yield s
    s.close()


def expected_state(
    chunker: TokenChunker, final: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    out = {}
    for doc in final.values():
        for c in chunker.chunk(doc["id"], doc["text"], doc.get("title")):
            out[c.chunk_id] = {
                "doc_id": doc["id"],
                "n": c.n,
                "text": c.text,
                "title": doc["title"],
                "source": doc["source"],
                "meta": doc["meta"],
                "ts": doc["ts"],
            }
    return out


def stored_state(store: VectorStore) -> dict[str, dict[str, Any]]:
    rows = store.get(sorted(store.all_chunk_ids()))
    return {r.pop("chunk_id"): r for r in rows}


# -- planning (pure) ------------------------------------------------------------------------


def test_last_op_per_id_wins_in_order() -> None:
    docs = [
        {"id": "a", "op": "upsert", "text": "x"},
        {"id": "b", "op": "upsert", "text": "y"},
        {"id": "a", "op": "upsert", "text": "z"},
        {"id": "c", "op": "delete"},
        {"id": "b", "op": "delete"},
    ]
    assert [(d["id"], d["op"]) for d in latest_ops(docs)] == [
        ("a", "upsert"),
        ("c", "delete"),
        ("b", "delete"),
    ]
    assert latest_ops(docs)[0]["text"] == "z"


def test_plan_prunes_shorter_update_and_deletes() -> None:
    chunker = TokenChunker(None, chunk_tokens=3, overlap_tokens=0)
    existing = {"a": {"a#0", "a#1", "a#2", "a#3"}, "b": {"b#0", "b#1"}}
    plan = plan_index_ops(
        [
            {"id": "a", "op": "upsert", "text": "one two three four five"},
            {"id": "b", "op": "delete"},
            {"id": "new", "op": "upsert", "text": "fresh"},
            {"id": "empty", "op": "upsert", "text": "  "},
        ],
        chunker,
        existing,
    )
    assert [c.chunk_id for c in plan.chunks] == ["a#0", "a#1", "new#0"]
    assert plan.remove == ["a#2", "a#3", "b#0", "b#1"]
    assert plan.deleted_docs == ["b"]
    assert [p.doc["id"] for p in plan.upserts] == ["a", "new", "empty"]


def test_plan_of_empty_text_removes_all_chunks() -> None:
    plan = plan_index_ops(
        [{"id": "a", "op": "upsert", "text": ""}], TokenChunker(None, 3, 1), {"a": {"a#0"}}
    )
    assert plan.chunks == [] and plan.remove == ["a#0"]


# -- against milvus-lite ----------------------------------------------------------------------


def test_index_update_delete_and_replay(chunker: TokenChunker, store: VectorStore) -> None:
    rng = random.Random(3)
    docs = stdlib_docs(200)
    assert len(docs) == 200
    embedder = HashingEmbedder()
    indexer = ChunkIndexer(chunker, embedder, store)
    final = {d["id"]: d for d in docs}
    history: list[dict[str, Any]] = []

    for i in range(0, 200, 50):
        batch = docs[i : i + 50]
        report = indexer.apply(batch)
        history.extend(batch)
        assert report.upserted_docs == 50 and report.chunks_removed == 0
    assert embedder.calls == [n for n in embedder.calls if n > 50]  # one call per batch
    assert len(embedder.calls) == 4
    assert stored_state(store) == expected_state(chunker, final)

    # Updates: half of them much shorter (fewer chunks), half longer; then deletes.
    multi = [d for d in docs if len(chunker.chunk(d["id"], d["text"])) >= 3]
    updated = rng.sample(multi, 20)
    updates = []
    for i, d in enumerate(updated):
        text = d["text"][:80] if i % 2 else d["text"] + " Revised edition."
        updates.append(dict(d, text=f"UPDATED {i}: {text}", ts=d["ts"] + 1))
    deletes = [{"id": d["id"], "op": "delete"} for d in rng.sample(docs, 10)]
    batch = updates + deletes
    report = indexer.apply(batch)
    history.extend(batch)
    for u in updates:
        final[u["id"]] = u
    for d in deletes:
        final.pop(d["id"], None)
    assert report.chunks_removed >= 10 * 2  # each short update drops at least 2 chunks
    state = stored_state(store)
    assert state == expected_state(chunker, final)
    assert not {cid.split("#")[0] for cid in state} & {d["id"] for d in deletes}

    # Replaying everything, in one batch and again in small batches, changes nothing.
    vectors_before = {
        r["chunk_id"]: r for r in store._client.get(store.collection, ids=list(state))
    }
    report = indexer.apply(history)
    assert report.chunks_removed == 0
    for i in range(0, len(history), 37):
        indexer.apply(history[i : i + 37])
    assert stored_state(store) == state
    vectors_after = {r["chunk_id"]: r for r in store._client.get(store.collection, ids=list(state))}
    assert vectors_after == vectors_before


def test_upsert_then_delete_in_one_batch(chunker: TokenChunker, store: VectorStore) -> None:
    indexer = ChunkIndexer(chunker, HashingEmbedder(), store)
    doc = {"id": "x", "op": "upsert", "text": "some text", "title": "", "source": "", "meta": {}}
    indexer.apply([doc])
    report = indexer.apply([doc, {"id": "x", "op": "delete"}, {"id": "y", "op": "delete"}])
    assert report == IndexReport(
        upserted_docs=0,
        deleted_docs=2,
        chunks_written=0,
        chunks_removed=1,
        encode_seconds=report.encode_seconds,
        store_seconds=report.store_seconds,
    )
    assert store.count() == 0
    assert indexer.apply([]) == IndexReport()


def test_search_finds_updated_text_with_real_store(
    chunker: TokenChunker, store: VectorStore
) -> None:
    embedder = HashingEmbedder()
    indexer = ChunkIndexer(chunker, embedder, store)
    indexer.apply([{"id": "a", "op": "upsert", "text": "alpha beta gamma", "title": "A"}])
    indexer.apply([{"id": "a", "op": "upsert", "text": "delta epsilon zeta", "title": "A"}])
    query = embedder.encode(["A\ndelta epsilon zeta"])[0]
    hits = store.search(query, k=1)
    assert hits[0].chunk_id == "a#0" and hits[0].text == "delta epsilon zeta"
    assert hits[0].title == "A" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_sub_batches_are_searchable_before_the_batch_ends(
    chunker: TokenChunker, store: VectorStore
) -> None:
    # A large batch is embedded and written 8 chunks at a time: the first documents are in
    # the store while the rest is still being embedded, the gate's pause runs between two
    # sub-batches (never before the first), and the result is the same as one big write.
    docs = stdlib_docs(30)
    seen_in_store: list[int] = []
    pauses: list[int] = []

    class Watching(HashingEmbedder):
        def encode(self, texts: Sequence[str]) -> np.ndarray:
            seen_in_store.append(store.count())
            return super().encode(texts)

    embedder = Watching()
    indexer = ChunkIndexer(chunker, embedder, store, embed_batch=8,
                           pause=lambda: pauses.append(store.count()))  # fmt: skip
    report = indexer.apply(docs)
    n = report.chunks_written
    assert n > 16 and embedder.calls == [8] * (n // 8) + ([n % 8] if n % 8 else [])
    assert seen_in_store == [8 * i for i in range(len(embedder.calls))]
    assert pauses == seen_in_store[1:]
    assert stored_state(store) == expected_state(chunker, {d["id"]: d for d in docs})
    assert report.vectors.shape == (n, DIM)
