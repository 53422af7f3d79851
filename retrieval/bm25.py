"""BM25 with collection-wide statistics, for rescoring the candidates of a sparse search.

milvus-lite (3.2) scores BM25 per segment: each segment, and the write buffer, uses its own
document count and term frequencies. A chunk written recently sits in the buffer or in a
small segment until size-tiered compaction merges it into a big one, and until then the same
text scores a fraction of what it scores in the big segment (2.96 instead of 50.3 for one
question in a measurement on 610 chunks): fresh documents drop out of the BM25 top list. A
Milvus server keeps collection-wide statistics and has no such skew.

Where the worker is the collection's one writer (a milvus-lite file), the store keeps the
statistics itself (:class:`TermStats`: chunks, total length and document frequency of each
term, updated on every upsert and delete, rebuilt from the collection when it is opened) and
rescores the candidates Milvus returns (both sides' of a hybrid search) with them: the BM25
side then ranks a fresh chunk as it will rank once merged. The analyzer is the BM25 field's
(:data:`retrieval.store.BM25_ANALYZER`: Unicode words, lower case, English stop words).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

__all__ = ["ENGLISH_STOP_WORDS", "TermStats", "terms"]

#: English stop words removed before BM25 (short function words only: in technical text words
#: such as "not", "all" or "first" carry meaning).
ENGLISH_STOP_WORDS = (
    "a an and are as at be been but by can do does for from had has have how i if in into is "
    "it its of on or so such than that the their them then there these they this those to was "
    "we were what when where which while who why will with would you your"
).split()
_STOP = frozenset(ENGLISH_STOP_WORDS)
_WORD = re.compile(r"\w+", re.UNICODE)

#: BM25's term-frequency saturation and length normalisation: milvus-lite's defaults, which
#: the collection's BM25 index uses (a Milvus server's k1 is 1.2; it is not rescored).
K1, B = 1.5, 0.75
#: What one term's entry costs beyond its text (the dict slot, the key and the count).
TERM_OVERHEAD = 120


def terms(text: str) -> list[str]:
    """The BM25 field's terms of ``text``: Unicode words, lower-cased, stop words removed.

    >>> terms("The LRU cache of functools: lru_cache(maxsize=128)")
    ['lru', 'cache', 'functools', 'lru_cache', 'maxsize', '128']
    """
    return [t for t in _WORD.findall(text.lower()) if t not in _STOP]


class TermStats:
    """Chunk count, total length and document frequencies of a collection's chunk texts.

    Parameters
    ----------
    max_bytes
        Memory for the term table; past it, terms in one chunk only are forgotten (an unknown
        term counts as in one chunk, so they lose nothing) and then the rarest others.

    Examples
    --------
    >>> from retrieval.store import Hit
    >>> stats = TermStats()
    >>> stats.add(["kafka keeps an ordered log", "milvus stores vectors", "the log is kafka's"])
    >>> stats.chunks, stats.df["log"]
    (3, 2)
    >>> hit = lambda c, text: Hit(c, c, 0, text, 0.0, "", "", {})
    >>> ranked = stats.rescore("ordered log", [hit("b", "milvus stores vectors"),
    ...                                        hit("a", "kafka keeps an ordered log")], 5)
    >>> [(h.chunk_id, round(h.score, 2)) for h in ranked]  # no shared term: no BM25 hit
    [('a', 1.33)]
    >>> stats.remove(["milvus stores vectors"]); stats.chunks, "milvus" in stats.df
    (2, False)
    """

    def __init__(self, max_bytes: int = 16 << 20) -> None:
        self.max_bytes = max_bytes
        self.chunks = 0
        self.length = 0
        self.df: dict[str, int] = {}
        self.bytes = 0
        self.pruned = False
        self._lock = threading.Lock()

    def add(self, texts: Iterable[str]) -> None:
        """Count ``texts`` (chunks written)."""
        self._count(texts, +1)

    def remove(self, texts: Iterable[str]) -> None:
        """Uncount ``texts`` (chunks deleted, or replaced by an upsert)."""
        self._count(texts, -1)

    def _count(self, texts: Iterable[str], sign: int) -> None:
        with self._lock:
            for text in texts:
                words = terms(text)
                self.chunks = max(0, self.chunks + sign)
                self.length = max(0, self.length + sign * len(words))
                for term in set(words):
                    n = self.df.get(term, 0) + sign
                    if n > 0:
                        if term not in self.df:
                            self.bytes += len(term) + TERM_OVERHEAD
                        self.df[term] = n
                    elif term in self.df:
                        del self.df[term]
                        self.bytes -= len(term) + TERM_OVERHEAD
            if self.bytes > self.max_bytes:
                self._prune()

    def _prune(self) -> None:
        """Forget the rarest terms until the table is within three quarters of its budget."""
        self.pruned = True
        for term, _n in sorted(self.df.items(), key=lambda item: item[1]):
            if self.bytes <= self.max_bytes * 3 // 4:
                break
            del self.df[term]
            self.bytes -= len(term) + TERM_OVERHEAD

    def idf(self, term: str) -> float:
        """``log((N - df + 0.5) / (df + 0.5) + 1)`` over the whole collection (an unknown
        term counts as in one chunk)."""
        n = max(self.chunks, 1)
        df = min(max(self.df.get(term, 1), 1), n)
        return math.log((n - df + 0.5) / (df + 0.5) + 1.0)

    def score(self, query: Mapping[str, int], text: str) -> float:
        """BM25 of a chunk ``text`` for a query's term counts (each term weighs its count in
        the query, as in Milvus)."""
        words = Counter(terms(text))
        if not words:
            return 0.0
        avgdl = self.length / self.chunks if self.chunks else float(sum(words.values()))
        norm = K1 * (1 - B + B * sum(words.values()) / max(avgdl, 1e-9))
        total = 0.0
        for term, weight in query.items():
            tf = words.get(term, 0)
            if tf:
                total += self.idf(term) * tf * (K1 + 1) / (tf + norm) * weight
        return total

    def rescore(self, question: str, candidates: Sequence[Any], limit: int) -> list[Any]:
        """The BM25 ranking of ``candidates`` (hits from either side, each chunk once) for
        ``question``, best first, at most ``limit``: only chunks sharing a term with it."""
        query = Counter(terms(question))
        seen: set[str] = set()
        scored: list[tuple[float, int, Any]] = []
        with self._lock:
            for i, hit in enumerate(candidates):
                if hit.chunk_id in seen:
                    continue
                seen.add(hit.chunk_id)
                value = self.score(query, hit.text)
                if value > 0:
                    scored.append((value, i, hit))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [replace(hit, score=value) for value, _i, hit in scored[:limit]]
