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
* ``feedback`` → ``docs`` (knowledge) or ``style-examples`` (style)
  (:mod:`streams.generator_worker`)
* ``style-examples`` → the generator's trigger → ``training-jobs``; a promoted generator
  version is hot-swapped between two query batches

HTTP (faust's web server, ``LIVELEARN_WEB_PORT``): ``GET /search?q=...&k=5`` and
``GET /ask?q=...``, both with optional ``mode``, ``title``, ``source`` and ``meta`` (a JSON
object), validated like a ``queries`` record (HTTP 400 with the reason); ``GET /healthz``.
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
from streams.generator_worker import (
    GeneratorRuntime,
    observe_answers,
    observe_style_examples,
    route_feedback_records,
)
from streams.kafka import deliver_or_retry, produce_or_wait, producer
from streams.processing import OutRecord, RawRecord, Rejection, dead, decode_batch
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
            bm25=True,
        )
        chunker = TokenChunker(embedder.tokenizer, s.models.chunk_tokens, s.models.chunk_overlap)
        self._indexer = ChunkIndexer(
            chunker, embedder, store, s.limits.max_chunks_per_doc, s.models.embed_batch
        )
        generator: Any = ExtractiveGenerator()
        if s.models.generator != "extractive":
            from retrieval.answering import CausalLMGenerator

            generator = CausalLMGenerator(s.models.generator)
        r = s.retrieval
        reranker = None
        if r.reranker:
            from retrieval.rerank import CrossEncoderReranker

            reranker = CrossEncoderReranker(r.reranker)
        self._answerer = QueryAnswerer(
            embedder, store, generator, mode=r.mode, fusion=r.fusion,
            dense_weight=r.dense_weight, reranker=reranker, rerank_top_n=r.rerank_top_n,
        )  # fmt: skip

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


def index_docs(services: RetrievalServices, records: Sequence[Any]) -> list[OutRecord | Rejection]:
    """Apply a batch of valid docs records to the index; record freshness per document.
    A document the indexer refused (over the chunk limit) comes back as a :class:`Rejection`
    of its last record in the batch."""
    report = services.indexer.apply([r.value for r in records])
    now = time.time()
    last = {str(r.value["id"]): r for r in records}
    refused: list[OutRecord | Rejection] = [
        Rejection(last[d].partition, last[d].offset, f"docs: {why}")
        for d, why in report.refused.items()
    ]
    updated, deleted = set(report.updated_ids), set(report.deleted_ids)
    for r in records:
        produced = r.value.get("ts") or r.timestamp
        if produced and str(r.value["id"]) not in report.refused:
            # Strong consistency: once apply returns, every search sees the batch.
            age = max(0.0, now - float(produced))
            doc_id = str(r.value.get("id"))
            metrics.FRESHNESS.observe(age)
            if r.value.get("op") == "delete":
                if doc_id in deleted:
                    metrics.DELETE_INVISIBLE.observe(age)
            elif doc_id in updated:
                metrics.UPDATE_VISIBLE.observe(age)
    log.debug("indexed %s", report)
    return refused + list(_embedding_alerts(services, records, report.vectors))


def _embedding_alerts(
    services: RetrievalServices, records: Sequence[Any], vectors: Any
) -> list[OutRecord]:
    """Feed the batch's chunk embeddings to the docs stream's drift monitor."""
    monitor = services.embedding_monitor
    if monitor is None or vectors is None or not len(vectors):
        return []
    s = services.settings
    out: list[OutRecord] = []
    now = time.monotonic()  # the batch's vectors came together (a bulk load is one reference)
    for vector in vectors:
        signal = monitor.update(vector.tolist(), now)
        if signal is not None:  # at most one per episode
            alert = signal.to_alert(s.models.embedding, "embedder", "none", records[-1])
            if any(o.key == alert["alert_id"] for o in out):
                continue  # one alert per id: the batch's record names it
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
        expr = _query_filter(services, q)
        answer = services.answerer.answer(
            q["question"], k=q.get("k"), filter=expr or None, mode=q.get("mode")
        )
        record = dict(answer.to_record())
        record["id"] = q["id"]
        record["latency_ms"] = (time.perf_counter() - started) * 1000
        outputs.append(OutRecord(answers_topic, q["id"], record))
    return outputs


def http_query(params: Any) -> dict[str, Any]:
    """A ``queries`` record from the query string of ``/search`` or ``/ask``, validated by the
    same contract (so the same filters, modes and bounds of ``k``); raises ``ContractError``
    with the reason. Parameters: ``q``, ``k``, ``mode``, ``title``, ``source`` and ``meta``
    (a JSON object, ``{"year": 2024}``).

    >>> http_query({"q": "log", "k": "3", "source": "man", "meta": '{"year": 2024}'})
    {'id': 'http', 'question': 'log', 'k': 3, 'filter': {'source': 'man', 'meta': {'year': 2024}}}
    >>> http_query({"q": "log", "k": "500"})
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: queries: 500 is greater than the maximum of 100 (at $.k)
    """
    import orjson

    from streams.contracts import ContractError, validate

    record: dict[str, Any] = {"id": "http", "question": params.get("q", "")}
    if not record["question"]:
        raise ContractError("missing q (the question)")
    if "k" in params:
        try:
            record["k"] = int(params["k"])
        except ValueError:
            raise ContractError(
                f"k must be an integer from 1 to 100, got {params['k']!r}"
            ) from None
    if "mode" in params:
        record["mode"] = params["mode"]
    filt: dict[str, Any] = {f: params[f] for f in ("title", "source") if f in params}
    if "meta" in params:
        try:
            filt["meta"] = orjson.loads(params["meta"])
        except orjson.JSONDecodeError:
            raise ContractError(f"meta must be a JSON object, got {params['meta']!r}") from None
    if filt:
        record["filter"] = filt
    return validate("queries", record)


def _query_filter(services: RetrievalServices, query: dict[str, Any]) -> str | None:
    filt = query.get("filter") or {}
    if not filt:
        return None
    expr: str = services.answerer.store.build_filter(
        title=filt.get("title"), source=filt.get("source"), meta=filt.get("meta")
    )
    return expr or None


def make_online_service(settings: Settings) -> Any:
    """The learner's domain object, resumed from its checkpoint when there is one."""
    from trainers.data_drift import FeatureDriftMonitor
    from trainers.drift_monitor import ConceptDriftMonitor
    from trainers.label_free import LabelFreeMonitors
    from trainers.learner import OnlineLearner
    from trainers.service import OnlineService
    from trainers.serving import ServingPolicy
    from trainers.trigger import TriggerPolicy

    m, t = settings.models, settings.trigger
    registry_root = settings.data_dir / "registry"
    load_batch = _batch_loader(settings)

    service = OnlineService(
        OnlineLearner(m.online, m.task, m.name, text_buckets=m.text_buckets),
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
            label_free_action=t.label_free_action,
        ),
        data_monitor=FeatureDriftMonitor(t.data_drift_window, t.data_drift_window)
        if t.data_drift else None,
        serving=ServingPolicy(m.serving, m.task, load_batch, min_samples=m.serving_min_samples),
        emit_predictions=m.predict == "learner",
        per_key=m.per_key, max_keys=m.max_keys,
        reaction=m.drift_reaction, reaction_window=m.reaction_window,
        label_store_bytes=int(m.label_store_mb * 2**20),
        lineage=_promoted_lineage(settings),
        label_free=LabelFreeMonitors(m.task, t.label_free_window, t.label_free_min_labels)
        if t.label_free else None,
    )  # fmt: skip
    if service.policy.serving_version is None:  # a version promoted before this state began
        from trainers.registry import ModelRegistry

        serving = ModelRegistry(registry_root).serving(m.name)
        service.policy.serving_version = serving.version if serving is not None else None
    return service


def _promoted_lineage(settings: Settings) -> Callable[[str], dict[str, list[int]] | None]:
    """``version -> training offsets`` of a version the registry holds as promoted (serving
    or retired since), else None: what the learner checks a ``promoted`` update against."""
    registry_root, name = settings.data_dir / "registry", settings.models.name

    def lineage(version: str) -> dict[str, list[int]] | None:
        from trainers.registry import ModelRegistry

        try:
            v = ModelRegistry(registry_root).get(name, version)
        except Exception:  # no such version, or a name that is no version at all
            return None
        if v.status not in ("promoted", "retired"):
            return None
        offsets = (v.manifest.get("data") or {}).get("offsets")
        return dict(offsets) if isinstance(offsets, dict) else {}

    return lineage


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
        handle: Callable[[Sequence[Any]], Awaitable[list[Any]]],
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
        self.limits = settings.limits.contract_limits()
        self.stopping = threading.Event()  # set at shutdown: stop waiting for deliveries

    async def __call__(self, events: Sequence[Any]) -> None:
        """Process one batch; the batch is acknowledged only if this returns.

        faust's ``take_events`` acknowledges the events in its ``finally`` whatever the body
        did, so on any way out but success (a shutdown mid-retry, a bug) the events are
        held first: their offsets are never committed, and the records come again after a
        restart or a rebalance.
        """
        try:
            await self._run(events)
        except BaseException:
            hold(events)
            raise

    async def _run(self, events: Sequence[Any]) -> None:
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
        results = await self._handle_with_retry(good, raw, bad)
        by_offset = {(r.partition, r.offset): r for r in raw}
        outputs: list[OutRecord] = []
        for out in results:
            if isinstance(out, Rejection):
                self._failed += 1
                bad.append(dead(by_offset[(out.partition, out.offset)], self.dlq, out.reason,
                                self.settings.limits.dlq_raw_bytes))  # fmt: skip
            else:
                outputs.append(out)
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
        offsets may be acknowledged, and a null key is fine. A record Kafka refused (a broker
        down longer than the delivery timeout, not enough in-sync replicas) is sent again
        with backoff until it is taken (:func:`streams.kafka.deliver_or_retry`).
        """
        if not records:
            return
        for rec in records:
            key = rec.key.encode() if rec.key is not None else None
            produce_or_wait(self.producer, rec.topic, rec.encoded(), key)
            metrics.RECORDS_OUT.labels(rec.topic).inc()
            if rec.topic == self.dlq:
                metrics.DEAD_LETTERS.labels(self.topic).inc()
        await asyncio.get_running_loop().run_in_executor(
            None, deliver_or_retry, self.producer, self.stopping.is_set, 10.0, MAX_BACKOFF_S,
            _count_delivery_retries,
        )  # fmt: skip


def _count_delivery_retries(n: int) -> None:
    metrics.RETRIES.labels("delivery").inc(n)


def hold(events: Sequence[Any]) -> None:
    """Keep faust from acknowledging ``events``: one more reference on each message, so the
    acknowledgement that ``take_events`` makes in its ``finally`` is not the last one (the
    consumer commits only up to the first message not acknowledged)."""
    for event in events:
        event.message.incref()


class RequestGuard:
    """The checks every HTTP request passes first: the bearer token (when one is set) and
    the request's size. ``check`` gives ``(status, reason)`` for a refused request.

    >>> from types import SimpleNamespace as Req
    >>> guard = RequestGuard("s3cret", max_bytes=100)
    >>> guard.check(Req(headers={}, query_string="q=x", content_length=None))
    (401, 'missing or wrong bearer token (Authorization: Bearer <token>)')
    >>> ok = {"Authorization": "Bearer s3cret"}
    >>> guard.check(Req(headers=ok, query_string="q=" + "x" * 200, content_length=None))
    (413, 'request of 202 bytes, over the 100-byte limit')
    >>> guard.check(Req(headers=ok, query_string="q=x", content_length=None)) is None
    True
    """

    def __init__(self, token: str, max_bytes: int) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self.max_bytes = max_bytes

    def check(self, request: Any) -> tuple[int, str] | None:
        import hmac

        if self._expected is not None:
            given = (request.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(given, self._expected):
                return 401, "missing or wrong bearer token (Authorization: Bearer <token>)"
        size = len(request.query_string or "") + (request.content_length or 0)
        if size > self.max_bytes:
            return 413, f"request of {size} bytes, over the {self.max_bytes}-byte limit"
        return None


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
        web_bind=settings.web.host,  # what it listens on; web_host only names it in URLs
        web_host=settings.web.host if settings.web.host not in ("0.0.0.0", "::") else "127.0.0.1",
        datadir=str(settings.data_dir / "faust"),
    )
    services = RetrievalServices(settings)

    async def handle_docs(records: Sequence[Any]) -> list[OutRecord | Rejection]:
        result: list[OutRecord | Rejection] = await services.run(index_docs, services, records)
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
        docs_runner.stopping.set()
        query_runner.stopping.set()
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
        # holds the model's lease (see streams.learner_worker), so any number of workers can run.
        if not settings.models.learner:
            return
        from streams.learner_worker import LearnerLoop

        def learner() -> threading.Thread:
            return LearnerLoop(settings, bootstrap, lambda: make_online_service(settings))

        makers: list[Callable[[], threading.Thread]] = [learner]
        if settings.models.predict == "replicas":
            from streams.learner_worker import PredictorLoop

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

    guard = RequestGuard(settings.web.token.get_secret_value(), settings.web.max_request_bytes)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"ok": True})

    async def run_query(web: Any, request: Any, ask: bool) -> Any:
        from retrieval.exceptions import InvalidArgumentError
        from streams.contracts import ContractError

        refused = guard.check(request)
        if refused is not None:
            return web.json({"error": refused[1]}, status=refused[0])
        try:
            q = http_query(request.query)
        except ContractError as exc:
            return web.json({"error": str(exc)}, status=400)

        def call() -> Any:
            expr = _query_filter(services, q)
            a = services.answerer
            if ask:
                return a.answer(q["question"], q.get("k"), expr, q.get("mode")).to_record()
            hits = a.search(q["question"], q.get("k"), expr, q.get("mode"))
            return {"q": q["question"], "hits": [h.__dict__ for h in hits]}

        try:
            return web.json(await services.run(call))
        except InvalidArgumentError as exc:
            return web.json({"error": str(exc)}, status=400)
        except VectorStoreUnavailableError as exc:
            return web.json({"error": str(exc)}, status=503)

    @app.page("/search")
    async def search(web: Any, request: Any) -> Any:
        return await run_query(web, request, ask=False)

    @app.page("/ask")
    async def ask(web: Any, request: Any) -> Any:
        return await run_query(web, request, ask=True)

    return app
