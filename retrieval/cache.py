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

import numpy as np

__all__ = ["VectorCache"]

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
