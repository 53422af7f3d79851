"""The faust app: thin agents that decode, call ``retrieval``/``trainers``, produce, commit.

Run it with ``livelearn worker`` (or ``python -m streams worker``). Each agent takes a batch of
events with ``stream.take_events``; faust acknowledges (and later commits) their offsets only
after the agent body has finished with the batch, and the body only finishes once the effect
is durable (Milvus has the rows, the outputs are acknowledged by Kafka). A body never raises:
bad records go to the dead-letter topic, and a dependency that is down is retried with backoff
(raising would make faust acknowledge a batch that was never processed).

Agents:

* ``docs``    → chunk, embed, upsert into Milvus (:class:`retrieval.indexing.ChunkIndexer`)
* ``queries`` → retrieve and answer → ``answers`` (:class:`retrieval.answering.QueryAnswerer`)
* ``feedback`` → ``docs`` (knowledge) or ``style-examples`` (style) (:mod:`streams.generator`)
* ``style-examples`` → the generator's trigger → ``training-jobs``; a promoted generator
  version is hot-swapped between two query batches

HTTP (faust's web server, ``LIVELEARN_WEB_PORT``): ``GET /search?q=...&k=5`` and
``GET /ask?q=...``, ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from streams import metrics
from streams.contracts import Limits
from streams.generator import (
    GeneratorRuntime,
    observe_answers,
    observe_style_examples,
    route_feedback_records,
)
from streams.kafka import flush_or_raise, produce_or_wait, producer
from streams.processing import OutRecord, RawRecord, dead, decode_batch
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["RetrievalServices", "create_app"]

#: Longest wait between two tries of a dependency that is down (Milvus): once it is back, the
#: backlog starts moving within this many seconds, and a try against a down server is cheap.
MAX_BACKOFF_S = 5.0


def _freeze_startup_heap() -> None:
    """Take what start-up loaded (torch, transformers, the embedder: ~500k objects) out of the
    cyclic garbage collector's reach. A full collection walks every tracked object: with them
    it stops every thread of the worker for ~250 ms (2 cores), a pause every record in flight
    would wait for; without them it walks only what the stream allocates."""
    gc.collect()
    gc.freeze()
    log.info("start-up heap frozen: %d objects out of the collector's reach", gc.get_freeze_count())


def _exit_if_stuck(timeout_s: float) -> None:
    """Arm a timer that ends the process if the shutdown is not over after ``timeout_s``.

    faust's shutdown can hang for ever when the broker has gone away (it waits on its consumer
    thread). Nothing acknowledged depends on a clean exit (offsets are committed only after
    the effects are durable), so the process then exits hard (status 70).
    """
    import os

    def bail() -> None:
        log.error("shutdown still running after %.0f s (broker unreachable?): exiting", timeout_s)
        logging.shutdown()
        os._exit(70)

    timer = threading.Timer(timeout_s, bail)
    timer.daemon = True
    timer.start()


class RetrievalServices:
    """Embedder, vector store, indexer and answerer, built once on first use.

    milvus-lite allows one process per file, and its writes are serialised; everything that
    touches the store therefore runs on one dedicated thread (``executor``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="retrieval")
        self._indexer: Any = None
        self._answerer: Any = None
        self._lock = threading.Lock()
        self.embedding_monitor: Any = None
        if settings.trigger.embedding_drift:
            from trainers.data_drift import EmbeddingDriftMonitor

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
        from retrieval.store import VectorStore

        s = self.settings
        embedder = TextEmbedder(s.models.embedding)
        store = VectorStore(
            s.milvus_uri,
            collection=s.milvus.collection,
            dim=embedder.dim,
            metric=s.milvus.metric,
            token=s.milvus.token.get_secret_value() or None,
        )
        chunker = TokenChunker(embedder.tokenizer, s.models.chunk_tokens, s.models.chunk_overlap)
        self._indexer = ChunkIndexer(chunker, embedder, store)
        generator: Any = ExtractiveGenerator()
        if s.models.generator != "extractive":
            from retrieval.answering import CausalLMGenerator

            generator = CausalLMGenerator(s.models.generator)
        self._answerer = QueryAnswerer(embedder, store, generator)

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
        if self._answerer is not None:
            self._answerer.store.close()
        self.executor.shutdown(wait=True)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)


def index_docs(services: RetrievalServices, records: Sequence[Any]) -> list[OutRecord]:
    """Apply a batch of valid docs records to the index; record freshness per document."""
    report = services.indexer.apply([r.value for r in records])
    now = time.time()
    for r in records:
        produced = r.value.get("ts") or r.timestamp
        if produced:
            metrics.FRESHNESS.observe(max(0.0, now - float(produced)))
    log.debug("indexed %s", report)
    return _embedding_alerts(services, records, report.vectors)


def _embedding_alerts(
    services: RetrievalServices, records: Sequence[Any], vectors: Any
) -> list[OutRecord]:
    """Feed the batch's chunk embeddings to the docs stream's drift monitor."""
    monitor = services.embedding_monitor
    if monitor is None or vectors is None or not len(vectors):
        return []
    s = services.settings
    out = []
    for vector in vectors:
        signal = monitor.update(vector.tolist())
        if signal is not None:  # at most one per episode
            alert = signal.to_alert(s.models.embedding, "embedder", "none", records[-1])
            metrics.DRIFT_ALERTS.labels("docs", signal.detector, signal.severity).inc()
            log.warning("embedding drift on %s: %s", s.topics.docs, alert)
            out.append(OutRecord(s.topics.drift_alerts, alert["alert_id"], alert))
    return out


def answer_queries(
    services: RetrievalServices, records: Sequence[Any], answers_topic: str
) -> list[OutRecord]:
    """Answer each query; the answer is keyed by the query id."""
    outputs = []
    for r in records:
        started = time.perf_counter()
        q = r.value
        filt = q.get("filter") or {}
        expr = services.answerer.store.build_filter(
            title=filt.get("title"), source=filt.get("source"), meta=filt.get("meta")
        ) if filt else None  # fmt: skip
        answer = services.answerer.answer(q["question"], k=q.get("k"), filter=expr or None)
        record = dict(answer.to_record())
        record["id"] = q["id"]
        record["latency_ms"] = (time.perf_counter() - started) * 1000
        outputs.append(OutRecord(answers_topic, q["id"], record))
    return outputs


def make_online_service(settings: Settings) -> Any:
    """The learner's domain object, resumed from its checkpoint when there is one."""
    from trainers.data_drift import FeatureDriftMonitor
    from trainers.drift_monitor import ConceptDriftMonitor
    from trainers.learner import OnlineLearner
    from trainers.service import OnlineService
    from trainers.serving import ServingPolicy
    from trainers.trigger import TriggerPolicy

    m, t = settings.models, settings.trigger
    registry_root = settings.data_dir / "registry"
    load_batch = _batch_loader(settings)

    service = OnlineService(
        OnlineLearner(m.online, m.task, m.name),
        settings.data_dir / "online" / f"{m.name}.ckpt",
        every_records=m.checkpoint_every_records,
        every_seconds=m.checkpoint_every_s,
        label_ttl_seconds=m.label_ttl_s,
        monitor=ConceptDriftMonitor(
            t.detector, t.warning_sensitivity, t.drift_sensitivity, t.min_samples,
            min_increase=t.min_increase, quiet_records=t.quiet_records,
            warning_min_increase=t.warning_min_increase,
        ),
        policy=TriggerPolicy(
            m.name, settings.topics.events, volume_threshold=t.volume_threshold,
            schedule_seconds=t.schedule_s or None, cooldown_seconds=t.cooldown_s,
            warning_action=t.warning_action, drift_action=t.drift_action,
            data_drift_action=t.data_drift_action, drift_min_records=t.drift_min_records,
        ),
        data_monitor=FeatureDriftMonitor(t.data_drift_window, t.data_drift_window)
        if t.data_drift else None,
        serving=ServingPolicy(m.serving, m.task, load_batch, min_samples=m.serving_min_samples),
        emit_predictions=m.predict == "learner",
        per_key=m.per_key, max_keys=m.max_keys,
        reaction=m.drift_reaction, reaction_window=m.reaction_window,
    )  # fmt: skip
    if service.policy.serving_version is None:  # a version promoted before this state began
        from trainers.registry import ModelRegistry

        serving = ModelRegistry(registry_root).serving(m.name)
        service.policy.serving_version = serving.version if serving is not None else None
    return service


def _batch_loader(settings: Settings) -> Callable[[], Any]:
    """Loads the version the registry's ``SERVING`` points at (None when there is none)."""
    registry_root, name = settings.data_dir / "registry", settings.models.name

    def load_batch() -> Any:
        from trainers.jobs import load_serving_predictor
        from trainers.registry import ModelRegistry

        registry = ModelRegistry(registry_root)
        if registry.serving(name) is None:
            return None
        return load_serving_predictor(registry, name)

    return load_batch


def make_snapshot_predictor(settings: Settings) -> Any:
    """A predict-only replica answering from the learner's published snapshot."""
    from trainers.service import SnapshotPredictor
    from trainers.serving import ServingPolicy

    m = settings.models
    policy = "online" if m.serving == "online" else "batch"
    return SnapshotPredictor(settings.data_dir / "online" / f"{m.name}.ckpt",
                             ServingPolicy(policy, m.task, _batch_loader(settings)),
                             model_name=m.name)  # fmt: skip


class BatchRunner:
    """Runs one agent's batch: decode, call the domain, produce, and only then return."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        contract: str,
        topic: str,
        handle: Callable[[Sequence[Any]], Awaitable[list[OutRecord]]],
        producer: Any,
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.app = app
        self.producer = producer
        self.settings = settings
        self.contract = contract
        self.topic = topic
        self.dlq = settings.topics.dlq(topic)
        self.handle = handle
        self.retry_on = retry_on
        lim = settings.limits
        self.limits = Limits(lim.max_record_bytes, lim.max_text_chars, lim.max_depth)

    async def __call__(self, events: Sequence[Any]) -> None:
        started = time.perf_counter()
        raw = [
            RawRecord(
                self.topic,
                e.message.partition,
                e.message.offset,
                e.message.key,
                e.message.value,
                (e.message.timestamp or 0.0),
            )
            for e in events
        ]
        good, bad = decode_batch(
            self.contract, raw, self.dlq, self.limits, self.settings.limits.dlq_raw_bytes
        )
        log.debug("%s: batch of %d, %d dead", self.contract, len(raw), len(bad))
        await self.produce(bad)  # dead letters never wait for a dependency
        dead_count = len(bad)
        bad.clear()
        outputs = await self._handle_with_retry(good, raw, bad)
        await self.produce(bad + outputs)  # outputs, and records that failed processing
        metrics.RECORDS_IN.labels(self.topic, "ok").inc(len(good) - self._failed)
        metrics.RECORDS_IN.labels(self.topic, "dead").inc(dead_count + len(bad))
        metrics.BATCH_SECONDS.labels(self.contract).observe(time.perf_counter() - started)

    async def _handle_with_retry(
        self, good: list[Any], raw: list[RawRecord], bad: list[OutRecord]
    ) -> list[OutRecord]:
        self._failed = 0
        if not good:
            return []
        try:
            return await self._until_done(good)
        except Exception as exc:
            log.exception("%s: batch failed (%s); retrying record by record", self.contract, exc)
            return await self._one_by_one(good, raw, bad)

    async def _until_done(self, records: list[Any]) -> list[OutRecord]:
        """``handle(records)``, retried with backoff for as long as a dependency is down: the
        records (and their offsets) are kept, never dead-lettered for an outage."""
        delay = 0.5
        while True:
            try:
                return await self.handle(records)
            except self.retry_on as exc:
                metrics.RETRIES.labels(type(exc).__name__).inc()
                log.warning("%s: %s; retrying in %.1f s", self.contract, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _one_by_one(
        self, good: list[Any], raw: list[RawRecord], bad: list[OutRecord]
    ) -> list[OutRecord]:
        by_offset = {(r.partition, r.offset): r for r in raw}
        outputs: list[OutRecord] = []
        for rec in good:
            try:
                outputs.extend(await self._until_done([rec]))
            except Exception as exc:
                self._failed += 1
                reason = f"{self.contract}: processing failed: {type(exc).__name__}: {exc}"
                bad.append(dead(by_offset[(rec.partition, rec.offset)], self.dlq, reason))
        return outputs

    async def produce(self, records: Sequence[OutRecord]) -> None:
        """Produce and wait until Kafka acknowledged every record.

        Outputs go through one confluent-kafka producer per worker (idempotent, acks=all)
        rather than faust's own: its delivery is awaited explicitly before the batch's
        offsets may be acknowledged, and a null key is fine.
        """
        if not records:
            return
        for rec in records:
            key = rec.key.encode() if rec.key is not None else None
            produce_or_wait(self.producer, rec.topic, rec.encoded(), key)
            metrics.RECORDS_OUT.labels(rec.topic).inc()
            if rec.topic == self.dlq:
                metrics.DEAD_LETTERS.labels(self.topic).inc()
        await asyncio.get_running_loop().run_in_executor(None, flush_or_raise, self.producer, 60)


def faust_credentials(settings: Settings) -> Any:
    """faust's broker credentials from the Kafka settings (SASL and/or TLS), or None.

    >>> from streams.settings import KafkaSettings
    >>> s = Settings(kafka=KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
    ...                                  sasl_username="u", sasl_password="p"))
    >>> creds = faust_credentials(s)
    >>> type(creds).__name__, creds.protocol.name, creds.ssl_context is not None
    ('SASLCredentials', 'SASL_SSL', True)
    >>> faust_credentials(Settings()) is None
    True
    """
    import ssl

    k = settings.kafka
    tls = k.security_protocol in ("SSL", "SASL_SSL")
    context = ssl.create_default_context(cafile=k.ssl_ca_location or None) if tls else None
    if k.sasl_mechanism:
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value(),
            mechanism=k.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _register_generator_agents(
    app: faust.App, settings: Settings, services: RetrievalServices, runtime: GeneratorRuntime,
    out: Any,
) -> None:  # fmt: skip
    """Agents for ``feedback`` and ``style-examples``, the generator's job feedback from
    ``model-updates``, and the timer that hot-swaps a newly promoted generator version."""
    topics = settings.topics

    async def handle_feedback(records: Sequence[Any]) -> list[OutRecord]:
        result: list[OutRecord] = await services.run(route_feedback_records, runtime, records)
        return result

    async def handle_style(records: Sequence[Any]) -> list[OutRecord]:
        return observe_style_examples(runtime, records)

    feedback_runner = BatchRunner(app, settings, "feedback", topics.feedback, handle_feedback, out)
    style_runner = BatchRunner(app, settings, "style-examples", topics.style_examples,
                               handle_style, out)  # fmt: skip

    @app.agent(app.topic(topics.feedback, key_type=bytes, value_type=bytes), name="feedback")
    async def feedback_agent(stream: Any) -> None:
        async for events in stream.take_events(64, within=0.1):
            await feedback_runner(events)

    @app.agent(app.topic(topics.style_examples, key_type=bytes, value_type=bytes),
               name="style-examples")  # fmt: skip
    async def style_agent(stream: Any) -> None:
        async for events in stream.take_events(256, within=0.25):
            await style_runner(events)

    @app.agent(app.topic(topics.model_updates, key_type=bytes, value_type=bytes),
               name="generator-updates")  # fmt: skip
    async def generator_updates(stream: Any) -> None:
        import orjson

        async for raw in stream:
            try:
                update = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # an output topic: its producers validate what they write
            if update.get("model") == settings.models.generator_name:
                offsets = (update.get("data") or {}).get("offsets")
                runtime.policy.job_update(str(update.get("job_id")), str(update.get("status")),
                                          update.get("model_version") or None, offsets)  # fmt: skip

    @app.timer(interval=2.0)
    async def swap_generator() -> None:
        # Load and swap on the retrieval thread: between two query batches, never inside one.
        if not runtime.uses_lm:
            return
        runtime.answerer = services.answerer
        try:
            await services.run(runtime.refresh)
        except Exception as exc:  # a bad version must not stop the worker: keep serving
            log.error("generator swap failed, still serving %s: %s", runtime.version, exc)
        jobs = runtime.job_records(runtime.policy.tick())
        if jobs:
            await style_runner.produce(jobs)


def create_app(settings: Settings, bootstrap: str, web_port: int = 6066) -> faust.App:
    """The worker app for ``settings``, talking to ``bootstrap``."""
    from retrieval.exceptions import VectorStoreUnavailableError

    topics = settings.topics
    credentials = faust_credentials(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # faust makes only its own folder
    app = faust.App(
        f"{settings.kafka.group_prefix}-worker",
        broker=f"kafka://{bootstrap}",
        broker_credentials=credentials,
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        topic_partitions=topics.partitions,
        topic_replication_factor=topics.replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=500,
        broker_commit_interval=1.0,
        # A worker that dies (kill -9, a lost node) holds its partitions until its session
        # times out: the same timeout as the learner's lease, not faust's 60 s.
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, settings.kafka.session_timeout_ms / 3000),
        web_port=web_port,
        web_host="127.0.0.1",
        datadir=str(settings.data_dir / "faust"),
    )
    services = RetrievalServices(settings)

    async def handle_docs(records: Sequence[Any]) -> list[OutRecord]:
        result: list[OutRecord] = await services.run(index_docs, services, records)
        return result

    async def handle_queries(records: Sequence[Any]) -> list[OutRecord]:
        result: list[OutRecord] = await services.run(
            answer_queries, services, records, topics.answers
        )
        return result

    runtime = GeneratorRuntime(settings)

    async def handle_answers(records: Sequence[Any]) -> list[OutRecord]:
        # Answers, then the generator's view of them (on the same thread: a generator swap
        # happens between two batches, never inside one).
        answers = await handle_queries(records)
        questions = {str(r.value["id"]): str(r.value["question"]) for r in records}
        extra: list[OutRecord] = await services.run(observe_answers, runtime, answers, questions)
        return answers + extra

    out = producer(settings, bootstrap)
    retry = (VectorStoreUnavailableError,)
    docs_runner = BatchRunner(app, settings, "docs", topics.docs, handle_docs, out, retry)
    query_runner = BatchRunner(app, settings, "queries", topics.queries, handle_answers, out, retry)
    _register_generator_agents(app, settings, services, runtime, out)
    docs_topic = app.topic(topics.docs, key_type=bytes, value_type=bytes)
    queries_topic = app.topic(topics.queries, key_type=bytes, value_type=bytes)

    @app.agent(docs_topic, name="docs-indexer")
    async def docs_agent(stream: Any) -> None:
        async for events in stream.take_events(256, within=0.25):
            await docs_runner(events)

    @app.agent(queries_topic, name="query-answerer")
    async def queries_agent(stream: Any) -> None:
        async for events in stream.take_events(32, within=0.05):
            await query_runner(events)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_services(app: Any, **kwargs: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, services.close)

    # [factory, running thread] for the learner loop (and the predictor replica): a thread
    # that dies is started again by `watch_learner`.
    learner_box: list[list[Any]] = []

    def spawn(make: Callable[[], threading.Thread]) -> threading.Thread:
        thread = make()
        thread.start()
        return thread

    @app.task
    async def start_learner() -> None:
        # The online learner is a thread beside the agents: it only learns while this worker
        # holds the model's lease (see streams.learner), so any number of workers can run.
        if not settings.models.learner:
            return
        from streams.learner import LearnerLoop

        def learner() -> threading.Thread:
            return LearnerLoop(settings, bootstrap, lambda: make_online_service(settings))

        makers: list[Callable[[], threading.Thread]] = [learner]
        if settings.models.predict == "replicas":
            from streams.learner import PredictorLoop

            def replica() -> threading.Thread:
                return PredictorLoop(settings, bootstrap, lambda: make_snapshot_predictor(settings))

            makers.append(replica)
        learner_box.extend([make, spawn(make)] for make in makers)

    @app.timer(interval=5.0)
    async def watch_learner() -> None:
        # A Kafka error the loop did not expect (the broker restarting under it, say) ends its
        # thread; a new one resumes from the checkpoint, as another worker taking over would.
        for entry in learner_box:
            make, thread = entry
            if thread.is_alive() or thread.stop_event.is_set():
                continue
            metrics.RETRIES.labels(thread.name).inc()
            log.error("the %s thread died (%r); starting it again", thread.name, thread.error)
            entry[1] = spawn(make)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_learner(app: Any, **kwargs: Any) -> None:
        _exit_if_stuck(settings.shutdown_timeout_s)
        for _make, loop in learner_box:
            loop.stop()
            await asyncio.get_running_loop().run_in_executor(None, loop.join, 60)

    @app.task
    async def load_models() -> None:
        # Load the embedder and open the store before the first batch arrives, so the
        # first documents are not late by the model's load time. Milvus may not be up yet:
        # back off and retry (the agents would retry the same way on their first batch).
        delay = 1.0
        while True:
            try:
                await services.run(services._build)
                _freeze_startup_heap()
                return
            except VectorStoreUnavailableError as exc:
                metrics.RETRIES.labels("milvus").inc()
                log.warning("vector store unavailable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"ok": True})

    @app.page("/search")
    async def search(web: Any, request: Any) -> Any:
        question = request.query.get("q", "")
        k = int(request.query.get("k", "5"))
        if not question:
            return web.json({"error": "missing q"}, status=400)
        hits = await services.run(lambda: services.answerer.search(question, k))
        return web.json({"q": question, "hits": [h.__dict__ for h in hits]})

    @app.page("/ask")
    async def ask(web: Any, request: Any) -> Any:
        question = request.query.get("q", "")
        if not question:
            return web.json({"error": "missing q"}, status=400)
        k = int(request.query.get("k", "5"))
        answer = await services.run(lambda: services.answerer.answer(question, k))
        return web.json(answer.to_record())

    return app
