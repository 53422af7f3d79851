"""The worker's query path: queries before indexing (QueryGate), searches that arrive together
answered together, the query-embedding cache, and flushes by buffered rows: with the real
embedder and a real milvus-lite store, no broker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.cache import VectorCache
from retrieval.corpus import stdlib_corpus
from streams.priority import QueryGate
from streams.services import RetrievalServices
from streams.settings import RetrievalSettings, Settings


def test_indexing_waits_for_the_queries_there_when_it_pauses() -> None:
    gate = QueryGate(max_pause_s=5.0)
    token = gate.enter()
    resumed: list[float] = []
    pauser = threading.Thread(target=lambda: resumed.append(gate.pause()))
    pauser.start()
    time.sleep(0.1)
    assert not resumed  # the query is still running: indexing waits
    later = gate.enter()  # a query that comes during the pause does not extend it
    gate.leave(token)
    pauser.join(2)
    assert resumed and 0.05 < resumed[0] < 2.0
    assert gate.in_flight == 1
    gate.leave(later)
    assert gate.pause() == 0.0


def test_a_flood_of_queries_cannot_stop_indexing() -> None:
    gate = QueryGate(max_pause_s=0.05)
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            with gate.query():
                time.sleep(0.001)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        started = time.monotonic()
        for _ in range(20):
            gate.pause()
        assert time.monotonic() - started < 20 * 0.05 + 1.0
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_vector_cache_is_bounded_in_bytes_and_drops_the_oldest() -> None:
    cache = VectorCache(max_bytes=10_000, max_text=100)
    owner = object()
    for i in range(100):
        cache.get(f"q{i}", owner, lambda _t: np.zeros(384, "f4"))
    assert cache.bytes <= 10_000 and 0 < len(cache) < 100
    assert cache.misses == 100
    cache.get("q99", owner, lambda _t: pytest.fail("q99 is cached"))  # the newest stays
    long_text = "x" * 101
    cache.get(long_text, owner, lambda _t: np.zeros(384, "f4"))
    assert long_text not in cache._entries  # too long to be worth keeping
    with pytest.raises(ValueError):  # cached vectors are shared: read-only
        cache.get("q99", owner, lambda _t: np.zeros(384, "f4"))[0] = 1.0


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrievalServices]:
    data = Path(tmp_path_factory.mktemp("query-path"))
    # No result cache: these searches are to reach the store (see test_result_cache.py).
    settings = Settings(
        data_dir=data, retrieval=RetrievalSettings(flush_rows=40, result_cache_mb=0)
    )
    r = RetrievalServices(settings)
    r.load()
    yield r
    r.close()


def test_searches_that_arrive_together_are_answered_together(
    services: RetrievalServices,
) -> None:
    docs = stdlib_corpus(60, min_chars=150)
    flushes: list[int] = []
    original = services._flush

    def counted() -> None:
        flushes.append(services._unflushed)
        original()

    services._flush = counted  # type: ignore[method-assign]
    try:
        for i in range(0, 60, 20):
            services.executor.submit(services_index, services, docs[i : i + 20]).result()
    finally:
        del services._flush
    assert flushes and all(n >= 40 for n in flushes)  # flushed by rows, while writes go on
    assert services._unflushed < 40

    questions = [d["text"][:200] for d in docs[:12]]
    sequential = [services.answerer.search(q, 3) for q in questions]

    async def together() -> list[list[Any]]:
        return await asyncio.gather(*[services.search({"question": q, "k": 3}) for q in questions])

    services.searches.drained.clear()
    batched = asyncio.run(together())
    assert max(services.searches.drained) > 1  # answered in groups, not one by one
    assert sum(services.searches.drained) == len(questions)
    assert [[h.chunk_id for h in hits] for hits in batched] == [
        [h.chunk_id for h in hits] for hits in sequential
    ]
    assert all(d["id"] in {h.doc_id for h in hits} for d, hits in zip(docs, batched, strict=False))
    cache = services.answerer.query_cache
    assert cache is not None and cache.hits >= 12  # each question embedded once


def test_a_bad_filter_fails_only_its_own_search(services: RetrievalServices) -> None:
    from retrieval.exceptions import InvalidArgumentError

    async def both() -> list[Any]:
        return await asyncio.gather(
            services.search({"question": "temporary file", "k": 2}),
            services.search({"question": "x", "k": 2, "filter": {"meta": {"bad key!": 1}}}),
            return_exceptions=True,
        )

    good, bad = asyncio.run(both())
    assert isinstance(good, list) and len(good) == 2
    assert isinstance(bad, InvalidArgumentError)


def services_index(services: RetrievalServices, docs: list[dict[str, Any]]) -> None:
    report = services.indexer.apply(docs)
    services.note_written(report.chunks_written + report.chunks_removed)
