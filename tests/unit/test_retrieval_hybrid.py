"""BM25 sparse field and dense | sparse | hybrid search, on milvus-lite and a Milvus server."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrieval.exceptions import InvalidArgumentError
from retrieval.store import (
    BM25_ANALYZER,
    SPARSE_FIELD,
    ChunkRow,
    VectorStore,
    build_filter,
    server_supports_bm25,
)

DIM = 4
# Dense vectors point the other way from the text on purpose: dense and sparse disagree.
ROWS = [
    ("kafka", "Kafka keeps an ordered, replicated log of records.", [1, 0, 0, 0], "man"),
    ("milvus", "Milvus stores dense and sparse vectors for search.", [0, 1, 0, 0], "man"),
    ("river", "River learns from one record at a time, online.", [0, 0, 1, 0], "blog"),
    ("faust", "Faust runs stream processors written as Python async agents.", [0, 0, 0, 1], "blog"),
]  # fmt: skip


def _rows() -> list[ChunkRow]:
    return [
        ChunkRow(f"{d}#0", d, 0, text, np.asarray(v, "f4"), title=d, source=src, meta={"n": i})
        for i, (d, text, v, src) in enumerate(ROWS)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    s = VectorStore(str(tmp_path / "h.db"), collection="chunks", dim=DIM, bm25=True)
    s.upsert(_rows())
    yield s
    s.close()


def test_collection_has_a_bm25_field_from_the_text(store: VectorStore) -> None:
    info = store._client.describe_collection("chunks")
    fields = {f["name"]: f for f in info["fields"]}
    assert store.bm25 and fields[SPARSE_FIELD]["type"].name == "SPARSE_FLOAT_VECTOR"
    assert fields["text"]["params"]["enable_analyzer"] in (True, "true")
    (function,) = info["functions"]
    assert function["input_field_names"] == ["text"]
    assert function["output_field_names"] == [SPARSE_FIELD]
    assert "lowercase" in BM25_ANALYZER["filter"]


def test_sparse_search_matches_words_and_scores_are_positive(store: VectorStore) -> None:
    hits = store.search(text="Which system keeps a replicated LOG?", k=4, mode="sparse")
    assert hits[0].doc_id == "kafka" and hits[0].score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Stop words alone match nothing.
    assert store.search(text="the of and a", k=4, mode="sparse") == []


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_hybrid_fuses_dense_and_sparse(store: VectorStore, fusion: str) -> None:
    vector = [0.0, 0.0, 0.0, 1.0]  # dense says faust
    dense = store.search(vector, k=2)
    assert dense[0].doc_id == "faust"
    sparse = store.search(text="ordered replicated log", k=2, mode="sparse")
    assert sparse[0].doc_id == "kafka"
    hybrid = store.search(vector, k=4, text="ordered replicated log", mode="hybrid", fusion=fusion)
    assert {h.doc_id for h in hybrid[:2]} == {"faust", "kafka"}
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    # The weighted ranker with all the weight on one side is that side's order.
    only_text = store.search(
        vector, k=1, text="ordered replicated log", mode="hybrid", fusion="weighted",
        dense_weight=0.0,
    )  # fmt: skip
    assert only_text[0].doc_id == "kafka"


def test_filters_apply_to_every_mode(store: VectorStore) -> None:
    expr = build_filter(source="blog")
    vector = [1.0, 0.0, 0.0, 0.0]  # dense says kafka, which is not from the blog
    for mode in ("dense", "sparse", "hybrid"):
        hits = store.search(vector, k=4, filter=expr, text="record log", mode=mode)
        assert hits and {h.source for h in hits} == {"blog"}, mode
    meta = build_filter(meta={"n": 1})
    assert [h.doc_id for h in store.search(vector, 4, meta, text="vectors", mode="hybrid")] == [
        "milvus"
    ]


def test_update_and_delete_are_seen_by_sparse_and_hybrid(store: VectorStore) -> None:
    store.upsert([ChunkRow("river#0", "river", 0, "River now forecasts tides.", [0, 0, 1, 0])])
    for mode in ("sparse", "hybrid"):
        hits = store.search([0, 0, 1, 0], k=1, text="tides forecast", mode=mode)
        assert hits[0].doc_id == "river" and hits[0].text == "River now forecasts tides."
    old_words = store.search(text="learns one record at a time", k=4, mode="sparse")
    assert "river" not in {h.doc_id for h in old_words}  # the old text is gone from BM25 too
    store.delete_doc("kafka")
    for mode in ("dense", "sparse", "hybrid"):
        hits = store.search([1, 0, 0, 0], k=4, text="ordered replicated log", mode=mode)
        assert "kafka" not in {h.doc_id for h in hits}, mode


def test_bad_search_arguments(store: VectorStore) -> None:
    with pytest.raises(InvalidArgumentError, match="search mode must be one of"):
        store.search([1, 0, 0, 0], mode="fuzzy")
    with pytest.raises(InvalidArgumentError, match="fusion must be one of"):
        store.search([1, 0, 0, 0], text="x", mode="hybrid", fusion="max")
    with pytest.raises(InvalidArgumentError, match="needs the query's text"):
        store.search([1, 0, 0, 0], mode="sparse")
    with pytest.raises(InvalidArgumentError, match="needs the query vector"):
        store.search(text="log", mode="hybrid")
    with pytest.raises(InvalidArgumentError, match="dense_weight"):
        store.search([1, 0, 0, 0], text="x", mode="hybrid", fusion="weighted", dense_weight=2)


def test_without_bm25_sparse_and_hybrid_fall_back_to_dense_and_say_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = str(tmp_path / "old.db")
    with VectorStore(uri, collection="old", dim=DIM) as plain:  # made without the field
        plain.upsert(_rows())
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    with VectorStore(uri, collection="old", dim=DIM, bm25=True) as store:
        assert not store.bm25
        for _ in range(3):
            hits = store.search([0, 0, 0, 1], k=1, text="ordered log", mode="hybrid")
            assert hits[0].doc_id == "faust"  # the dense answer
        assert store.search_mode("sparse") == "dense"
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("made without the BM25 field" in w for w in warnings) == 1
    assert sum("searches run as dense ones" in w for w in warnings) == 1


def test_server_versions_without_bm25_are_recognised() -> None:
    assert server_supports_bm25("v2.3.5-lite") is False  # the `milvus` 2.3.5 PyPI server
    assert server_supports_bm25("v2.4.9") is False
    assert server_supports_bm25("v2.5.0") is True and server_supports_bm25("2.6.1") is True
    assert server_supports_bm25("milvus_lite-3.2.2") is True
    assert server_supports_bm25("") is None


def test_an_old_server_gets_a_dense_collection_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a Milvus 2.3 server answers is simulated by its version string only; the rest
    (creating the collection without the field, falling back) is the real code path."""
    from pymilvus import MilvusClient

    monkeypatch.setattr(MilvusClient, "get_server_version", lambda self, **kw: "v2.3.5-lite")
    caplog.set_level(logging.WARNING, logger="retrieval.store")
    with VectorStore(str(tmp_path / "s.db"), collection="c", dim=DIM, bm25=True) as store:
        assert not store.bm25
        fields = {f["name"] for f in store._client.describe_collection("c")["fields"]}
        assert SPARSE_FIELD not in fields
        store.upsert(_rows())
        assert store.search([1, 0, 0, 0], k=1, text="vectors", mode="hybrid")[0].doc_id == "kafka"
    assert any("older than 2.5" in r.getMessage() for r in caplog.records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[str]:
    """milvus-lite as a server (gRPC, the Milvus protocol): a ``http://`` URI, as in production."""
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "srv"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "milvus-lite server did not come up"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_same_code_on_a_server(milvus_server: str) -> None:
    with VectorStore(milvus_server, collection="chunks", dim=DIM, bm25=True) as store:
        assert store.bm25
        store.upsert(_rows())
        assert store.search(text="replicated log", k=1, mode="sparse")[0].doc_id == "kafka"
        hybrid = store.search([0, 0, 0, 1], k=2, text="replicated log", mode="hybrid")
        assert {h.doc_id for h in hybrid} == {"faust", "kafka"}
        store.delete_doc("kafka")
        assert "kafka" not in {
            h.doc_id for h in store.search([1, 0, 0, 0], k=4, text="replicated log", mode="hybrid")
        }
    with VectorStore(milvus_server, collection="chunks", dim=DIM, bm25=True) as again:
        assert again.bm25 and again.count() == 3
