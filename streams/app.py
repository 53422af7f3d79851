"""The faust app: it registers the worker's agents, timers, threads and pages, nothing more.

Run it with ``livelearn worker`` (or ``python -m streams worker``). What the app runs is built
once by the composition root (:class:`streams.services.WorkerServices`); each agent takes a
batch of events with ``stream.take_events`` and hands it to its
:class:`streams.batch_runner.BatchRunner`, which decodes, calls the domain, produces, and
returns only once the effect is durable (Milvus has the rows, Kafka acknowledged the outputs):
faust acknowledges (and later commits) the batch's offsets only after that.

Agents:

* ``docs``    → chunk, embed, upsert into Milvus (:func:`streams.handlers.index_docs`)
* ``queries`` → retrieve and answer → ``answers`` (:func:`streams.handlers.answer_queries`)
* ``feedback`` → ``docs`` (knowledge) or ``style-examples`` (style)
  (:mod:`streams.generator_worker`)
* ``style-examples`` → the generator's trigger → ``training-jobs``; a promoted generator
  version is hot-swapped between two query batches

Threads (:class:`streams.threads.ThreadSupervisor`): the online learner loop and, with
``LIVELEARN_MODELS__PREDICT=replicas``, a predict-only replica (:mod:`streams.learner_worker`).
Pages: ``/search``, ``/ask`` and ``/healthz`` (:mod:`streams.pages`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Sequence
from typing import Any

import faust

from streams import metrics
from streams.batch_runner import MAX_BACKOFF_S
from streams.batching import take_ready
from streams.generator_worker import (
    observe_answers,
    observe_style_examples,
    route_feedback_records,
)
from streams.handlers import answer_queries, index_docs, query_filter
from streams.pages import RequestGuard, register_pages
from streams.paths import StatePaths
from streams.processing import OutRecord, Rejection
from streams.services import WorkerServices
from streams.settings import Settings
from streams.threads import ThreadSupervisor

log = logging.getLogger(__name__)

__all__ = ["Worker", "create_app", "faust_credentials"]


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


class Worker(faust.Worker):
    """faust's worker, except that what breaks while a signal's shutdown closes the loop does
    not turn that shutdown into a crash.

    With the broker gone, a SIGTERM stops the worker while aiokafka's consumer thread still
    waits on it: its task is destroyed as the loop closes (``GeneratorExit``) or it stops on a
    closed loop (``RuntimeError: Event loop is closed``), mode keeps that as the crash reason
    and raises it once the loop is closed, and a worker that shut down as asked exited with
    status 1 (3 of 6 CI runs). After a signal, such a reason is logged and the process ends
    with 0 (or 70 from the watchdog); a crash that stopped the worker by itself still ends it
    with 1.
    """

    def _shutdown_loop(self) -> None:
        try:
            super()._shutdown_loop()
        except (Exception, GeneratorExit, asyncio.CancelledError) as exc:
            if self._signal_stop_time is None:  # not asked to stop: a real crash
                raise
            log.warning("while the loop closed after a signal: %r (shut down all the same)", exc)


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


def _faust_app(settings: Settings, bootstrap: str, web_port: int) -> faust.App:
    """The faust app itself: raw bytes in and out, memory tables, commits every second."""
    from streams import schema_registry

    topics = settings.topics
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # faust makes only its own folder
    schema_registry.install(settings)  # contracts as registry subjects; wire format readable
    return faust.App(
        f"{settings.kafka.group_prefix}-worker",
        # faust takes several bootstrap servers as URLs separated by ';', not a comma list.
        broker=";".join(f"kafka://{server.strip()}" for server in bootstrap.split(",")),
        broker_credentials=faust_credentials(settings),
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
        datadir=str(StatePaths.of(settings).faust),
    )


def _register_retrieval_agents(app: faust.App, services: WorkerServices) -> None:
    """Agents for ``docs`` and ``queries`` (answers, then the generator's view of them), and
    the task that loads the embedder and opens the store before the first batch."""
    from retrieval.exceptions import VectorStoreUnavailableError

    topics = services.settings.topics
    retrieval, runtime = services.retrieval, services.generator

    async def handle_docs(records: Sequence[Any]) -> list[OutRecord | Rejection]:
        result: list[OutRecord | Rejection] = await retrieval.run(index_docs, retrieval, records)
        return result

    async def handle_answers(records: Sequence[Any]) -> list[OutRecord]:
        # Answers, then the generator's view of them (on the query thread: a generator swap
        # happens between two batches, never inside one).
        answers: list[OutRecord] = await retrieval.run_query(
            answer_queries, retrieval, records, topics.answers
        )
        questions = {str(r.value["id"]): str(r.value["question"]) for r in records}
        extra: list[OutRecord] = await retrieval.run_query(
            observe_answers, runtime, answers, questions
        )
        return answers + extra

    retry = (VectorStoreUnavailableError,)
    docs_runner = services.runner("docs", topics.docs, handle_docs, retry)
    query_runner = services.runner("queries", topics.queries, handle_answers, retry)

    @app.agent(app.topic(topics.docs, key_type=bytes, value_type=bytes), name="docs-indexer")
    async def docs_agent(stream: Any) -> None:
        # No waiting for a fuller batch: a lone record is indexed at once; under a backlog
        # the records that came during the last batch make the next one (up to 256).
        async for events in take_ready(stream, 256):
            await docs_runner(events)

    @app.agent(app.topic(topics.queries, key_type=bytes, value_type=bytes),
               name="query-answerer")  # fmt: skip
    async def queries_agent(stream: Any) -> None:
        async for events in stream.take_events(32, within=0.05):
            await query_runner(events)

    @app.timer(interval=1.0)
    async def flush_when_idle() -> None:
        # Searches scan the rows still in Milvus's write buffer: flush them once writes pause.
        try:
            await retrieval.run(retrieval.flush_if_idle)
        except Exception as exc:  # a store outage: the next pause flushes
            log.warning("flush failed (%s); retried at the next pause", exc)

    @app.task
    async def load_models() -> None:
        # Load the embedder and open the store before the first batch arrives, so the
        # first documents are not late by the model's load time. Milvus may not be up yet:
        # back off and retry (the agents would retry the same way on their first batch).
        delay = 1.0
        while True:
            try:
                await retrieval.run(retrieval.load)
                retrieval.start_migration(services.bootstrap)  # if the embedding model changed
                _freeze_startup_heap()
                return
            except VectorStoreUnavailableError as exc:
                metrics.RETRIES.labels("milvus").inc()
                log.warning("vector store unavailable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)


def _register_generator_agents(app: faust.App, services: WorkerServices) -> None:
    """Agents for ``feedback`` and ``style-examples``, the generator's job feedback from
    ``model-updates``, and the timer that hot-swaps a newly promoted generator version."""
    settings, topics = services.settings, services.settings.topics
    retrieval, runtime = services.retrieval, services.generator

    async def handle_feedback(records: Sequence[Any]) -> list[OutRecord | Rejection]:
        result: list[OutRecord | Rejection] = await retrieval.run(
            route_feedback_records, runtime, records
        )
        return result

    async def handle_style(records: Sequence[Any]) -> list[OutRecord]:
        return observe_style_examples(runtime, records)

    feedback_runner = services.runner("feedback", topics.feedback, handle_feedback)
    style_runner = services.runner("style-examples", topics.style_examples, handle_style)

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
        # Load on a thread of its own (the queries go on with the old model meanwhile), then
        # swap on the query thread: between two queries, never inside one.
        if not runtime.uses_lm:
            return
        runtime.answerer = retrieval.answerer
        try:
            loaded = await asyncio.to_thread(runtime.load_pending)
            await retrieval.run_query(runtime.swap, loaded)
        except Exception as exc:  # a bad version must not stop the worker: keep serving
            log.error("generator swap failed, still serving %s: %s", runtime.version, exc)
        jobs = runtime.job_records(runtime.policy.tick())
        if jobs:
            await style_runner.produce(jobs)


def _register_threads(app: faust.App, services: WorkerServices) -> ThreadSupervisor:
    """The online learner (and the predictor replica) as supervised threads beside the agents:
    the learner only learns while this worker holds the model's lease (see
    :mod:`streams.learner_worker`), so any number of workers can run."""
    threads = ThreadSupervisor()
    for name, make in services.learner_threads():
        threads.add(name, make)

    @app.task
    async def start_threads() -> None:
        threads.start()

    @app.timer(interval=5.0)
    async def watch_threads() -> None:
        threads.watch()

    return threads


def _register_extras(app: faust.App, services: WorkerServices, guard: RequestGuard) -> None:
    """The live console (``/``), the webhook sink (when configured) and the OpenAI-compatible
    ``/v1`` endpoints, all behind the same request guard as ``/search``."""
    from streams import chat_api
    from streams.console import register_console
    from streams.webhook_loop import register_webhook

    settings, retrieval, runtime = services.settings, services.retrieval, services.generator
    register_console(app, settings, services.bootstrap, guard)
    register_webhook(app, settings, services.bootstrap)
    chat_api.register(app, guard, lambda: retrieval.answerer, retrieval.run_query,
                      lambda q: query_filter(retrieval, q),
                      lambda: (runtime.name, runtime.version))  # fmt: skip


def create_app(settings: Settings, bootstrap: str, web_port: int = 6066) -> faust.App:
    """The worker app for ``settings``, talking to ``bootstrap``."""
    # torch before any thread starts: its first import takes seconds, and a thread that
    # imports scipy meanwhile (the learner's river) finds a half-made torch module in
    # sys.modules (scipy checks ``torch.Tensor``) and dies of an AttributeError.
    import torch  # noqa: F401

    app = _faust_app(settings, bootstrap, web_port)
    services = WorkerServices(settings, bootstrap)
    _register_retrieval_agents(app, services)
    _register_generator_agents(app, services)
    threads = _register_threads(app, services)
    guard = register_pages(app, services, threads)
    _register_extras(app, services, guard)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_services(app: Any, **kwargs: Any) -> None:
        services.stop_runners()
        await asyncio.get_running_loop().run_in_executor(None, services.close)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_threads(app: Any, **kwargs: Any) -> None:
        _exit_if_stuck(settings.shutdown_timeout_s)
        await asyncio.get_running_loop().run_in_executor(None, threads.stop, 60)

    return app
