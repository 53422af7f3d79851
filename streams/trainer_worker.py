"""The trainer worker: consumes ``training-jobs`` in a consumer group and runs one job at a time.

* Several workers share the jobs (partitions = parallelism; a job is keyed by its id).
* A job's offset is committed only when the job is finished (promoted, rejected, or failed
  after its retries): a worker killed mid-job leaves the job to be picked up again, and the
  registry (keyed by job id, checked again under its lock when registering) makes the re-run
  idempotent, so a job finishes once. A job whose partition moves to another trainer mid-job
  is abandoned here and run there.
* A job that breaks its contract is dead-lettered to ``training-jobs.dlq`` with the reason;
  a job that fails for good (bad data, unknown base version) is announced ``failed`` at once;
  a transient failure is retried with an exponential backoff (see :class:`TrainerWorker`).
* The job's data is replayed from Kafka, the log being the source of truth: the exact offset
  ranges of the job (retrain: the whole history; fine-tune: since the last trained offsets)
  plus, for a fine-tune, a replay sample of older records against forgetting.
* ``model-updates`` gets ``started``, throttled ``progress`` and the final status.

Run it with ``livelearn trainer``.

One module (about 570 lines) because it is one worker: its consumer loop, its job thread, and
the reading of a job's data from Kafka (the offset ranges, the replay sample, the manual job a
person asks for), which nothing but this worker (and the drift benchmark) uses.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from streams import contracts, metrics
from streams.exceptions import ContractError
from streams.kafka import consumer, flush_or_raise, producer, retry_transient
from streams.paths import StatePaths
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["TrainerWorker", "check_job", "read_ranges", "replay_sample_ranges"]

Record = tuple[int, int, dict[str, Any]]


def read_ranges(
    settings: Settings,
    bootstrap: str,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    contract: str = "events",
) -> list[Record]:
    """Read ``[from, to)`` of each partition of ``topic``: ``(partition, offset, value)``.

    Records that are not valid ``contract`` records are skipped (they were dead-lettered when they
    arrived); the result is ordered by partition, then offset.
    """
    from confluent_kafka import TopicPartition

    wanted = {p: (lo, hi) for p, (lo, hi) in ranges.items() if hi > lo}
    if not wanted:
        return []
    c = consumer(settings, bootstrap, f"{settings.kafka.group_prefix}-replay")
    out: list[Record] = []
    try:
        c.assign([TopicPartition(topic, p, max(lo, 0)) for p, (lo, _hi) in wanted.items()])
        remaining = set(wanted)
        idle_since = time.monotonic()
        while remaining:
            msgs = c.consume(1000, 1.0)
            if not msgs:
                if time.monotonic() - idle_since > 30:
                    raise TimeoutError(f"replay of {topic} stalled; missing {sorted(remaining)}")
                continue
            idle_since = time.monotonic()
            for m in msgs:
                if m.error() is not None:
                    continue
                p, off = m.partition(), m.offset()
                lo, hi = wanted[p]
                if off >= hi:
                    remaining.discard(p)
                    continue
                try:
                    value = contracts.decode(contract, m.value(), m.key())
                except ContractError:
                    continue
                out.append((p, off, value))
                if off + 1 >= hi:
                    remaining.discard(p)
    finally:
        c.close()
    out.sort(key=lambda r: (r[0], r[1]))
    return out


def bounded_ranges(
    ranges: Mapping[int, tuple[int, int]], max_records: int
) -> dict[int, tuple[int, int]]:
    """The most recent ``max_records`` of ``ranges`` at most, shared by partition in
    proportion to each one's length: what a job reads, so that a retrain over a long history
    holds a bounded set in memory (its lineage then names the ranges it really read).

    >>> bounded_ranges({0: (0, 900), 1: (0, 100)}, 100)
    {0: (810, 900), 1: (90, 100)}
    >>> bounded_ranges({0: (0, 50)}, 100)
    {0: (0, 50)}
    """
    total = sum(max(0, hi - lo) for lo, hi in ranges.values())
    if total <= max_records:
        return dict(ranges)
    return {
        p: (max(lo, hi - max(1, (hi - lo) * max_records // total)), hi)
        for p, (lo, hi) in ranges.items()
    }


def replay_sample_ranges(
    new: Mapping[int, tuple[int, int]], low: Mapping[int, int], n: int
) -> dict[int, tuple[int, int]]:
    """Ranges of older records (before each partition's fine-tune range) worth about ``n``.

    Takes the most recent older stretch of each partition, in proportion to its history
    (``trainers.batch.jobs`` then samples from it with the job's seed).

    >>> replay_sample_ranges({0: (100, 200), 1: (50, 60)}, {}, 30)
    {0: (80, 100), 1: (40, 50)}
    """
    older = {p: (low.get(p, 0), lo) for p, (lo, _hi) in new.items() if lo > low.get(p, 0)}
    total = sum(hi - lo for lo, hi in older.values())
    if total == 0 or n <= 0:
        return {}
    out = {}
    for p, (lo, hi) in older.items():
        share = max(1, round(n * (hi - lo) / total))
        out[p] = (max(lo, hi - share), hi)
    return out


class _JobAbandoned(BaseException):  # noqa: N818  (control flow, like GeneratorExit)
    """Raised inside a running job whose partition moved to another trainer, or on stop.

    A ``BaseException`` so the job runner's ``except Exception`` (a failed job is a result)
    does not turn it into a ``failed`` update: an abandoned job has no outcome here.
    """


class TrainerWorker:
    """Consumes jobs, runs them with :func:`trainers.batch.jobs.run_job`, reports on model-updates.

    The consumer loop, in the order it handles things:

    * A record that breaks the ``training-jobs`` contract (a ``base_version`` that is a path,
      not a version name; data from a topic other than ``events``) goes to
      ``training-jobs.dlq`` with the reason and is committed: it is never run.
    * While a job runs, every partition is paused, also those a rebalance assigns meanwhile
      (in the assignment callback), and the consumer keeps polling to stay in the group; a
      record such a poll still returns is kept and run next, never dropped.
    * If the job's partition is revoked mid-job, another trainer now owns the job: this one
      abandons it at its next progress step, announces nothing and commits nothing. Should both
      get to the end, the registry registers a job once (checked under its lock).
    * A failure that may go away (I/O, a stalled replay, out of memory) is retried after
      ``retry_backoff_s``, doubling up to ``retry_backoff_max_s``, ``max_retries`` times; a
      failure that will not (no labelled data, an unknown base version, a bad config) is
      announced ``failed`` at once. Either way the job is then committed: finished.
    * The offset is committed only if the partition is still this trainer's; a commit the
      group refuses is logged (the job comes back and is found in the registry).

    >>> from streams.settings import Settings
    >>> w = TrainerWorker(Settings(), "localhost:9092", retry_backoff_s=0.5)
    >>> [w.backoff_s(n) for n in (1, 2, 3)], w.max_retries
    ([0.5, 1.0, 2.0], 2)
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        config: Mapping[str, Any] | None = None,
        max_retries: int = 2,
        registry_root: Path | None = None,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        retry_backoff_s: float = 5.0,
        retry_backoff_max_s: float = 300.0,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.config = dict(config or {})
        self.max_retries = max_retries
        self.registry_root = registry_root or StatePaths.of(settings).registry
        self.on_result = on_result
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.stop_event = threading.Event()
        self._job_config()  # a bad override (--set) is the operator's mistake: say so now
        # Consumer state, touched by the rebalance callbacks (run in the polling thread).
        self._assigned: set[tuple[str, int]] = set()
        self._pending: deque[Any] = deque()  # jobs a poll returned while a job ran
        self._current: tuple[str, int] | None = None  # the running job's partition
        self.running: str | None = None  # id of the job running now
        self._lost = threading.Event()  # the running job's partition was revoked
        self.tracker = make_tracker(settings)  # MLflow, when configured

    def stop(self) -> None:
        self.stop_event.set()

    def _job_config(self) -> Any:
        from trainers.batch.config import JobConfig

        s = self.settings
        events_config = {k: v for k, v in self.config.items() if k != "generator"}
        return JobConfig.from_dict({"progress": False, "task": s.models.task, **events_config})

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...) of a failed job."""
        return min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** (attempt - 1))

    # -- the consumer loop ----------------------------------------------------------------
    def run(self) -> None:
        """Poll for jobs until :meth:`stop`; one job at a time."""
        s = self.settings
        c = consumer(
            s, self.bootstrap, f"{s.kafka.group_prefix}-trainers",
            **{"max.poll.interval.ms": 600_000,
               # Incremental rebalances: a trainer joining or leaving moves only the partitions
               # it must, so a running job keeps its partition unless that one has to move.
               "partition.assignment.strategy": "cooperative-sticky"},
        )  # fmt: skip
        c.subscribe(
            [s.topics.training_jobs],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        prod = producer(s, self.bootstrap)
        try:
            while not self.stop_event.is_set():
                msg = self._next_job(c)
                if msg is None:
                    continue
                if self._run_one(c, prod, msg):
                    # Only now: the job is finished (or failed for good), or dead-lettered.
                    self._commit(c, msg)
        finally:
            c.close()

    def _next_job(self, c: Any) -> Any:
        """A job kept from a poll during the last job, else the next one polled."""
        while self._pending:
            msg = self._pending.popleft()
            if (msg.topic(), msg.partition()) in self._assigned:
                return msg
        msg = c.poll(0.5)
        if msg is None:
            return None
        if msg.error() is not None:
            log.warning("training-jobs consumer: %s", msg.error())
            return None
        return msg

    def _on_assign(self, c: Any, partitions: list[Any]) -> None:
        c.incremental_assign(partitions)
        if self._current is not None:
            # Mid-job: take the partitions now and pause them, or their jobs would be fetched.
            c.pause(partitions)
        else:
            # librdkafka keeps a partition paused across a revoke and a new assignment: one
            # paused by a job that was then abandoned (its partition lost, e.g. the group
            # coordinator's broker went down) would never be fetched again.
            c.resume(partitions)
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("trainer assigned %s", sorted(p.partition for p in partitions))

    def _on_revoke(self, c: Any, partitions: list[Any]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        log.info("trainer revoked %s", sorted(p.partition for p in partitions))
        self._assigned -= gone
        self._pending = deque(m for m in self._pending if (m.topic(), m.partition()) not in gone)
        if self._current in gone:
            log.warning(
                "the running job's partition %s moved to another trainer: abandoning job %s "
                "(its new owner runs it; the registry keeps one version per job)",
                self._current[1],
                self.running,
            )
            self._lost.set()

    def _commit(self, c: Any, msg: Any) -> None:
        from confluent_kafka import KafkaException

        if (msg.topic(), msg.partition()) not in self._assigned:
            log.info("not committing job at %s/%s: the partition moved", msg.partition(),
                     msg.offset())  # fmt: skip
            return
        try:
            c.commit(message=msg, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance in progress: the job comes back
            log.warning("commit of the job at %s/%s failed (%s); a re-run finds its version",
                        msg.partition(), msg.offset(), exc)  # fmt: skip

    # -- one job --------------------------------------------------------------------------
    def _generator_runner(self) -> Callable[..., Any]:
        """``run_job``'s signature over :func:`trainers.batch.generator.run_generator_job`, with the
        generator's config (``config["generator"]``) and the house style of the settings."""
        from trainers.batch.generator import GeneratorConfig, run_generator_job

        s = self.settings
        overrides = {"base_model": s.models.generator, **dict(self.config.get("generator", {}))}
        gen_config = GeneratorConfig.from_dict(
            {
                "max_new_tokens": s.models.generator_max_new_tokens,
                "no_repeat_ngram_size": s.models.generator_no_repeat_ngram_size,
                **overrides,
            }
        )
        check = s.style.check()

        def run(job: Any, records: Any, replay: Any, registry: Any, model: str, _config: Any,
                progress: Any) -> Any:  # fmt: skip
            return run_generator_job(job, records, replay, registry, model, gen_config, check,
                                     progress)  # fmt: skip

        return run

    def _announce(self, prod: Any, value: dict[str, Any]) -> None:
        prod.produce(
            self.settings.topics.model_updates,
            contracts.encode_checked("model-updates", value),
            key=str(value.get("job_id", "")).encode(),
        )
        flush_or_raise(prod, 30)

    def _dead_letter(self, prod: Any, msg: Any, reason: str) -> None:
        s = self.settings
        dlq = s.topics.dlq(s.topics.training_jobs)
        value = contracts.dead_letter(
            msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), reason,
            s.limits.dlq_raw_bytes,
        )  # fmt: skip
        prod.produce(dlq, contracts.encode_checked("dlq", value), key=msg.key())
        flush_or_raise(prod, 30)
        metrics.DEAD_LETTERS.labels(s.topics.training_jobs).inc()
        log.error("dead-lettered the job at %s/%s: %s", msg.partition(), msg.offset(), reason)

    def _run_one(self, c: Any, prod: Any, msg: Any) -> bool:
        """Run the job in ``msg``; ``True`` when it is finished here (commit it)."""
        s = self.settings
        try:
            job = check_job(s, contracts.decode("training-jobs", msg.value()))
        except ContractError as exc:
            self._dead_letter(prod, msg, str(exc))
            return True
        model = job.get("model") or s.models.name
        base: dict[str, Any] = {
            "job_id": job["job_id"], "model": model, "model_version": "", "kind": job["kind"],
            "metrics": {}, "baseline_metrics": None, "artifact": None, "data": job["data"],
        }  # fmt: skip
        self._announce(prod, {**base, "status": "started", "ts": time.time()})
        started = time.monotonic()
        config = self._job_config()
        # Keep the group membership alive while a long job runs: pause, and poll meanwhile.
        self._current = (msg.topic(), msg.partition())
        self.running = job["job_id"]
        self._lost.clear()
        c.pause(c.assignment())
        result_box: dict[str, Any] = {}
        thread = threading.Thread(
            target=self._work, args=(job, model, config, prod, base, result_box),
            name=f"job-{job['job_id']}", daemon=True,
        )  # fmt: skip
        thread.start()
        try:
            while thread.is_alive():
                polled = c.poll(0.5)  # paused: returns nothing, but heartbeats the group
                if polled is not None and polled.error() is None:
                    self._pending.append(polled)  # kept: run after this job, never skipped
                thread.join(0.1)
        finally:
            self._current = self.running = None
            c.resume(c.assignment())
        if result_box.get("abandoned"):
            log.warning("job %s abandoned (%s); not committed", job["job_id"],
                        result_box["abandoned"])  # fmt: skip
            return False
        update = result_box.get("update")
        if update is None:
            update = {**base, "status": "failed", "error": "the job crashed; see the log",
                      "ts": time.time()}  # fmt: skip
        self._announce(prod, update)
        self._track(job, model, result_box)
        metrics.JOBS.labels(job["kind"], update["status"]).inc()
        metrics.JOB_SECONDS.labels(job["kind"], update["status"]).observe(
            time.monotonic() - started
        )
        log.info("job %s: %s %s", job["job_id"], update["status"], update.get("model_version"))
        if self.on_result is not None:
            self.on_result(update)
        return True

    def _track(self, job: dict[str, Any], model: str, result_box: dict[str, Any]) -> None:
        """Log the job to MLflow when configured; a failure there is a warning and a metric."""
        if self.tracker is None or "result" not in result_box:
            return
        config: Any = result_box.get("config")  # None for the answering LM's jobs
        config_dict = config.to_dict() if config is not None else {}
        if self.tracker.log_job(job, model, result_box["result"], config_dict) is None:
            metrics.TRACKING_FAILURES.labels("mlflow").inc()

    def _work(
        self,
        job: dict[str, Any],
        model: str,
        config: Any,
        prod: Any,
        base: dict[str, Any],
        result_box: dict[str, Any],
    ) -> None:
        """The job thread: read the job's data, run it, retry what may pass on a retry."""
        from trainers.batch.jobs import JobResult, is_transient, run_job
        from trainers.batch.registry import ModelRegistry

        s = self.settings
        asked = {int(p): (int(lo), int(hi)) for p, (lo, hi) in job["data"]["offsets"].items()}
        ranges = bounded_ranges(asked, s.limits.max_train_records)
        if ranges != asked:  # the lineage names what was read, and what was asked for
            log.warning("job %s reads the newest %d records of its ranges %s: %s",
                        job["job_id"], s.limits.max_train_records, asked, ranges)  # fmt: skip
            offsets = {str(p): [lo, hi] for p, (lo, hi) in sorted(ranges.items())}
            job = {**job, "data": {**job["data"], "offsets": offsets,
                                   "offsets_asked": job["data"]["offsets"]}}  # fmt: skip
        topic = job["data"]["topic"]
        # The answering LM's jobs read style-examples and train with trainers.batch.generator.
        if model == s.models.generator_name or topic == s.topics.style_examples:
            run: Callable[..., Any] = self._generator_runner()
            config, contract = None, "style-examples"
            replay_ratio = float(self.config.get("generator", {}).get("replay_ratio", 0.5))
        else:
            run, contract, replay_ratio = run_job, "events", config.replay_ratio
        last_progress = [0.0]

        def progress(p: dict[str, Any]) -> None:
            self._check_abandoned()
            if time.monotonic() - last_progress[0] > 2.0:
                last_progress[0] = time.monotonic()
                try:
                    self._announce(prod, {**base, "status": "progress", "metrics": p,
                                          "ts": time.time()})  # fmt: skip
                except Exception as exc:  # progress is a courtesy: it must not fail the job
                    log.warning("job %s: progress not announced: %s", job["job_id"], exc)

        try:
            attempt = 0
            while True:
                attempt += 1
                try:
                    registry = ModelRegistry(self.registry_root)
                    records = read_ranges(s, self.bootstrap, topic, ranges, contract)
                    replay: list[Record] = []
                    if job["kind"] == "finetune":
                        n = int(len(records) * replay_ratio)
                        wanted = replay_sample_ranges(ranges, {}, n)
                        replay = read_ranges(s, self.bootstrap, topic, wanted, contract)
                    self._check_abandoned()
                    result = run(job, records, replay, registry, model, config, progress)
                except Exception as exc:  # replay or registry (run_job returns its own failures)
                    log.exception(
                        "job %s: opening the registry or reading its data failed", job["job_id"]
                    )
                    result = JobResult(
                        job_id=job["job_id"], kind=job["kind"], status="failed", version=None,
                        error=f"{type(exc).__name__}: {exc}", data=job["data"],
                        retryable=is_transient(exc),
                    )  # fmt: skip
                if result.status != "failed":
                    break
                if not result.retryable:
                    result = dataclasses.replace(
                        result, error=f"{result.error} (permanent: not retried)"
                    )
                    break
                if attempt > self.max_retries:
                    result = dataclasses.replace(
                        result, error=f"{result.error} (failed {attempt} times; gave up)"
                    )
                    break
                delay = self.backoff_s(attempt)
                log.warning("job %s failed (attempt %d), retrying in %.1f s: %s",
                            job["job_id"], attempt, delay, result.error)  # fmt: skip
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    self._check_abandoned()
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            result_box["update"] = result.to_update(model)
            result_box["result"], result_box["config"] = result, config
        except _JobAbandoned as exc:
            result_box["abandoned"] = str(exc)

    def _check_abandoned(self) -> None:
        if self._lost.is_set():
            raise _JobAbandoned("its partition moved to another trainer")
        if self.stop_event.is_set():
            raise _JobAbandoned("the trainer is stopping")


def make_tracker(settings: Settings) -> Any:
    """The MLflow tracker of ``settings.mlflow``, or ``None`` when no tracking URI is set."""
    m = settings.mlflow
    if not m.tracking_uri:
        return None
    from trainers.batch.tracking import MlflowTracker

    return MlflowTracker(m.tracking_uri, m.experiment, m.register_models)


def check_job(settings: Settings, job: dict[str, Any]) -> dict[str, Any]:
    """What the contract cannot say about a job: its data is this deployment's ``events`` (or
    ``style-examples``, for the answering LM's jobs).

    Raises :class:`~streams.exceptions.ContractError` (the dead-letter reason) otherwise.

    >>> from streams.settings import Settings
    >>> job = {"job_id": "j", "kind": "retrain", "reason": "manual",
    ...        "data": {"topic": "docs", "offsets": {"0": [0, 10]}}}
    >>> check_job(Settings(), job)
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: training-jobs: data.topic is 'docs', ...
    """
    topic = job["data"]["topic"]
    if topic not in (settings.topics.events, settings.topics.style_examples):
        raise ContractError(
            f"training-jobs: data.topic is {topic[:200]!r}, but trainers learn from the events "
            f"topic {settings.topics.events!r} or the style examples "
            f"{settings.topics.style_examples!r} only (at $.data.topic)"
        )
    for p, (lo, hi) in job["data"]["offsets"].items():
        if hi < lo:
            raise ContractError(
                f"training-jobs: offsets of partition {p} run backwards ({lo} > {hi}); a range "
                f"is [from, to) (at $.data.offsets.{p})"
            )
    return job


def topic_offsets(settings: Settings, bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of ``topic``."""
    from confluent_kafka import TopicPartition

    c = consumer(settings, bootstrap, None)
    try:
        n = len(retry_transient(c.list_topics, topic, timeout=10).topics[topic].partitions)
        return {
            p: retry_transient(c.get_watermark_offsets, TopicPartition(topic, p), timeout=10)
            for p in range(n)
        }  # just after a leader change: OFFSET_NOT_AVAILABLE until its high watermark is known
    finally:
        c.close()


def manual_job(
    settings: Settings, bootstrap: str, kind: str, registry_root: Path | None = None
) -> dict[str, Any]:
    """A ``training-jobs`` record asked for by a person (``livelearn train``).

    Retrain: the whole history of ``events``; fine-tune: from the offsets the serving version
    was trained up to. The job id is derived from what it covers, so asking twice for the
    same data yields the same job (and one version).
    """
    import hashlib

    from trainers.batch.registry import ModelRegistry
    from trainers.exceptions import TrainingJobError

    topic = settings.topics.events
    marks = topic_offsets(settings, bootstrap, topic)
    serving = ModelRegistry(registry_root or StatePaths.of(settings).registry).serving(
        settings.models.name
    )
    trained: dict[int, int] = {}
    if kind == "finetune" and serving is None:
        raise TrainingJobError(
            f"nothing serves {settings.models.name!r} yet, so there is nothing to fine-tune: "
            "ask for a retrain (livelearn train --kind retrain)"
        )
    if kind == "finetune" and serving is not None:
        data = serving.manifest.get("data") or {}
        trained = {int(p): int(r[1]) for p, r in (data.get("offsets") or {}).items()}
    offsets = {
        str(p): [trained.get(p, low) if kind == "finetune" else low, high]
        for p, (low, high) in marks.items()
    }
    digest = hashlib.sha1(orjson.dumps([settings.models.name, kind, offsets])).hexdigest()[:12]
    job: dict[str, Any] = {
        "job_id": f"{kind}-manual-{digest}",
        "kind": kind,
        "reason": "manual",
        "model": settings.models.name,
        "data": {"topic": topic, "offsets": offsets},
        "ts": time.time(),
    }
    if serving is not None:
        job["base_version"] = serving.version
    return contracts.validate("training-jobs", job)
