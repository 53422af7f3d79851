"""BM25 with collection-wide statistics (retrieval/bm25.py) on a real milvus-lite store: the
same ranking as Milvus's own where it has one segment, and a fresh chunk ranked as the same
text is ranked once merged, where milvus-lite's per-segment statistics rank it far down."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from retrieval.bm25 import TermStats, terms
from retrieval.corpus import stdlib_corpus
from retrieval.store import ChunkRow, VectorStore


def rows(docs: list[dict[str, str]], rng: random.Random) -> list[ChunkRow]:
    out = []
    for d in docs:
        vector = [rng.gauss(0, 1) for _ in range(8)]
        out.append(ChunkRow(f"{d['id']}#0", d["id"], 0, d["text"][:1500], vector))
    return out


@pytest.fixture()
def store(tmp_path: Path) -> VectorStore:
    return VectorStore(os.path.join(tmp_path, "bm25.db"), dim=8, bm25=True)


def test_one_segment_ranks_as_milvus_does(store: VectorStore) -> None:
    rng = random.Random(3)
    docs = stdlib_corpus(200, min_chars=150)
    store.upsert(rows(docs, rng))
    store.flush()
    assert store.term_stats is not None and store.term_stats.chunks == len(docs)
    for d in rng.sample(docs, 15):
        question = " ".join(d["text"].split()[3:12])
        raw = store.search_many(None, [question], k=10, mode="sparse")[0]
        ours = store.term_stats.rescore(question, raw, 10)
        assert [h.chunk_id for h in ours] == [h.chunk_id for h in raw]
        for a, b in zip(ours, raw, strict=True):
            assert a.score == pytest.approx(b.score, rel=1e-3)


def test_a_fresh_chunk_is_ranked_as_it_will_be_once_merged(store: VectorStore) -> None:
    rng = random.Random(5)
    docs = stdlib_corpus(200, min_chars=150)
    store.upsert(rows(docs, rng))
    store.flush()
    b = docs[10]
    question = " ".join(b["text"].split()[2:14])
    before = store.search(text=question, k=5, mode="sparse")
    assert before[0].doc_id == b["id"]
    copy = ChunkRow("copy#0", "copy", 0, b["text"][:1500], [rng.gauss(0, 1) for _ in range(8)])
    store.upsert([copy])
    store.delete_doc(b["id"])
    raw = store.search_many(None, [question], k=5, mode="sparse")[0]
    raw_copy = [h.score for h in store.search_many(None, [question], k=1, mode="sparse",
                                                   filter='doc_id == "copy"')[0]]  # fmt: skip
    assert raw_copy and raw_copy[0] < before[0].score / 3  # milvus-lite's own: skewed
    assert raw[0].doc_id != "copy"  # milvus-lite alone does not rank it first
    # A hybrid search's BM25 side, rescored over both sides' candidates (the dense side
    # finds the copy): the copy scores what the original scored, and comes first.
    dense = store.search(copy.vector, k=20)
    after = store.rescore_sparse([question], [dense], [raw], 20)[0]
    assert after[0].doc_id == "copy"
    assert after[0].score == pytest.approx(before[0].score, rel=0.02)
    hybrid = store.search(copy.vector, k=3, text=question, mode="hybrid")
    assert hybrid[0].doc_id == "copy"
    assert hybrid[0].score == pytest.approx(2 / 61)  # RRF: first on both sides


def test_statistics_follow_upserts_deletes_and_a_reopen(tmp_path: Path) -> None:
    rng = random.Random(9)
    docs = stdlib_corpus(60, min_chars=150)
    path = os.path.join(tmp_path, "s.db")
    with VectorStore(path, dim=8, bm25=True) as store:
        store.upsert(rows(docs, rng))
        store.upsert(rows([{**docs[0], "text": "a rewritten text about kafka"}], rng))
        store.delete_chunks([f"{docs[1]['id']}#0"])
        store.delete_doc(docs[2]["id"])
        stats = store.term_stats
        assert stats is not None
        kept = [{**docs[0], "text": "a rewritten text about kafka"}, *docs[3:]]
        expected = TermStats()
        expected.add(d["text"][:1500] for d in kept)
        assert (stats.chunks, stats.length, stats.df) == (
            expected.chunks,
            expected.length,
            expected.df,
        )
        before = (stats.chunks, stats.length, dict(stats.df))
    with VectorStore(path, dim=8, bm25=True) as reopened:  # rebuilt from the collection
        assert reopened.term_stats is not None
        got = reopened.term_stats
        assert (got.chunks, got.length, got.df) == before


def test_the_term_table_is_bounded_in_bytes() -> None:
    stats = TermStats(max_bytes=20_000)
    stats.add(f"word{i} common" for i in range(2_000))
    assert stats.bytes <= 20_000 and stats.pruned
    assert stats.df["common"] == 2_000  # the frequent terms stay
    assert stats.idf("word5") == pytest.approx(stats.idf("never-seen"))  # forgotten: df 1


def test_terms_are_the_bm25_fields() -> None:
    assert terms("Which is the best way to sort? numpy.argsort, lru_cache") == [
        "best", "way", "sort", "numpy", "argsort", "lru_cache"
    ]  # fmt: skip


def test_without_the_statistics_searches_are_milvus_own(tmp_path: Path) -> None:
    rng = random.Random(11)
    docs = stdlib_corpus(40, min_chars=150)
    with VectorStore(os.path.join(tmp_path, "plain.db"), dim=8, bm25=True,
                     global_bm25=False) as store:  # fmt: skip
        store.upsert(rows(docs, rng))
        assert store.term_stats is None
        question = " ".join(docs[3]["text"].split()[2:10])
        raw = store.search_many(None, [question], k=3, mode="sparse")[0]
        assert [h.chunk_id for h in store.search(text=question, k=3, mode="sparse")] == [
            h.chunk_id for h in raw
        ]
        assert len(store.search(rng_vector(rng), k=3, text=question, mode="hybrid")) == 3


def rng_vector(rng: random.Random) -> list[float]:
    return [rng.gauss(0, 1) for _ in range(8)]
