"""The composition root: the worker's settings turned into its services, each built once.

Everything the worker runs is made here from :class:`streams.settings.Settings` and nowhere
else: the state paths (:class:`streams.paths.StatePaths`), the contract limits, the one
output producer, the retrieval side (embedder, store, indexer, answerer), the answering
model's runtime, the agents' batch runners, and the online side (the learner's processor, the
predict-only replica, the learner threads). The faust app (:mod:`streams.app`) only registers
agents, timers and pages over a :class:`WorkerServices`; benchmarks and tests take the same
factories from here (:func:`make_online_service`, :func:`make_snapshot_predictor`).

Domain objects come from ``retrieval`` and ``trainers`` (imported where they are built, so the
CLI starts without torch); each is built from its own settings object by one small function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.batch_runner import BatchRunner
from streams.generator_worker import GeneratorRuntime
from streams.paths import StatePaths
from streams.settings import ModelSettings, Settings, TriggerSettings

log = logging.getLogger(__name__)

__all__ = [
    "RetrievalServices",
    "WorkerServices",
    "make_online_service",
    "make_snapshot_predictor",
]


class RetrievalServices:
    """Embedder, vector store, indexer and answerer, built once on first use.

    Two threads: every write to the store (indexing, flushes, the migration's store calls)
    runs on ``executor``, one at a time, in order; every query (``/search``, ``/ask``,
    ``/v1``, the ``queries`` agent) runs on ``query_executor`` (:meth:`run_query`), so a
    query never waits in line behind an indexing batch. While a query is waiting or running,
    indexing pauses between two forward passes or sub-batch writes (:attr:`gate`, a
    :class:`~streams.priority.QueryGate`): the two never compete for the cores.
    """

    def __init__(self, settings: Settings) -> None:
        from streams.priority import QueryGate
        from streams.query_path import SearchBatcher

        self.settings = settings
        if settings.milvus.lite_process:
            import retrieval.store

            retrieval.store.lite_process = True
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="retrieval")
        self.query_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="query")
        self.gate = QueryGate()
        self._unflushed = 0  # rows written since the last flush
        self.searches = SearchBatcher(
            self.query_executor, self.gate, lambda: self.answerer, self.filter_expr
        )
        self._indexer: Any = None
        self._answerer: Any = None
        self._lock = threading.Lock()
        self._migration: threading.Thread | None = None
        self._stop = threading.Event()
        self.serving: Any = None
        self._written_at: float | None = None  # last index write not flushed yet
        self.embedding_monitor: Any = None
        if settings.trigger.embedding_drift:
            from trainers.drift.data import EmbeddingDriftMonitor

            self.embedding_monitor = EmbeddingDriftMonitor(
                settings.trigger.embedding_drift_window, settings.trigger.embedding_drift_window
            )

    def _build(self) -> None:
        with self._lock:
            if self._indexer is None:
                self._build_locked()

    def _build_locked(self) -> None:
        from retrieval.answering import ExtractiveGenerator, QueryAnswerer
        from retrieval.chunking import TokenChunker
        from retrieval.embedding import TextEmbedder
        from retrieval.indexing import ChunkIndexer
        from retrieval.store import CollectionCatalog, VectorStore

        s = self.settings
        token = s.milvus.token.get_secret_value() or None
        # The catalog stays open until the store is: milvus-lite stops its in-process server
        # when its last client closes, and a client opened right after may find it gone.
        catalog = CollectionCatalog(s.milvus_uri, token)
        try:
            self.serving = self._serving(catalog)
            embedder = TextEmbedder(self.serving.model, dtype=s.models.embed_dtype)
            store = VectorStore(s.milvus_uri, self.serving.collection, embedder.dim,
                                s.milvus.metric, token, s.milvus.index_type or None,
                                bm25=True)  # fmt: skip
            self._record_model(catalog, self.serving)
        finally:
            catalog.close()
        chunker = TokenChunker(embedder.tokenizer, s.models.chunk_tokens, s.models.chunk_overlap)
        r = s.retrieval
        self._indexer = ChunkIndexer(
            chunker, embedder, store, s.limits.max_chunks_per_doc, s.models.embed_batch,
            pause=self.gate.pause if r.query_priority else None,
        )  # fmt: skip
        generator: Any = ExtractiveGenerator()
        if s.models.generator != "extractive":
            from retrieval.answering import CausalLMGenerator

            generator = CausalLMGenerator(
                s.models.generator, max_new_tokens=s.models.generator_max_new_tokens,
                no_repeat_ngram_size=s.models.generator_no_repeat_ngram_size,
            )  # fmt: skip
        reranker = None
        if r.reranker:
            from retrieval.rerank import CrossEncoderReranker

            reranker = CrossEncoderReranker(r.reranker)
        from retrieval.cache import ResultCache, VectorCache
        from streams.metrics import export_cache_metrics

        cache = VectorCache(int(r.query_cache_mb * (1 << 20))) if r.query_cache_mb else None
        results = ResultCache(int(r.result_cache_mb * (1 << 20))) if r.result_cache_mb else None
        self._answerer = QueryAnswerer(
            embedder, store, generator, mode=r.mode, fusion=r.fusion,
            dense_weight=r.dense_weight, reranker=reranker, rerank_top_n=r.rerank_top_n,
            query_cache=cache, result_cache=results,
        )  # fmt: skip
        export_cache_metrics({"embedding": cache, "result": results})

    def _serving(self, catalog: Any) -> Any:
        """The collection to answer from and its model (see :mod:`streams.migration_worker`)."""
        from streams.migration_worker import Serving, resolve_serving

        s = self.settings
        try:
            return resolve_serving(catalog, s.milvus.collection, s.models.embedding)
        except Exception as exc:  # e.g. a server without aliases: the configured collection
            log.warning("cannot read Milvus's aliases (%s): serving %r with %s, no migration",
                        exc, s.milvus.collection, s.models.embedding)  # fmt: skip
            return Serving(s.milvus.collection, s.models.embedding)

    def _record_model(self, catalog: Any, serving: Any) -> None:
        try:
            if catalog.model(serving.collection) is None:
                catalog.set_model(serving.collection, serving.model)
        except Exception as exc:  # a server without collection properties: nothing recorded
            log.warning("cannot record the embedding model on %r: %s", serving.collection, exc)

    @property
    def migration_target(self) -> str | None:
        """The configured embedding model when the serving collection holds another one."""
        if self._indexer is None or self.serving.model == self.settings.models.embedding:
            return None
        return self.settings.models.embedding

    def start_migration(self, bootstrap: str) -> None:
        """Start the embedder migration thread if the configured model is not the one served
        (the worker answers from the old collection until the switch)."""
        target = self.migration_target
        if target is None or self._migration is not None:
            return
        from streams.migration_worker import EmbedderMigration

        def run_store(fn: Callable[..., Any], *args: Any) -> Any:
            return self.executor.submit(fn, *args).result()

        migration = EmbedderMigration(
            self.settings, bootstrap, target, self.serving, self._answerer,
            run_store=run_store, on_switch=self._switch, stop=self._stop,
        )  # fmt: skip

        def run() -> None:
            try:
                migration.run()
            except InterruptedError:
                log.info("embedder migration to %s stopped; a restart continues it", target)
            except Exception:
                log.exception("embedder migration to %s failed; a restart retries it", target)

        log.info("embedder migration: serving %s (%s) while %s is built",
                 self.serving.collection, self.serving.model, target)  # fmt: skip
        self._migration = threading.Thread(target=run, name="embedder-migration", daemon=True)
        self._migration.start()

    def _switch(self, embedder: Any, store: Any, chunker: Any) -> None:
        """Swap embedder, chunker and store together (on the retrieval thread, between two
        batches, and on the query thread, between two queries): no query pairs one model
        with the other's vectors."""
        from streams.migration_worker import Serving

        old = self._answerer.store
        indexer = self._indexer
        indexer.embedder, indexer.chunker, indexer.store = embedder, chunker, store

        def swap_answerer() -> None:
            self._answerer.embedder, self._answerer.store = embedder, store

        self.query_executor.submit(swap_answerer).result()
        self.serving = Serving(store.collection, self.settings.models.embedding)
        old.close()
        self.note_written(1)  # the catch-up's rows

    def note_written(self, rows: int = 1) -> None:
        """``rows`` rows of the index changed (on the retrieval thread, after a batch); flush
        at once when ``flush_rows`` rows are buffered (searches scan buffered rows)."""
        self._written_at = time.monotonic()
        self._unflushed += rows
        limit = self.settings.retrieval.flush_rows
        if limit and self._unflushed >= limit and self._answerer is not None:
            self._flush()

    def _flush(self) -> None:
        self._written_at, self._unflushed = None, 0
        self._answerer.store.flush()

    def flush_if_idle(self) -> bool:
        """Flush the store's write buffer once no batch has written for ``flush_idle_s``
        (on the retrieval thread); returns whether it flushed."""
        idle = self.settings.retrieval.flush_idle_s
        written = self._written_at
        if not idle or written is None or self._answerer is None:
            return False
        if time.monotonic() - written < idle:
            return False
        self._flush()
        return True

    def load(self) -> None:
        """Load the embedder and open the store now (raises what the store raises), and start
        the query thread and the answerer's BM25 thread: the worker's threads are all there
        before the first query (a thread count that moves later means something leaks)."""
        self._build()
        self.query_executor.submit(self._answerer.warm).result()

    @property
    def indexer(self) -> Any:
        if self._indexer is None:
            self._build()
        return self._indexer

    @property
    def answerer(self) -> Any:
        if self._answerer is None:
            self._build()
        return self._answerer

    def close(self) -> None:
        """Release the vector store (milvus-lite flushes and unlocks its file)."""
        self._stop.set()
        if self._migration is not None:
            self._migration.join(60)
        self.query_executor.shutdown(wait=True)
        if self._answerer is not None:
            self._answerer.store.close()
        self.executor.shutdown(wait=True)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the retrieval (write) thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def filter_expr(self, query: dict[str, Any]) -> str | None:
        """The Milvus expression of a ``queries`` record's ``filter`` (``None``: no filter)."""
        filt = query.get("filter") or {}
        if not filt:
            return None
        expr: str = self.answerer.store.build_filter(
            title=filt.get("title"), source=filt.get("source"), meta=filt.get("meta")
        )
        return expr or None

    async def search(self, query: dict[str, Any]) -> list[Any]:
        """The hits for a validated ``queries`` record, from the query thread; searches that
        arrive together are answered together (:class:`~streams.query_path.SearchBatcher`)."""
        hits: list[Any] = await self.searches.search(query)
        return hits

    async def run_query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the query thread; indexing pauses from now until it is done."""
        loop = asyncio.get_running_loop()
        token = self.gate.enter()
        try:
            return await loop.run_in_executor(self.query_executor, fn, *args)
        finally:
            self.gate.leave(token)


# -- the online side ---------------------------------------------------------------------------


def _concept_monitor(t: TriggerSettings) -> Any:
    from trainers.drift.concept import ConceptDriftMonitor

    return ConceptDriftMonitor(
        t.detector, t.warning_sensitivity, t.drift_sensitivity, t.min_samples,
        min_increase=t.min_increase, quiet_records=t.quiet_records,
        warning_min_increase=t.warning_min_increase,
    )  # fmt: skip


def _trigger_policy(name: str, topic: str, t: TriggerSettings) -> Any:
    from trainers.drift.trigger import TriggerPolicy

    return TriggerPolicy(
        name, topic, volume_threshold=t.volume_threshold,
        schedule_seconds=t.schedule_s or None, cooldown_seconds=t.cooldown_s,
        warning_action=t.warning_action, drift_action=t.drift_action,
        data_drift_action=t.data_drift_action, drift_min_records=t.drift_min_records,
        label_free_action=t.label_free_action,
    )  # fmt: skip


def _feature_monitor(t: TriggerSettings) -> Any:
    if not t.data_drift:
        return None
    from trainers.drift.data import FeatureDriftMonitor

    return FeatureDriftMonitor(t.data_drift_window, t.data_drift_window)


def _label_free_monitors(task: str, t: TriggerSettings) -> Any:
    if not t.label_free:
        return None
    from trainers.drift.label_free import LabelFreeMonitors

    return LabelFreeMonitors(task, t.label_free_window, t.label_free_min_labels)


def _online_learner(m: ModelSettings) -> Any:
    from trainers.online.learner import OnlineLearner

    return OnlineLearner(m.online, m.task, m.name, text_buckets=m.text_buckets)


def _serving_policy(policy: str, m: ModelSettings, paths: StatePaths, min_samples: int = 50) -> Any:
    """Who answers (``policy``), with the registry's serving batch version as the batch model."""
    from trainers.online.serving import ServingPolicy

    return ServingPolicy(policy, m.task, _batch_loader(paths, m.name), min_samples=min_samples)


def _batch_loader(paths: StatePaths, name: str) -> Callable[[], Any]:
    """Loads the version the registry's ``SERVING`` points at (None when there is none)."""

    def load_batch() -> Any:
        from trainers.batch.registry import ModelRegistry  # the standard library only

        registry = ModelRegistry(paths.registry)
        if registry.serving(name) is None:
            return None
        from trainers.batch.predictor import load_serving_predictor  # torch: only when needed

        return load_serving_predictor(registry, name)

    return load_batch


def _promoted_lineage(paths: StatePaths, name: str) -> Callable[[str], dict[str, list[int]] | None]:
    """``version -> training offsets`` of a version the registry holds as promoted (serving
    or retired since), else None: what the learner checks a ``promoted`` update against."""

    def lineage(version: str) -> dict[str, list[int]] | None:
        from trainers.batch.registry import ModelRegistry

        try:
            v = ModelRegistry(paths.registry).get(name, version)
        except Exception:  # no such version, or a name that is no version at all
            return None
        if v.status not in ("promoted", "retired"):
            return None
        offsets = (v.manifest.get("data") or {}).get("offsets")
        return dict(offsets) if isinstance(offsets, dict) else {}

    return lineage


def make_online_service(settings: Settings) -> Any:
    """The learner's domain object, resumed from its checkpoint when there is one."""
    from trainers.online.processor import OnlineProcessor

    m, t, paths = settings.models, settings.trigger, StatePaths.of(settings)
    service = OnlineProcessor(
        _online_learner(m),
        paths.checkpoint,
        every_records=m.checkpoint_every_records,
        every_seconds=m.checkpoint_every_s,
        label_ttl_seconds=m.label_ttl_s,
        monitor=_concept_monitor(t),
        policy=_trigger_policy(m.name, settings.topics.events, t),
        data_monitor=_feature_monitor(t),
        serving=_serving_policy(m.serving, m, paths, min_samples=m.serving_min_samples),
        emit_predictions=m.predict == "learner",
        per_key=m.per_key, max_keys=m.max_keys,
        reaction=m.drift_reaction, reaction_window=m.reaction_window,
        label_store_bytes=int(m.label_store_mb * 2**20),
        lineage=_promoted_lineage(paths, m.name),
        label_free=_label_free_monitors(m.task, t),
        signing_key=settings.state.signing_key(),
        migrate_unsigned=settings.state.migrate_unsigned,
    )  # fmt: skip
    if service.policy.serving_version is None:  # a version promoted before this state began
        from trainers.batch.registry import ModelRegistry

        serving = ModelRegistry(paths.registry).serving(m.name)
        service.policy.serving_version = serving.version if serving is not None else None
    return service


def make_snapshot_predictor(settings: Settings) -> Any:
    """A predict-only replica answering from the learner's published snapshot."""
    from trainers.online.replica import SnapshotPredictor

    m, paths = settings.models, StatePaths.of(settings)
    policy = "online" if m.serving == "online" else "batch"
    return SnapshotPredictor(paths.checkpoint, _serving_policy(policy, m, paths), model_name=m.name,
                             signing_key=settings.state.signing_key())  # fmt: skip


# -- the worker ------------------------------------------------------------------------------


class WorkerServices:
    """What one worker runs, built once from its settings.

    Parameters
    ----------
    settings
        The worker's settings (read once, at the entry point).
    bootstrap
        Where Kafka is.

    Attributes
    ----------
    paths
        The state paths (:class:`streams.paths.StatePaths`).
    limits
        The contract limits every decoder of this worker applies.
    retrieval
        The retrieval side (:class:`RetrievalServices`), built on first use.
    generator
        The answering model's runtime (:class:`streams.generator_worker.GeneratorRuntime`).

    >>> services = WorkerServices(Settings(), "localhost:9092")
    >>> services.limits.max_features, [name for name, _make in services.learner_threads()]
    (256, ['learner'])
    """

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.paths = StatePaths.of(settings)
        self.limits = settings.limits.contract_limits()
        self.retrieval = RetrievalServices(settings)
        self.generator = GeneratorRuntime(settings)
        self.runners: list[BatchRunner] = []

    @functools.cached_property
    def producer(self) -> Any:
        """The one confluent-kafka producer of the agents' outputs (made on first use)."""
        from streams.kafka import producer

        return producer(self.settings, self.bootstrap)

    def runner(
        self,
        contract: str,
        topic: str,
        handle: Callable[[Sequence[Any]], Awaitable[list[Any]]],
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> BatchRunner:
        """An agent's batch runner over ``topic`` (records checked against ``contract``)."""
        runner = BatchRunner(self.settings, contract, topic, handle, self.producer,
                             self.limits, retry_on)  # fmt: skip
        self.runners.append(runner)
        return runner

    def learner_threads(self) -> list[tuple[str, Callable[[], Any]]]:
        """``(name, make thread)`` of the online side's threads (none without a learner):
        the learner loop, and a predict-only replica when ``models.predict`` is ``replicas``."""
        from streams.learner_worker import LearnerLoop, PredictorLoop

        s, b = self.settings, self.bootstrap
        if not s.models.learner:
            return []

        def learner() -> Any:
            return LearnerLoop(s, b, lambda: make_online_service(s), limits=self.limits)

        threads: list[tuple[str, Callable[[], Any]]] = [("learner", learner)]
        if s.models.predict == "replicas":

            def replica() -> Any:
                return PredictorLoop(s, b, lambda: make_snapshot_predictor(s), limits=self.limits)

            threads.append(("predictor", replica))
        return threads

    def stop_runners(self) -> None:
        """Stop every runner waiting for deliveries (the worker is shutting down)."""
        for runner in self.runners:
            runner.stopping.set()

    def close(self) -> None:
        """Release the vector store."""
        self.retrieval.close()
