"""Embedder migration: rebuild the chunks with a new embedding model by replaying ``docs``.

How it runs
-----------
Automatically, in the worker: a worker started with ``LIVELEARN_MODELS__EMBEDDING`` naming a
model other than the one the serving collection was built with (recorded on the collection,
:data:`retrieval.store.MODEL_PROPERTY`) keeps answering from that collection, with its own
model, and starts an :class:`EmbedderMigration` on a thread. The same migration runs from the
CLI (``livelearn embedder migrate --to MODEL``, with a progress bar), for a Milvus server or
while no worker holds the milvus-lite file; then set ``LIVELEARN_MODELS__EMBEDDING=MODEL`` for
the workers (the setting is the model wanted: a worker started with the old one would migrate
back).

Steps: (1) open the new collection (:func:`retrieval.migration.collection_for`), which records
its model; (2) replay the compacted ``docs`` topic from the beginning with a consumer group of
its own, through the same :class:`~retrieval.indexing.ChunkIndexer` the worker uses (so updates
replace and deletes remove), committing offsets after each batch is written, until the end
offsets read at the start are reached, then the live ends; (3) search a probe set (sampled
documents' titles or first sentences) in both collections and refuse the switch when the new
recall@5 is worse by more than ``retrieval.migration_margin``; (4) on the retrieval thread
(between two batches of the worker, never inside one): read what arrived meanwhile, point the
alias (``milvus.collection``) at the new collection, and swap the worker's embedder and store
together, so no query ever pairs one model with the other's vectors.

A crash (kill -9) mid-replay loses nothing: the new collection and the group's commits are
durable, a restart continues from the commits, and the writes are idempotent (upserts by
chunk id, stale chunks pruned), so the collection ends exact. Progress: the
``livelearn_embedder_migration_progress`` gauge (0..1; -1 after a refused switch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from streams import metrics
from streams.kafka import retry_transient
from streams.processing import RawRecord, decode_batch
from streams.settings import Settings

__all__ = [
    "EmbedderMigration",
    "MigrationResult",
    "Serving",
    "migrate_standalone",
    "resolve_serving",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
PROBE_K = 5
POLL_TIMEOUT_S = 1.0
CATCH_UP_S = 10.0  # longest the final catch-up (on the worker's retrieval thread) reads


def _direct(fn: Callable[..., _T], *args: Any) -> _T:
    return fn(*args)


@dataclass(frozen=True)
class Serving:
    """The collection answering now and the model its vectors come from."""

    collection: str
    model: str


def resolve_serving(catalog: Any, alias: str, configured_model: str) -> Serving:
    """What ``alias`` (``milvus.collection``) serves: the alias's collection, or a collection
    of that name (the layout before any migration), or none yet (one of that name is made for
    ``configured_model``). A collection without a recorded model is taken to hold
    ``configured_model``'s vectors, and recorded so."""
    collection = catalog.resolve(alias) or alias
    model = catalog.model(collection) if catalog.is_collection(collection) else None
    return Serving(collection, model or configured_model)


@dataclass(frozen=True)
class MigrationResult:
    """How a migration ended."""

    collection: str
    model: str
    switched: bool
    old_recall: float
    new_recall: float
    probes: int
    records: int
    reason: str


class EmbedderMigration:
    """Rebuild ``docs`` into a collection for ``target_model`` and switch to it if it is as good.

    Parameters
    ----------
    settings, bootstrap
        The worker's settings and where Kafka is.
    target_model
        The new embedding model (HF id or path).
    serving
        The collection answering now and its model.
    old_answerer
        What answers now (:class:`retrieval.answering.QueryAnswerer`): the probe's baseline.
    run_store
        Runs a function that touches Milvus (the worker's retrieval thread; directly in the
        CLI).
    on_switch
        Called on ``run_store`` with ``(embedder, store, chunker)`` once the alias points to
        the new collection, to swap the worker's services.
    on_progress
        Called with ``(records applied, records at the start)`` after each batch.
    stop
        Set to stop the replay (a later run continues from the commits).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        target_model: str,
        serving: Serving,
        old_answerer: Any,
        run_store: Callable[..., Any] = _direct,
        on_switch: Callable[[Any, Any, Any], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.target_model = target_model
        self.serving = serving
        self.old_answerer = old_answerer
        self.run_store = run_store
        self.on_switch = on_switch
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        self.records = 0
        self.collection = ""  # the new collection's name, once opened

    # -- the steps ----------------------------------------------------------------------------

    def run(self) -> MigrationResult:
        """Replay, probe, decide and switch (or refuse); returns how it ended."""
        from retrieval.migration import ProbeSet, decide

        embedder, store, indexer = self._open_target()
        switched = False
        try:
            probes = ProbeSet(self.settings.retrieval.migration_probes)
            consumer = self._consumer()
            try:
                self._replay(consumer, indexer, probes)
                old, new, n = self._probe(probes, embedder, store)
                decision = decide(old, new, self.settings.retrieval.migration_margin, n)
                if self.stop.is_set():
                    raise InterruptedError("migration stopped")
                if decision.switch:
                    self.run_store(self._switch, consumer, indexer, probes, embedder, store)
                    switched = True
                    metrics.EMBEDDER_MIGRATION.set(1.0)
                    log.info("embedder migration: switched to %s (%s): %s",
                             self.target_model, store.collection, decision.reason)  # fmt: skip
                else:
                    metrics.EMBEDDER_MIGRATION.set(-1.0)
                    log.warning(
                        "embedder migration to %s refused, still serving %s: %s",
                        self.target_model, self.serving.collection, decision.reason,
                    )  # fmt: skip
            finally:
                consumer.close()
            return MigrationResult(store.collection, self.target_model, switched,
                                   decision.old_recall, decision.new_recall, n, self.records,
                                   decision.reason)  # fmt: skip
        finally:
            if not switched:
                self.run_store(store.close)

    def _open_target(self) -> tuple[Any, Any, Any]:
        from retrieval.chunking import TokenChunker
        from retrieval.embedding import TextEmbedder
        from retrieval.indexing import ChunkIndexer
        from retrieval.migration import collection_for
        from retrieval.store import CollectionCatalog, VectorStore

        s = self.settings
        embedder = TextEmbedder(self.target_model)
        name = self.collection = collection_for(s.milvus.collection, self.target_model,
                                                embedder.dim)  # fmt: skip
        token = s.milvus.token.get_secret_value() or None

        def open_store() -> Any:
            store = VectorStore(s.milvus_uri, collection=name, dim=embedder.dim,
                                metric=s.milvus.metric, token=token,
                                index_type=s.milvus.index_type or None, bm25=True)  # fmt: skip
            with CollectionCatalog(s.milvus_uri, token) as catalog:
                catalog.set_model(name, self.target_model)
            return store

        store = self.run_store(open_store)
        chunker = TokenChunker(embedder.tokenizer, s.models.chunk_tokens, s.models.chunk_overlap)
        self._target = _StoreOn(store, self.run_store)
        indexer = ChunkIndexer(chunker, embedder, self._target,
                               s.limits.max_chunks_per_doc, s.models.embed_batch)  # fmt: skip
        return embedder, store, indexer

    def _consumer(self) -> Any:
        from streams.kafka import consumer

        s = self.settings
        # One group per target collection: a restart continues from its commits.
        return consumer(s, self.bootstrap, f"{s.kafka.group_prefix}-embedder-{self.collection}")

    def _replay(self, consumer: Any, indexer: Any, probes: Any) -> None:
        """Apply the topic up to the end offsets read at the start, then up to the live ends."""
        from retrieval.migration import ReplayProgress

        topic = self.settings.topics.docs
        partitions = self._partitions(consumer, topic)
        start, end = self._watermarks(consumer, topic, partitions)
        progress = ReplayProgress(start, end)
        progress.position.update(self._assign(consumer, topic, partitions, start))
        self._report(progress)
        while not progress.caught_up and not self.stop.is_set():
            self._apply_batch(consumer, indexer, probes, progress)
            self._report(progress)
        # The live ends: what was produced while the replay ran.
        for _ in range(3):
            _, live = self._watermarks(consumer, topic, partitions)
            if all(progress.position.get(p, 0) >= live[p] for p in live) or self.stop.is_set():
                break
            target = ReplayProgress(start, live, dict(progress.position))
            while not target.caught_up and not self.stop.is_set():
                self._apply_batch(consumer, indexer, probes, target)
            progress.position.update(target.position)
        if self.stop.is_set():
            raise InterruptedError("migration stopped")

    def _apply_batch(self, consumer: Any, indexer: Any, probes: Any, progress: Any) -> int:
        """Poll one batch, write it to the new collection, then commit it."""
        from confluent_kafka import TopicPartition

        s = self.settings
        messages = consumer.consume(s.retrieval.migration_batch, POLL_TIMEOUT_S)
        raw = [
            RawRecord(
                m.topic(),
                m.partition(),
                m.offset(),
                m.key(),
                m.value(),
                (m.timestamp()[1] or 0) / 1000,
            )  # fmt: skip
            for m in messages
            if m.error() is None
        ]
        if not raw:
            return 0
        # Records that fail their contract were dead-lettered by the worker's docs agent when
        # they first came; the replay skips them.
        good, _dead = decode_batch("docs", raw, s.topics.dlq(s.topics.docs),
                                   s.limits.contract_limits())  # fmt: skip
        values = [r.value for r in good]
        if values:
            indexer.apply(values)
        for v in values:
            probes.observe(v)
        last: dict[int, int] = {}
        for r in raw:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        offsets = [TopicPartition(raw[0].topic, p, o + 1) for p, o in last.items()]
        retry_transient(consumer.commit, offsets=offsets, asynchronous=False)
        for p, o in last.items():
            progress.advance(p, o)
        self.records += len(raw)
        return len(raw)

    def _probe(self, probes: Any, embedder: Any, store: Any) -> tuple[float, float, int]:
        """recall@5 of the old and the new collection on the probe set."""
        from retrieval.answering import QueryAnswerer
        from retrieval.migration import recall_at_k

        r = self.settings.retrieval
        new = QueryAnswerer(embedder, store, mode=r.mode, fusion=r.fusion,
                            dense_weight=r.dense_weight)  # fmt: skip
        self.run_store(store.flush)  # the replayed rows: searched from a segment, not scanned
        sample = probes.sample()
        if not sample:
            return 0.0, 0.0, 0

        def ranked(answerer: Any) -> list[list[str]]:
            return [[h.doc_id for h in answerer.search(q, k=PROBE_K, rerank=False)]
                    for q, _ in sample]  # fmt: skip

        expected = [d for _, d in sample]
        old_recall = recall_at_k(self.run_store(ranked, self.old_answerer), expected, PROBE_K)
        new_recall = recall_at_k(self.run_store(ranked, new), expected, PROBE_K)
        log.info("embedder migration probe (%d questions): recall@5 old %.3f, new %.3f",
                 len(sample), old_recall, new_recall)  # fmt: skip
        return old_recall, new_recall, len(sample)

    def _switch(self, consumer: Any, indexer: Any, probes: Any, embedder: Any, store: Any) -> None:
        """On the retrieval thread: catch up with what arrived, point the alias, swap."""
        from retrieval.migration import ReplayProgress, collection_for
        from retrieval.store import CollectionCatalog

        s = self.settings
        self._target.direct = True  # already on the retrieval thread
        topic = s.topics.docs
        partitions = self._partitions(consumer, topic)
        deadline = time.monotonic() + CATCH_UP_S
        while time.monotonic() < deadline:
            start, live = self._watermarks(consumer, topic, partitions)
            positions = self._positions(consumer, topic, partitions)
            if all(positions.get(p, start[p]) >= live[p] for p in live):
                break
            self._apply_batch(consumer, indexer, probes, ReplayProgress(start, live, positions))
        old = self.serving
        old_dim = int(getattr(self.old_answerer.store, "dim", 0))
        token = s.milvus.token.get_secret_value() or None
        with CollectionCatalog(s.milvus_uri, token) as catalog:
            if catalog.model(old.collection) is None:
                catalog.set_model(old.collection, old.model)
            keep_as = collection_for(s.milvus.collection, old.model, old_dim)
            catalog.point_alias(s.milvus.collection, store.collection, rename_to=keep_as)
        if self.on_switch is not None:
            self.on_switch(embedder, store, indexer.chunker)

    # -- Kafka plumbing -----------------------------------------------------------------------

    def _partitions(self, consumer: Any, topic: str) -> list[int]:
        meta = retry_transient(consumer.list_topics, topic, timeout=30)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise RuntimeError(f"topic {topic!r} not found: {info and info.error}")
        return sorted(info.partitions)

    def _watermarks(
        self, consumer: Any, topic: str, partitions: list[int]
    ) -> tuple[dict[int, int], dict[int, int]]:
        from confluent_kafka import TopicPartition

        low, high = {}, {}
        for p in partitions:
            lo, hi = retry_transient(
                consumer.get_watermark_offsets, TopicPartition(topic, p), timeout=30
            )
            low[p], high[p] = lo, hi
        return low, high

    def _assign(
        self, consumer: Any, topic: str, partitions: list[int], start: dict[int, int]
    ) -> dict[int, int]:
        """Assign every partition at the group's commit (the beginning when there is none)."""
        from confluent_kafka import TopicPartition

        parts = [TopicPartition(topic, p) for p in partitions]
        committed = retry_transient(consumer.committed, parts, timeout=30)
        positions = {tp.partition: (tp.offset if tp.offset >= 0 else start[tp.partition])
                     for tp in committed}  # fmt: skip
        consumer.assign([TopicPartition(topic, p, positions[p]) for p in partitions])
        return positions

    def _positions(self, consumer: Any, topic: str, partitions: list[int]) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        found = consumer.position([TopicPartition(topic, p) for p in partitions])
        parts = [TopicPartition(topic, p) for p in partitions]
        committed = retry_transient(consumer.committed, parts, timeout=30)
        out = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        out.update({tp.partition: tp.offset for tp in found if tp.offset >= 0})
        return out

    def _report(self, progress: Any) -> None:
        metrics.EMBEDDER_MIGRATION.set(progress.fraction)
        if self.on_progress is not None:
            self.on_progress(progress.done, progress.total)


class _StoreOn:
    """The new collection's store, each call run by ``run_store`` (the retrieval thread)."""

    def __init__(self, store: Any, run_store: Callable[..., Any]) -> None:
        self._store = store
        self._run_store = run_store
        self.direct = False  # True once the caller is on that thread already

    def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return fn(*args) if self.direct else self._run_store(fn, *args)

    def chunk_ids_for_docs(self, doc_ids: Any) -> Any:
        return self._run(self._store.chunk_ids_for_docs, doc_ids)

    def upsert(self, rows: Any) -> int:
        return int(self._run(self._store.upsert, rows))

    def delete_chunks(self, chunk_ids: Any) -> None:
        self._run(self._store.delete_chunks, chunk_ids)


def migrate_standalone(
    settings: Settings,
    bootstrap: str,
    target: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> MigrationResult | None:
    """The migration outside a worker (``livelearn embedder migrate``): open the serving
    collection with its own model as the probe's baseline, migrate to ``target``; None when
    the serving collection holds ``target``'s vectors already."""
    from retrieval.answering import QueryAnswerer
    from retrieval.embedding import TextEmbedder
    from retrieval.store import CollectionCatalog, VectorStore

    s, r = settings, settings.retrieval
    token = s.milvus.token.get_secret_value() or None
    with CollectionCatalog(s.milvus_uri, token) as catalog:  # open until the store is
        serving = resolve_serving(catalog, s.milvus.collection, s.models.embedding)
        if serving.model == target:
            return None
        old = TextEmbedder(serving.model)
        store = VectorStore(s.milvus_uri, serving.collection, old.dim, s.milvus.metric, token,
                            s.milvus.index_type or None, bm25=True)  # fmt: skip
    try:
        answerer = QueryAnswerer(old, store, mode=r.mode, fusion=r.fusion,
                                 dense_weight=r.dense_weight)  # fmt: skip
        migration = EmbedderMigration(s, bootstrap, target, serving, answerer,
                                      on_progress=on_progress)  # fmt: skip
        return migration.run()
    finally:
        store.close()
