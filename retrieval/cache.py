"""A bounded cache of query embeddings: a repeated query text is not embedded again.

Users repeat queries (a page refreshed, a search polled until a document shows up, the same
question from many clients); embedding one costs milliseconds of CPU, a lookup microseconds.
The bound is in bytes (text and vector together), so a flood of long distinct queries cannot
grow it; the least recently used entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["ResultCache", "VectorCache", "hits_bytes"]

#: What one entry costs beyond its text and its vector (the dict slot, the key, the array).
ENTRY_OVERHEAD = 200


def _constant(vector: np.ndarray) -> Callable[[str], np.ndarray]:
    def embed(_text: str) -> np.ndarray:
        return vector

    return embed


class VectorCache:
    """LRU cache text → vector, bounded in bytes, tied to the embedder that made the vectors.

    Parameters
    ----------
    max_bytes
        Memory for the entries (texts, vectors and a fixed overhead each); 0 caches nothing.
    max_text
        Texts longer than this many characters are not cached (they are rarely repeated).

    Examples
    --------
    >>> cache = VectorCache(max_bytes=1_000)
    >>> calls = []
    >>> def embed(text):
    ...     calls.append(text)
    ...     return np.ones(4, "f4")
    >>> owner = object()
    >>> _ = cache.get("kafka", owner, embed); _ = cache.get("kafka", owner, embed)
    >>> calls, cache.hits, cache.misses
    (['kafka'], 1, 1)
    >>> _ = cache.get("kafka", object(), embed)  # another embedder: its vectors differ
    >>> calls
    ['kafka', 'kafka']
    >>> for i in range(20):
    ...     _ = cache.get(f"query {i}", owner, embed)
    >>> cache.bytes <= 1_000, len(cache) < 20
    (True, True)
    """

    def __init__(self, max_bytes: int = 8 << 20, max_text: int = 2_000) -> None:
        self.max_bytes = max_bytes
        self.max_text = max_text
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._owner: object | None = None
        self._entries: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(
        self,
        texts: Sequence[str],
        owner: object,
        embed_many: Callable[[list[str]], np.ndarray],
    ) -> list[np.ndarray]:
        """The vectors of ``texts``; the misses are embedded together in one
        ``embed_many(missing_texts)`` call.

        >>> cache = VectorCache()
        >>> owner, seen = object(), []
        >>> def embed_many(texts):
        ...     seen.append(list(texts))
        ...     return np.ones((len(texts), 2), "f4")
        >>> _ = cache.get_many(["a", "b"], owner, embed_many)
        >>> _ = cache.get_many(["b", "c", "c"], owner, embed_many)
        >>> seen
        [['a', 'b'], ['c']]
        """
        with self._lock:
            self._own(owner)
            known = {}
            for t in texts:
                if t in self._entries:
                    self._entries.move_to_end(t)
                    known[t] = self._entries[t][0]
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        self.hits += len(texts) - len(missing)
        if missing:
            for text, vector in zip(missing, np.asarray(embed_many(missing)), strict=True):
                known[text] = self.get(text, owner, _constant(vector))
        return [known[t] for t in texts]

    def _own(self, owner: object) -> None:
        """Empty the cache when ``owner`` (the embedder) is not the one its vectors came
        from (call with the lock held)."""
        if owner is not self._owner:
            self._entries.clear()
            self.bytes, self._owner = 0, owner

    def get(self, text: str, owner: object, embed: Callable[[str], np.ndarray]) -> np.ndarray:
        """The vector of ``text`` made by ``owner`` (``embed(text)`` on a miss)."""
        with self._lock:
            self._own(owner)
            found = self._entries.get(text)
            if found is not None:
                self._entries.move_to_end(text)
                self.hits += 1
                return found[0]
        self.misses += 1
        vector = np.asarray(embed(text))
        size = len(text.encode("utf-8", "surrogatepass")) + vector.nbytes + ENTRY_OVERHEAD
        if len(text) > self.max_text or size > self.max_bytes:
            return vector
        vector.setflags(write=False)  # shared by every caller of this text
        with self._lock:
            if owner is self._owner and text not in self._entries:
                self._entries[text] = (vector, size)
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _text, (_v, gone) = self._entries.popitem(last=False)
                    self.bytes -= gone
        return vector


def hits_bytes(hits: Sequence[Any]) -> int:
    """What a list of :class:`~retrieval.store.Hit` holds, roughly, in bytes (texts, titles,
    sources and meta as UTF-8, plus a fixed overhead per hit).

    >>> from retrieval.store import Hit
    >>> hits_bytes([Hit("a#0", "a", 0, "kafka", 0.9, "", "", {})]) == 5 + 3 + 1 + ENTRY_OVERHEAD
    True
    """
    total = 0
    for h in hits:
        meta = repr(h.meta) if h.meta else ""
        for part in (h.text, h.chunk_id, h.doc_id, h.title, h.source, meta):
            total += len(part.encode("utf-8", "surrogatepass"))
        total += ENTRY_OVERHEAD
    return total


class ResultCache:
    """LRU cache of search results, bounded in bytes, valid while the index has not changed.

    A search polled until a document shows up, a dashboard refreshed, the same question from
    many clients: each costs a Milvus search per side (on milvus-lite, Python over every
    stored row). Here a result is kept with the store's write *generation* at the time it
    was searched, and returned only while that generation is still the store's: any upsert,
    delete or flush since then (on this store) makes it a miss. A store whose generation is
    ``None`` (a Milvus server other processes write to, or a write under way) is never
    cached, so a result from here is always the one a search would give now.

    Parameters
    ----------
    max_bytes
        Memory for the entries (question, key and the hits' texts); 0 caches nothing.
    max_text
        Questions longer than this many characters are not cached.

    Examples
    --------
    >>> from retrieval.store import Hit
    >>> class Store:
    ...     generation = 0
    >>> store, embedder, cache = Store(), object(), ResultCache(max_bytes=10_000)
    >>> searched = []
    >>> def search():
    ...     searched.append(1)
    ...     return [Hit("a#0", "a", 0, "Kafka keeps the log.", 0.9, "", "", {})]
    >>> key = ("what keeps the log?", 5, None, "hybrid", True)
    >>> for _ in range(3):
    ...     _ = cache.get(key, store, embedder, search)
    >>> len(searched), cache.hits, cache.misses
    (1, 2, 1)
    >>> store.generation = 2          # the index changed: searched again
    >>> _ = cache.get(key, store, embedder, search); len(searched)
    2
    >>> store.generation = None       # a write under way (or other writers): never cached
    >>> _ = cache.get(key, store, embedder, search); _ = cache.get(key, store, embedder, search)
    >>> len(searched)
    4
    """

    def __init__(self, max_bytes: int = 4 << 20, max_text: int = 2_000) -> None:
        self.max_bytes = max_bytes
        self.max_text = max_text
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._owner: tuple[object, object] | None = None
        self._entries: OrderedDict[tuple[Any, ...], tuple[int, list[Any], int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: tuple[Any, ...], store: Any, embedder: object) -> list[Any] | None:
        """The cached hits for ``key`` if the store has not changed since they were searched."""
        generation = getattr(store, "generation", None)
        if generation is None or self.max_bytes <= 0:
            return None
        with self._lock:
            self._own(store, embedder)
            found = self._entries.get(key)
            if found is None or found[0] != generation:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return list(found[1])

    def store(
        self, key: tuple[Any, ...], store: Any, embedder: object, generation: int | None,
        hits: Sequence[Any],
    ) -> None:  # fmt: skip
        """Keep ``hits``, searched at ``generation`` (read before the search began), if the
        store is still at that generation."""
        if generation is None or getattr(store, "generation", None) != generation:
            return  # a write began or ended meanwhile: the hits may predate it
        question = str(key[0])
        size = len(question.encode("utf-8", "surrogatepass")) + hits_bytes(hits) + ENTRY_OVERHEAD
        if len(question) > self.max_text or size > self.max_bytes:
            return
        with self._lock:
            self._own(store, embedder)
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[2]
            self._entries[key] = (generation, list(hits), size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _key, (_g, _h, gone) = self._entries.popitem(last=False)
                self.bytes -= gone

    def get(
        self, key: tuple[Any, ...], store: Any, embedder: object,
        search: Callable[[], Sequence[Any]],
    ) -> list[Any]:  # fmt: skip
        """The hits for ``key``: cached, or ``search()`` (kept when the store did not change)."""
        found = self.lookup(key, store, embedder)
        if found is not None:
            return found
        self.misses += 1
        generation = getattr(store, "generation", None)
        hits = list(search())
        self.store(key, store, embedder, generation, hits)
        return hits

    def _own(self, store: object, embedder: object) -> None:
        """Empty the cache when the store or the embedder is not the one its results came
        from (call with the lock held)."""
        owner = self._owner
        if owner is None or owner[0] is not store or owner[1] is not embedder:
            self._entries.clear()
            self.bytes, self._owner = 0, (store, embedder)
