"""Apply batches of ``docs`` records to the vector store: chunk, embed, upsert, prune.

Effects are idempotent: chunk ids are ``"<doc id>#<n>"``, rows are upserted by id, and the
chunks a document no longer has are deleted, so replaying records leaves the same state.
New rows are written before stale ones are removed, so an updated document never drops out
of search, and a crash in between is repaired by the replay.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from retrieval.chunking import Chunk, TokenChunker
from retrieval.store import ChunkRow

__all__ = [
    "ChunkIndexer",
    "IndexPlan",
    "IndexReport",
    "PlannedDoc",
    "latest_ops",
    "chunk_rows",
    "plan_index_ops",
    "plan_rows",
]


class _Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _encode(embedder: _Embedder, texts: list[str], pause: Callable[[], object] | None) -> Any:
    """``embedder.encode(texts)``, with ``pause`` between its forward passes when the embedder
    takes a ``between`` hook (:class:`~retrieval.embedding.TextEmbedder` does)."""
    if pause is not None and "between" in inspect.signature(embedder.encode).parameters:
        return embedder.encode(texts, between=pause)  # type: ignore[call-arg]
    return embedder.encode(texts)  # no hook: it pauses between sub-batches only


class _Store(Protocol):
    def chunk_ids_for_docs(self, doc_ids: Sequence[str]) -> Mapping[str, set[str]]: ...

    def upsert(self, rows: Sequence[ChunkRow]) -> int: ...

    def delete_chunks(self, chunk_ids: Sequence[str]) -> None: ...


def latest_ops(docs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last record per id, in the order of those last records.

    Examples
    --------
    >>> ops = latest_ops([{"id": "a", "op": "upsert"}, {"id": "b", "op": "upsert"},
    ...                   {"id": "a", "op": "delete"}])
    >>> [(d["id"], d["op"]) for d in ops]
    [('b', 'upsert'), ('a', 'delete')]
    """
    last = {str(d["id"]): i for i, d in enumerate(docs)}
    return [docs[i] for i in sorted(last.values())]


@dataclass(frozen=True)
class PlannedDoc:
    """One document's upsert: its record and its new chunks."""

    doc: Mapping[str, Any]
    chunks: list[Chunk]


@dataclass(frozen=True)
class IndexPlan:
    """What a batch does to the store.

    Attributes
    ----------
    upserts
        Upserted documents with their chunks (to embed and write).
    remove
        Chunk ids to delete: those of deleted documents, and those an updated document no
        longer has.
    deleted_docs
        Ids of the documents deleted.
    refused
        Documents not applied, with the reason (over the chunk limit): the store keeps
        what it had for them, and the caller dead-letters their records.
    """

    upserts: list[PlannedDoc] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    deleted_docs: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def chunks(self) -> list[Chunk]:
        """Every chunk to write, in document order."""
        return [c for p in self.upserts for c in p.chunks]


def plan_index_ops(
    docs: Sequence[Mapping[str, Any]],
    chunker: TokenChunker,
    existing: Mapping[str, set[str]],
    max_chunks: int | None = None,
) -> IndexPlan:
    """Plan a batch of ``docs`` records against the chunk ids already stored.

    Pure: no model and no store are touched, so the semantics can be tested on their own.

    Parameters
    ----------
    docs
        Validated ``docs`` records ``{"id", "op", "text"?, "title"?, ...}``; for each id only
        the last record counts.
    chunker
        Splits an upserted document's text.
    existing
        Chunk ids stored now, per document id (missing ids: none stored).
    max_chunks
        Most chunks one document may become; a longer one is refused, not cut.

    Returns
    -------
    IndexPlan

    Examples
    --------
    >>> chunker = TokenChunker(None, chunk_tokens=2, overlap_tokens=0)
    >>> plan = plan_index_ops(
    ...     [{"id": "a", "op": "upsert", "text": "one two three"},
    ...      {"id": "b", "op": "delete"}],
    ...     chunker,
    ...     existing={"a": {"a#0", "a#1", "a#2"}, "b": {"b#0"}},
    ... )
    >>> [c.chunk_id for c in plan.chunks], plan.remove, plan.deleted_docs
    (['a#0', 'a#1'], ['a#2', 'b#0'], ['b'])
    >>> plan_index_ops([{"id": "c", "op": "upsert", "text": "1 2 3 4 5"}], chunker, {},
    ...                max_chunks=2).refused
    {'c': 'document becomes 3 chunks, over the 2-chunk limit'}
    """
    upserts: list[PlannedDoc] = []
    remove: list[str] = []
    deleted: list[str] = []
    refused: dict[str, str] = {}
    for doc in latest_ops(docs):
        doc_id = str(doc["id"])
        before = existing.get(doc_id, set())
        if doc.get("op", "upsert") == "delete":
            deleted.append(doc_id)
            remove.extend(sorted(before))
            continue
        chunks = chunker.chunk(doc_id, doc.get("text") or "", doc.get("title") or None)
        if max_chunks is not None and len(chunks) > max_chunks:
            refused[doc_id] = (
                f"document becomes {len(chunks)} chunks, over the {max_chunks}-chunk limit"
            )
            continue
        upserts.append(PlannedDoc(doc, chunks))
        remove.extend(sorted(before - {c.chunk_id for c in chunks}))
    return IndexPlan(upserts, remove, deleted, refused)


def plan_rows(plan: IndexPlan, vectors: np.ndarray) -> list[ChunkRow]:
    """Rows for the plan's chunks; ``vectors`` holds one row per chunk, in order."""
    return chunk_rows([(p.doc, c) for p in plan.upserts for c in p.chunks], vectors)


def chunk_rows(
    pairs: Sequence[tuple[Mapping[str, Any], Chunk]], vectors: np.ndarray
) -> list[ChunkRow]:
    """Rows for ``(document record, chunk)`` pairs; ``vectors`` holds one row per pair."""
    rows: list[ChunkRow] = []
    for (doc, chunk), vector in zip(pairs, vectors, strict=True):
        rows.append(
            ChunkRow(
                chunk_id=chunk.chunk_id,
                doc_id=chunk.doc_id,
                n=chunk.n,
                text=chunk.text,
                vector=vector,
                title=str(doc.get("title") or ""),
                source=str(doc.get("source") or ""),
                meta=dict(doc.get("meta") or {}),
                # The record's own time, never "now": a replay must write the same row.
                ts=float(doc.get("ts") or 0.0),
            )
        )
    return rows


@dataclass(frozen=True)
class IndexReport:
    """What one :meth:`ChunkIndexer.apply` call did.

    Examples
    --------
    >>> IndexReport(upserted_docs=2, chunks_written=5).chunks_written
    5
    """

    upserted_docs: int = 0
    deleted_docs: int = 0
    chunks_written: int = 0
    chunks_removed: int = 0
    encode_seconds: float = 0.0
    store_seconds: float = 0.0
    vectors: Any = field(default=None, repr=False)  # the chunks' embeddings (drift watch)
    refused: dict[str, str] = field(default_factory=dict)  # doc id -> why it was not applied
    # Which documents were updates (had chunks stored before) and deletes, for the latency
    # metrics; left out of comparisons, like the vectors.
    updated_ids: tuple[str, ...] = field(default=(), compare=False)
    deleted_ids: tuple[str, ...] = field(default=(), compare=False)


class ChunkIndexer:
    """Keep the vector store in step with ``docs`` records.

    Parameters
    ----------
    chunker
        Splits documents (give it the embedder's tokenizer).
    embedder
        Anything with ``encode(texts) -> ndarray``, e.g. :class:`~retrieval.embedding.TextEmbedder`.
    store
        The :class:`~retrieval.store.VectorStore`.
    max_chunks_per_doc
        A document that would become more chunks is refused (see :attr:`IndexReport.refused`).
    embed_batch
        Chunks per sub-batch: each is embedded, then written to the store at once, so the
        first documents of a large batch are searchable before the rest is embedded, and
        the memory one call takes is bounded, whatever the batch.
    pause
        Called between two sub-batches (and between the embedder's forward passes): the
        worker waits there while queries are waiting, so a query never waits behind a
        whole batch (see :class:`streams.priority.QueryGate`).

    Examples
    --------
    With a toy embedder (letter counts) and an in-memory store:

    >>> import numpy as np
    >>> class Letters:
    ...     def encode(self, texts):
    ...         return np.array([[t.count("a") + 1, t.count("b") + 1] for t in texts], "f4")
    >>> class Memory:
    ...     def __init__(self):
    ...         self.rows = {}
    ...     def chunk_ids_for_docs(self, ids):
    ...         return {d: {c for c, r in self.rows.items() if r.doc_id == d} for d in ids}
    ...     def upsert(self, rows):
    ...         self.rows.update((r.chunk_id, r) for r in rows); return len(rows)
    ...     def delete_chunks(self, ids):
    ...         for c in ids: self.rows.pop(c, None)
    >>> store = Memory()
    >>> indexer = ChunkIndexer(TokenChunker(None, 2, 0), Letters(), store)
    >>> indexer.apply([{"id": "a", "op": "upsert", "text": "aa bb ab"}]).chunks_written
    2
    >>> indexer.apply([{"id": "a", "op": "upsert", "text": "aa"}]).chunks_removed
    1
    >>> sorted(store.rows)
    ['a#0']
    """

    def __init__(
        self,
        chunker: TokenChunker,
        embedder: _Embedder,
        store: _Store,
        max_chunks_per_doc: int | None = None,
        embed_batch: int = 256,
        pause: Callable[[], object] | None = None,
    ) -> None:
        self.chunker = chunker
        self.embedder = embedder
        self.store = store
        self.max_chunks_per_doc = max_chunks_per_doc
        self.embed_batch = embed_batch
        self.pause = pause

    def apply(self, docs: Sequence[Mapping[str, Any]]) -> IndexReport:
        """Apply a batch of validated ``docs`` records; returns what was done.

        The batch's chunks are embedded ``embed_batch`` at a time and each sub-batch's rows
        are upserted as soon as they are embedded; stale chunks are deleted after every new
        row is written.
        """
        if not docs:
            return IndexReport()
        started = time.perf_counter()
        ids = [str(d["id"]) for d in latest_ops(docs)]
        existing = self.store.chunk_ids_for_docs(ids)
        store_seconds = time.perf_counter() - started
        plan = plan_index_ops(docs, self.chunker, existing, self.max_chunks_per_doc)
        pairs = [(p.doc, c) for p in plan.upserts for c in p.chunks]
        encode_seconds, written, parts = 0.0, 0, []
        n = self.embed_batch
        for i in range(0, len(pairs), n):
            if i and self.pause is not None:
                self.pause()
            part = pairs[i : i + n]
            started = time.perf_counter()
            vectors = _encode(self.embedder, [c.embed_text for _d, c in part], self.pause)
            encode_seconds += time.perf_counter() - started
            started = time.perf_counter()
            written += self.store.upsert(chunk_rows(part, vectors))
            store_seconds += time.perf_counter() - started
            parts.append(vectors)
        started = time.perf_counter()
        if plan.remove:
            self.store.delete_chunks(plan.remove)
        store_seconds += time.perf_counter() - started
        vectors = np.concatenate(parts) if parts else None
        return IndexReport(
            upserted_docs=len(plan.upserts),
            deleted_docs=len(plan.deleted_docs),
            chunks_written=written,
            chunks_removed=len(plan.remove),
            encode_seconds=encode_seconds,
            store_seconds=store_seconds,
            vectors=vectors,
            refused=plan.refused,
            updated_ids=tuple(
                str(p.doc["id"]) for p in plan.upserts if existing.get(str(p.doc["id"]))
            ),
            deleted_ids=tuple(plan.deleted_docs),
        )
