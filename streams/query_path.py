"""Searches that arrive together are answered together, on the worker's query thread.

Each ``/search`` request joins a list of pending searches; the first to join schedules a
drain on the event loop (``call_soon``), so the drain is handed to the query thread only once
the loop has taken in every request that had arrived by then. A drain answers every search
pending at that moment, in groups of the same ``k``, filter and mode, with
:meth:`~retrieval.answering.QueryAnswerer.search_many` (one forward pass for the questions
not in the query-embedding cache, one Milvus search per side for all of them).
An idle worker answers a lone search at once; a burst costs little more than one search.
Indexing pauses while any of them waits (:class:`~streams.priority.QueryGate`). A search
the answerer's result cache holds for the index as it is now (a query repeated before any
write: a page polled, a search retried until a document shows up) is answered on the loop at
once, and neither queues for the query thread nor pauses indexing.

Why the loop must run first: the query thread's work (the encoder's many small torch calls,
pymilvus, milvus-lite's own Python when it runs in this process) holds the GIL most of the
time, and a thread that comes out of ``select`` waits for it. When every request queued a
drain of its own, the next drain started the moment the last one ended, before the loop had
read the requests that came meanwhile: the worker answered one search per drain (30–56
searches/s under 32–64 concurrent clients). A drain also starts with a 1 ms sleep, which
hands the GIL to the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from streams.priority import QueryGate

log = logging.getLogger(__name__)

__all__ = ["MAX_SEARCH_BATCH", "SearchBatcher"]

#: Most searches answered by one Milvus call.
MAX_SEARCH_BATCH = 32


class SearchBatcher:
    """Pending searches, drained on ``executor`` (the query thread).

    Parameters
    ----------
    executor
        The single query thread.
    gate
        Entered for every search from its arrival to its answer.
    answerer
        Gives the serving :class:`~retrieval.answering.QueryAnswerer` (it may be swapped).
    filter_expr
        A ``queries`` record's filter as a Milvus expression (raises for a bad filter).
    """

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        gate: QueryGate,
        answerer: Callable[[], Any],
        filter_expr: Callable[[dict[str, Any]], str | None],
    ) -> None:
        self.executor = executor
        self.gate = gate
        self.answerer = answerer
        self.filter_expr = filter_expr
        self.pending: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []
        self.lock = threading.Lock()
        self.drained: list[int] = []  # sizes of the latest drains (most recent last, ≤ 100)
        self._scheduled = False  # a drain is scheduled on the loop and not yet handed over
        self.from_cache = 0  # searches answered on the loop from the result cache

    async def search(self, query: dict[str, Any]) -> list[Any]:
        """The hits for a validated ``queries`` record (question, k, filter, mode)."""
        cached = self.cached(query)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self.lock:
            self.pending.append((query, future))
        token = self.gate.enter()
        try:
            if not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._hand_over, loop)
            hits: list[Any] = await future
            return hits
        finally:
            self.gate.leave(token)

    def cached(self, query: dict[str, Any]) -> list[Any] | None:
        """The hits for ``query`` from the answerer's result cache, if it holds them for the
        index as it is now (see :meth:`~retrieval.answering.QueryAnswerer.cached`): answered
        on the loop, at once; the query thread and indexing never see it."""
        answerer = self.answerer()
        lookup = getattr(answerer, "cached", None)
        if lookup is None or getattr(answerer, "result_cache", None) is None:
            return None
        try:
            expr = self.filter_expr(query)
        except Exception:  # a bad filter: the drain reports it
            return None
        hits: list[Any] | None = lookup(str(query["question"]), query.get("k"), expr,
                                        query.get("mode"))  # fmt: skip
        if hits is not None:
            self.from_cache += 1
        return hits

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, after the requests that were ready: start a drain on the query thread."""
        self._scheduled = False
        job = loop.run_in_executor(self.executor, self._drain_safely, loop)
        job.add_done_callback(_log_failure)

    def _drain_safely(self, loop: asyncio.AbstractEventLoop) -> None:
        time.sleep(0.001)  # the GIL to the loop: requests that came meanwhile join this drain
        try:
            self.drain(loop)
        except BaseException as exc:  # never leave a caller waiting
            with self.lock:
                batch, self.pending = self.pending, []
            for _query, future in batch:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            raise

    def drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answer every search pending now (on the query thread)."""
        with self.lock:
            batch, self.pending = self.pending, []
        if not batch:
            return
        started = time.perf_counter()
        self.drained = [*self.drained[-99:], len(batch)]
        groups: dict[tuple[Any, ...], list[tuple[str, asyncio.Future[Any]]]] = {}
        for query, future in batch:
            try:
                key = (query.get("k"), self.filter_expr(query), query.get("mode"))
            except Exception as exc:  # a filter the store refuses: that query's error
                loop.call_soon_threadsafe(_settle, future, None, exc)
                continue
            groups.setdefault(key, []).append((str(query["question"]), future))
        for (k, expr, mode), items in groups.items():
            for i in range(0, len(items), MAX_SEARCH_BATCH):
                part = items[i : i + MAX_SEARCH_BATCH]
                try:
                    found = self.answerer().search_many([q for q, _f in part], k, expr, mode)
                except Exception as exc:
                    for _q, future in part:
                        loop.call_soon_threadsafe(_settle, future, None, exc)
                    continue
                for (_q, future), hits in zip(part, found, strict=True):
                    loop.call_soon_threadsafe(_settle, future, hits, None)
        log.debug("answered %d searches together in %.1f ms", len(batch),
                  (time.perf_counter() - started) * 1000)  # fmt: skip


def _log_failure(job: asyncio.Future[Any]) -> None:
    if not job.cancelled() and job.exception() is not None:
        log.error("a search drain failed: %r", job.exception())


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (a closed connection)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
