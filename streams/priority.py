"""Queries before indexing: the gate the worker's indexing waits at while queries are waiting.

The worker embeds queries and documents with the same model on the same cores, and
milvus-lite serves one request at a time. A query that arrives while a 256-doc batch is being
indexed would wait for the whole batch (seconds) if the two shared one thread, and would run
at half speed beside it if they merely had threads of their own. So queries have a thread of
their own (:class:`~streams.services.RetrievalServices`), *and* the indexer stops at
:meth:`QueryGate.pause` between two forward passes and between two sub-batch writes for as
long as a query is waiting or running: a query waits at most for one forward pass (4 texts)
or one sub-batch upsert, whatever the backlog. A flood of queries cannot starve indexing: a
pause waits only for the queries that were there when it began (those that come during it
wait for the next one), and for at most ``max_pause_s``, so under any query load indexing
still moves by one forward pass per round of queries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["QueryGate"]


class QueryGate:
    """Tracks the queries in flight; indexing pauses until those there now are done.

    Parameters
    ----------
    max_pause_s
        Longest single pause (a query that hangs does not stop indexing).

    Examples
    --------
    >>> gate = QueryGate(max_pause_s=0.05)
    >>> gate.pause()  # no query: returns at once
    0.0
    >>> with gate.query():
    ...     gate.in_flight, gate.pause() >= 0.05  # a query that never ends: the bound
    (1, True)
    >>> gate.in_flight, gate.paused_s >= 0.05
    (0, True)
    """

    def __init__(self, max_pause_s: float = 0.25) -> None:
        self.max_pause_s = max_pause_s
        self.paused_s = 0.0  # total time indexing waited for queries
        self._open: set[int] = set()
        self._seq = 0
        self._cond = threading.Condition()

    @property
    def in_flight(self) -> int:
        """Queries waiting or running now."""
        return len(self._open)

    def enter(self) -> int:
        """A query is waiting or running; returns the token to :meth:`leave` with."""
        with self._cond:
            self._seq += 1
            self._open.add(self._seq)
            return self._seq

    def leave(self, token: int) -> None:
        with self._cond:
            self._open.discard(token)
            self._cond.notify_all()

    @contextmanager
    def query(self) -> Iterator[None]:
        """``with gate.query(): ...`` around a query."""
        token = self.enter()
        try:
            yield
        finally:
            self.leave(token)

    def pause(self) -> float:
        """Wait until the queries in flight now are done (at most ``max_pause_s``); returns
        the wait."""
        with self._cond:
            if not self._open:
                return 0.0
            last = self._seq
            started = time.monotonic()
            self._cond.wait_for(lambda: not self._open or min(self._open) > last,
                                self.max_pause_s)  # fmt: skip
            waited = time.monotonic() - started
            self.paused_s += waited
            return waited
