"""The trainer worker: consumes ``training-jobs`` in a consumer group and runs one job at a time.

* Several workers share the jobs (partitions = parallelism; a job is keyed by its id).
* A job's offset is committed only when the job is finished (promoted, rejected, or failed
  after its retries): a worker killed mid-job leaves the job to be picked up again, and the
  registry (keyed by job id) makes the re-run idempotent, so a job finishes once.
* The job's data is replayed from Kafka, the log being the source of truth: the exact offset
  ranges of the job (retrain: the whole history; fine-tune: since the last trained offsets)
  plus, for a fine-tune, a replay sample of older records against forgetting.
* ``model-updates`` gets ``started``, throttled ``progress`` and the final status.

Run it with ``livelearn trainer``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from streams import contracts, metrics
from streams.exceptions import ContractError
from streams.kafka import consumer, flush_or_raise, producer
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["TrainerWorker", "read_ranges", "replay_sample_ranges"]

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


def replay_sample_ranges(
    new: Mapping[int, tuple[int, int]], low: Mapping[int, int], n: int
) -> dict[int, tuple[int, int]]:
    """Ranges of older records (before each partition's fine-tune range) worth about ``n``.

    Takes the most recent older stretch of each partition, in proportion to its history
    (``trainers.jobs`` then samples from it with the job's seed).

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


class TrainerWorker:
    """Consumes jobs, runs them with :func:`trainers.jobs.run_job`, reports on model-updates."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        config: Mapping[str, Any] | None = None,
        max_retries: int = 2,
        registry_root: Path | None = None,
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.config = dict(config or {})
        self.max_retries = max_retries
        self.registry_root = registry_root or settings.data_dir / "registry"
        self.on_result = on_result
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Poll for jobs until :meth:`stop`; one job at a time."""
        s = self.settings
        c = consumer(
            s, self.bootstrap, f"{s.kafka.group_prefix}-trainers",
            **{"max.poll.interval.ms": 600_000},
        )  # fmt: skip
        c.subscribe([s.topics.training_jobs])
        prod = producer(s, self.bootstrap)
        try:
            while not self.stop_event.is_set():
                msg = c.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                self._run_one(c, prod, msg)
                # Commit only now: the job is finished (or failed for good).
                c.commit(message=msg, asynchronous=False)
        finally:
            c.close()

    def _generator_runner(self) -> Callable[..., Any]:
        """``run_job``'s signature over :func:`trainers.generator.run_generator_job`, with the
        generator's config (``config["generator"]``) and the house style of the settings."""
        from trainers.generator import GeneratorConfig, run_generator_job

        s = self.settings
        overrides = {"base_model": s.models.generator, **dict(self.config.get("generator", {}))}
        gen_config = GeneratorConfig.from_dict(
            {"max_new_tokens": s.models.generator_max_new_tokens, **overrides}
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

    def _run_one(self, c: Any, prod: Any, msg: Any) -> None:
        from trainers.jobs import JobConfig, run_job
        from trainers.registry import ModelRegistry

        s = self.settings
        try:
            job = contracts.decode("training-jobs", msg.value())
        except ContractError as exc:
            log.error("ignoring a malformed job at offset %s: %s", msg.offset(), exc)
            return
        model = job.get("model") or s.models.name
        base: dict[str, Any] = {
            "job_id": job["job_id"], "model": model, "model_version": "", "kind": job["kind"],
            "metrics": {}, "baseline_metrics": None, "artifact": None, "data": job["data"],
        }  # fmt: skip
        self._announce(prod, {**base, "status": "started", "ts": time.time()})
        started = time.monotonic()
        ranges = {int(p): (int(lo), int(hi)) for p, (lo, hi) in job["data"]["offsets"].items()}
        topic = job["data"]["topic"]
        generator_job = model == s.models.generator_name or topic == s.topics.style_examples
        if generator_job:
            run: Callable[..., Any] = self._generator_runner()
            config: Any = None
            contract = "style-examples"
            replay_ratio = float(self.config.get("generator", {}).get("replay_ratio", 0.5))
        else:
            config = JobConfig.from_dict(
                {"progress": False, "task": s.models.task,
                 **{k: v for k, v in self.config.items() if k != "generator"}}
            )  # fmt: skip
            run, contract, replay_ratio = run_job, "events", config.replay_ratio
        # Keep the group membership alive while a long job runs: pause, and poll meanwhile.
        assignment = c.assignment()
        c.pause(assignment)
        result_box: dict[str, Any] = {}

        def work() -> None:
            registry = ModelRegistry(self.registry_root)
            records = read_ranges(s, self.bootstrap, topic, ranges, contract)
            replay: list[Record] = []
            if job["kind"] == "finetune":
                n = int(len(records) * replay_ratio)
                older = replay_sample_ranges(ranges, {}, n)
                replay = read_ranges(s, self.bootstrap, topic, older, contract)
            last_progress = [0.0]

            def progress(p: dict[str, Any]) -> None:
                if time.monotonic() - last_progress[0] > 2.0:
                    last_progress[0] = time.monotonic()
                    self._announce(prod, {**base, "status": "progress", "metrics": p,
                                          "ts": time.time()})  # fmt: skip

            for attempt in range(self.max_retries + 1):
                result = run(job, records, replay, registry, model, config, progress)
                if result.status != "failed":
                    break
                log.warning("job %s failed (attempt %d): %s", job["job_id"], attempt + 1,
                            result.error)  # fmt: skip
            result_box["update"] = result.to_update(model)

        thread = threading.Thread(target=work, name=f"job-{job['job_id']}", daemon=True)
        thread.start()
        while thread.is_alive():
            c.poll(0.5)  # paused: returns nothing, but heartbeats the group
            thread.join(0.5)
        c.resume(assignment)
        update = result_box.get("update")
        if update is None:
            update = {**base, "status": "failed", "error": "the job crashed; see the log",
                      "ts": time.time()}  # fmt: skip
        self._announce(prod, update)
        metrics.JOBS.labels(job["kind"], update["status"]).inc()
        metrics.JOB_SECONDS.labels(job["kind"], update["status"]).observe(
            time.monotonic() - started
        )
        log.info("job %s: %s %s", job["job_id"], update["status"], update.get("model_version"))
        if self.on_result is not None:
            self.on_result(update)


def topic_offsets(settings: Settings, bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of ``topic``."""
    from confluent_kafka import TopicPartition

    c = consumer(settings, bootstrap, None)
    try:
        n = len(c.list_topics(topic, timeout=10).topics[topic].partitions)
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(n)}
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

    from trainers.exceptions import TrainingJobError
    from trainers.registry import ModelRegistry

    topic = settings.topics.events
    marks = topic_offsets(settings, bootstrap, topic)
    serving = ModelRegistry(registry_root or settings.data_dir / "registry").serving(
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
