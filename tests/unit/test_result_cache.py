"""The search-result cache: a repeated query before any write is answered from memory, and
never with hits the index no longer gives (an update, a delete, a write under way). With the
real embedder and a real milvus-lite store, no broker."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval.answering import QueryAnswerer
from retrieval.cache import ResultCache
from retrieval.corpus import stdlib_corpus
from retrieval.store import Hit
from streams.services import RetrievalServices
from streams.settings import RetrievalSettings, Settings


def hit(text: str) -> Hit:
    return Hit(f"{text}#0", text, 0, text * 10, 1.0, "", "", {})


class Store:
    """Stands for a store's write generation only (the cache reads nothing else of it)."""

    def __init__(self) -> None:
        self.generation: int | None = 0


def test_the_cache_is_bounded_in_bytes_and_keeps_the_newest() -> None:
    cache, store, embedder = ResultCache(max_bytes=20_000, max_text=100), Store(), object()
    for i in range(200):
        cache.get((f"q{i}", 5, None, "hybrid", False), store, embedder, lambda i=i: [hit(f"{i}")])
    assert 0 < len(cache) < 200 and cache.bytes <= 20_000
    assert cache.lookup(("q199", 5, None, "hybrid", False), store, embedder) is not None
    assert cache.lookup(("q0", 5, None, "hybrid", False), store, embedder) is None
    long_key = ("x" * 101, 5, None, "hybrid", False)
    cache.get(long_key, store, embedder, lambda: [hit("x")])
    assert cache.lookup(long_key, store, embedder) is None  # too long to be worth keeping


def test_hits_searched_while_the_index_changed_are_not_kept() -> None:
    cache, store, embedder = ResultCache(), Store(), object()
    key = ("q", 5, None, "hybrid", False)

    def search_during_a_write() -> list[Hit]:
        store.generation = 2  # a write ended while this search ran
        return [hit("old")]

    cache.get(key, store, embedder, search_during_a_write)
    assert cache.lookup(key, store, embedder) is None
    assert cache.get(key, store, embedder, lambda: [hit("new")])[0].doc_id == "new"
    assert cache.lookup(key, store, embedder) == [hit("new")]
    # another store or another embedder (a migration's switch): everything cached goes
    assert cache.lookup(key, Store(), embedder) is None and len(cache) == 0


ROUNDS = 6  # of questions, then a new doc, an update and a delete (flushed every 30 rows)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrievalServices]:
    data = Path(tmp_path_factory.mktemp("result-cache"))
    settings = Settings(data_dir=data, retrieval=RetrievalSettings(flush_rows=30))
    r = RetrievalServices(settings)
    r.load()
    yield r
    r.close()


def index(services: RetrievalServices, docs: list[dict[str, Any]]) -> None:
    def run() -> None:
        report = services.indexer.apply(docs)
        services.note_written(report.chunks_written + report.chunks_removed)

    services.executor.submit(run).result()


def test_cached_answers_are_the_fresh_answers_through_updates_and_deletes(
    services: RetrievalServices,
) -> None:
    answerer = services.answerer
    cache = answerer.result_cache
    assert isinstance(cache, ResultCache)
    assert answerer.store.generation is not None  # milvus-lite: this worker is the one writer
    fresh = QueryAnswerer(answerer.embedder, answerer.store, mode=answerer.mode,
                          fusion=answerer.fusion, dense_weight=answerer.dense_weight)  # fmt: skip
    docs = stdlib_corpus(80, min_chars=150)
    index(services, docs[:40])
    questions = [d["text"][:160] for d in docs[:60]]
    rng = random.Random(7)
    live = {d["id"]: d for d in docs[:40]}

    def ids(hits: list[Hit]) -> list[tuple[str, str]]:
        return [(h.chunk_id, h.text) for h in hits]

    for step in range(ROUNDS):
        asked = rng.sample(questions, 6)
        for q in asked:  # asked twice in a row: the second from the cache, the same hits
            first = services.query_executor.submit(answerer.search, q, 4).result()
            hits_before = cache.hits
            again = services.query_executor.submit(answerer.search, q, 4).result()
            assert cache.hits == hits_before + 1
            assert ids(again) == ids(first) == ids(fresh.search(q, 4))
        batched = services.query_executor.submit(answerer.search_many, asked, 4).result()
        assert [ids(h) for h in batched] == [ids(fresh.search(q, 4)) for q in asked]
        # then the index changes: a new doc, an update and a delete
        new = docs[40 + step]
        victim, gone = rng.sample(sorted(live), 2)
        updated = {**live[victim], "text": f"Revised in step {step}: " + live[victim]["text"]}
        index(services, [new, updated, {"id": gone, "op": "delete"}])
        live[new["id"]], live[victim] = new, updated
        del live[gone]
        for q in asked:
            got = services.query_executor.submit(answerer.search, q, 4).result()
            assert ids(got) == ids(fresh.search(q, 4))
            assert gone not in {h.doc_id for h in got}
        got = services.query_executor.submit(answerer.search, updated["text"][:160], 4).result()
        assert any(h.text.startswith(f"Revised in step {step}") for h in got if h.doc_id == victim)
    assert cache.hits >= ROUNDS * 6 and cache.bytes <= cache.max_bytes


def test_concurrent_writes_never_leave_a_stale_hit(services: RetrievalServices) -> None:
    """Searches on the query thread while the retrieval thread writes: every answer the
    cache gives after the writes end is the answer a search gives then."""
    answerer = services.answerer
    docs = stdlib_corpus(140, min_chars=150)[100:140]
    questions = [d["text"][:160] for d in docs]
    stop = threading.Event()

    def write() -> None:
        for i in range(0, len(docs), 4):
            index(services, docs[i : i + 4])
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not stop.is_set():
        for q in questions[:10]:
            services.query_executor.submit(answerer.search, q, 3).result()
    writer.join()
    fresh = QueryAnswerer(answerer.embedder, answerer.store, mode=answerer.mode,
                          fusion=answerer.fusion, dense_weight=answerer.dense_weight)  # fmt: skip
    for q in questions[:10]:
        cached = services.query_executor.submit(answerer.search, q, 3).result()
        assert [h.chunk_id for h in cached] == [h.chunk_id for h in fresh.search(q, 3)]


def test_http_searches_share_the_cache(services: RetrievalServices) -> None:
    cache = services.answerer.result_cache
    assert cache is not None
    before, on_loop = cache.hits, services.searches.from_cache
    drains = len(services.searches.drained)

    async def twice() -> list[Any]:
        first = await services.search({"question": "temporary directory", "k": 2})
        second = await services.search({"question": "temporary directory", "k": 2})
        return [first, second]

    first, second = asyncio.run(twice())
    assert [h.chunk_id for h in first] == [h.chunk_id for h in second]
    assert cache.hits == before + 1
    # the repeat was answered on the event loop: no drain on the query thread, no pause
    assert services.searches.from_cache == on_loop + 1
    assert len(services.searches.drained) == min(drains + 1, 100)
