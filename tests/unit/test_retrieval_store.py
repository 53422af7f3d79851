"""VectorStore on milvus-lite: schema, mismatch, CRUD, filters, consistency, truncation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrieval.exceptions import (
    CollectionMismatchError,
    InvalidArgumentError,
    VectorStoreError,
    VectorStoreUnavailableError,
)
from retrieval.store import (
    TEXT_MAX_BYTES,
    ChunkRow,
    VectorStore,
    build_filter,
    truncate_utf8,
)

DIM = 8


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _row(doc: str, n: int, seed: int, **kw: object) -> ChunkRow:
    return ChunkRow(f"{doc}#{n}", doc, n, f"text of {doc} {n}", _unit(seed), **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    s = VectorStore(str(tmp_path / "m.db"), collection="chunks", dim=DIM)
    yield s
    s.close()


def test_creates_empty_collection_with_strong_consistency(store: VectorStore) -> None:
    assert store.count() == 0
    assert store.all_chunk_ids() == set()
    info = store._client.describe_collection("chunks")
    assert info["consistency_level_name"] == "Strong"
    names = {f["name"] for f in info["fields"]}
    assert names == {"chunk_id", "doc_id", "n", "text", "title", "source", "meta", "ts", "vector"}


def test_reopen_keeps_rows_and_mismatch_is_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "m.db")
    with VectorStore(uri, collection="c", dim=DIM) as s:
        s.upsert([_row("a", 0, 1)])
    with VectorStore(uri, collection="c", dim=DIM) as s:
        assert s.count() == 1
    with pytest.raises(CollectionMismatchError, match=r"8-d vectors but dim=16.*drop_collection"):
        VectorStore(uri, collection="c", dim=16)
    with pytest.raises(CollectionMismatchError, match="metric COSINE but metric='L2'"):
        VectorStore(uri, collection="c", dim=DIM, metric="L2")
    # The refused stores released the file: it can be opened again.
    with VectorStore(uri, collection="other", dim=16) as s:
        assert s.count() == 0


def test_upsert_search_replace_and_delete(store: VectorStore) -> None:
    rows = [_row(f"d{i}", n, seed=10 * i + n) for i in range(5) for n in range(3)]
    assert store.upsert(rows) == 15
    hits = store.search(rows[7].vector, k=3)
    assert hits[0].chunk_id == rows[7].chunk_id and hits[0].doc_id == "d2" and hits[0].n == 1
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    store.upsert([ChunkRow("d2#1", "d2", 1, "replaced", rows[7].vector)])
    assert store.count() == 15
    assert store.get(["d2#1"])[0]["text"] == "replaced"

    assert store.chunk_ids_for_doc("d1") == {"d1#0", "d1#1", "d1#2"}
    store.delete_chunks(["d1#2", "missing#0"])
    assert store.chunk_ids_for_doc("d1") == {"d1#0", "d1#1"}
    store.delete_doc("d1")
    assert store.chunk_ids_for_doc("d1") == set()
    assert store.chunk_ids_for_docs(["d0", "d1"]) == {"d0": {"d0#0", "d0#1", "d0#2"}, "d1": set()}
    assert store.count() == 12
    assert [r["chunk_id"] for r in store.get(["d4#0", "nope", "d0#2"])] == ["d4#0", "d0#2"]


def test_last_duplicate_in_one_upsert_wins(store: VectorStore) -> None:
    v = _unit(1)
    written = store.upsert([ChunkRow("a#0", "a", 0, "old", v), ChunkRow("a#0", "a", 0, "new", v)])
    assert written == 1
    assert store.get(["a#0"])[0]["text"] == "new"


def test_all_chunk_ids_pages_through_many_rows(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retrieval.store

    monkeypatch.setattr(retrieval.store, "QUERY_LIMIT", 1000)  # force the paged path
    rows = [ChunkRow(f"d{i}#0", f"d{i}", 0, "t", _unit(i)) for i in range(2300)]
    store.upsert(rows)
    assert store.all_chunk_ids() == {r.chunk_id for r in rows}
    assert store.count() == 2300
    assert len(store.get([r.chunk_id for r in rows])) == 2300


NASTY = ['say "hi"', "it's", "back\\slash", "line\nbreak", 'x" or doc_id != "', "東京 😀"]


def test_filters_escape_any_string(store: VectorStore) -> None:
    v = _unit(3)
    rows = [
        ChunkRow(f"hit{i}#0", f"hit{i}", 0, "t", v, title=s, source=s, meta={"k": s})
        for i, s in enumerate(NASTY)
    ]
    rows.append(ChunkRow("miss#0", "miss", 0, "t", v, title="p", source="p", meta={"k": "p"}))
    store.upsert(rows)
    for i, nasty in enumerate(NASTY):
        for expr in (
            build_filter(title=nasty),
            build_filter(source=nasty),
            build_filter(meta={"k": nasty}),
        ):
            assert [h.chunk_id for h in store.search(v, k=10, filter=expr)] == [f"hit{i}#0"]
        assert store.chunk_ids_for_doc(nasty) == set()


def test_meta_filters_on_numbers_and_bools(store: VectorStore) -> None:
    rows = [
        _row(
            f"d{i}", 0, i, source="wiki" if i % 2 else "news", meta={"year": 2020 + i, "ok": i < 3}
        )
        for i in range(6)
    ]
    store.upsert(rows)
    q = rows[0].vector
    year = store.search(q, k=10, filter=build_filter(meta={"year": 2023}))
    assert {h.doc_id for h in year} == {"d3"}
    expr = VectorStore.build_filter(source="wiki", meta={"ok": True})
    assert {h.doc_id for h in store.search(q, k=10, filter=expr)} == {"d1"}
    assert store.search(q, k=10, filter=build_filter(meta={"ok": False}))[0].meta["ok"] is False


def test_bad_filter_inputs_are_refused(store: VectorStore) -> None:
    with pytest.raises(InvalidArgumentError, match="meta filter key"):
        build_filter(meta={'k"] == 1 or meta["x': 1})
    with pytest.raises(InvalidArgumentError, match="filter values"):
        build_filter(meta={"k": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(VectorStoreError, match="search"):
        store.search(_unit(0), filter="this is not ==")


def test_read_after_write_is_immediate(store: VectorStore) -> None:
    """Strong consistency: each acknowledged write is visible to the very next read."""
    for i in range(25):
        row = _row(f"rw{i}", 0, 100 + i)
        store.upsert([row])
        hits = store.search(row.vector, k=1)
        assert hits and hits[0].chunk_id == row.chunk_id
        assert store.chunk_ids_for_doc(row.doc_id) == {row.chunk_id}
        store.delete_doc(row.doc_id)
        assert row.chunk_id not in {h.chunk_id for h in store.search(row.vector, k=1)}
    assert store.count() == 0


def test_long_text_is_truncated_on_a_character_boundary(store: VectorStore) -> None:
    text = "é" * 40_000 + "tail"  # 80 004 bytes
    store.upsert([ChunkRow("big#0", "big", 0, text, _unit(1), title="t" * 5000)])
    stored = store.get(["big#0"])[0]
    assert len(stored["text"].encode()) <= TEXT_MAX_BYTES
    assert text.startswith(stored["text"]) and len(stored["text"]) == TEXT_MAX_BYTES // 2
    assert truncate_utf8("a😀", 4) == "a" and truncate_utf8("a😀", 5) == "a😀"


def test_wrong_vector_size_and_k_are_refused(store: VectorStore) -> None:
    with pytest.raises(InvalidArgumentError, match="4-d vector"):
        store.upsert([ChunkRow("a#0", "a", 0, "t", [0.1, 0.2, 0.3, 0.4])])
    with pytest.raises(InvalidArgumentError, match="dimensions"):
        store.search([0.1, 0.2])
    with pytest.raises(InvalidArgumentError, match="k must be"):
        store.search(_unit(0), k=0)
    with pytest.raises(InvalidArgumentError, match="longer than 512 bytes"):
        store.upsert([ChunkRow("x" * 600 + "#0", "x" * 600, 0, "t", _unit(0))])


def test_l2_scores_are_higher_for_closer_vectors(tmp_path: Path) -> None:
    with VectorStore(str(tmp_path / "l2.db"), dim=2, metric="L2") as s:
        s.upsert(
            [
                ChunkRow("near#0", "near", 0, "t", [1.0, 0.0]),
                ChunkRow("far#0", "far", 0, "t", [5.0, 5.0]),
            ]
        )
        hits = s.search([1.0, 0.1], k=2)
        assert [h.chunk_id for h in hits] == ["near#0", "far#0"]
        assert hits[0].score > hits[1].score


def test_unreachable_server_raises_unavailable() -> None:
    with pytest.raises(VectorStoreUnavailableError, match="cannot open Milvus"):
        VectorStore("http://127.0.0.1:1", dim=DIM)


def test_invalid_metric() -> None:
    with pytest.raises(InvalidArgumentError, match="metric must be one of"):
        VectorStore("unused.db", metric="HAMMING")


def test_milvus_lite_search_stays_exact_after_a_flush(tmp_path: Path) -> None:
    """milvus-lite indexes a flushed segment in the background; with an approximate index the
    top hits of an idle worker (which flushes, retrieval.flush_idle_s) would differ from an
    exact search's. The default index there is FLAT."""
    import time

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3000, 384)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((10, 384)).astype("float32")
    with VectorStore(str(tmp_path / "flat.db"), dim=384) as s:
        assert s.index_type == "FLAT"
        s.upsert([ChunkRow(f"c{i}", f"d{i}", 0, "text", v) for i, v in enumerate(vectors)])
        s.flush()
        time.sleep(3)  # the background index build, where there is one, is done by then
        for q in queries:
            exact = [f"c{i}" for i in np.argsort(-(vectors @ q))[:10]]
            assert [h.chunk_id for h in s.search(q, k=10)] == exact
