"""The trainer's control plane through real Kafka: hostile jobs, failures, rebalances.

* A ``training-jobs`` record whose ``base_version`` is a path (``../../planted``, a model
  planted next to the registry) is dead-lettered with the reason; nothing is trained, nothing
  registered, nothing promoted (it used to fine-tune the planted model and promote it).
* A job that fails for a reason that will not change is announced ``failed`` at once, without
  retries; a transient failure is retried after a backoff and succeeds once its cause is gone.
* Two trainers, and rebalances in the middle of jobs (a second trainer joins, then the first
  leaves): every job is finished, once, with one version each, and every offset committed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from river import datasets

from streams import contracts
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from streams.trainer_worker import TrainerWorker, manual_job
from tests.integration.helpers import wait_caught_up
from trainers.batch.datasets import LabelEncoder, examples_from_records
from trainers.batch.models import FeatureVectorizer, TabularMLP
from trainers.batch.registry import ModelRegistry

FINAL = contracts.FINAL_JOB_STATUSES


def _send_phishing(client: LiveLearnClient, start: int, stop: int) -> None:
    for i, (x, y) in enumerate(list(datasets.Phishing())[start:stop]):
        client.send_event(f"p{start + i}", features=x, label=y, ts=1_700_000_000 + start + i)
    client.flush()


def _raw_producer(settings: Settings) -> Producer:
    return Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})


def _produce_raw(settings: Settings, job: dict[str, Any], partition: int | None = None) -> None:
    """Produce a job as an outsider would: no client-side validation."""
    prod = _raw_producer(settings)
    kwargs: dict[str, Any] = {"key": str(job["job_id"]).encode()}
    if partition is not None:
        kwargs["partition"] = partition
    prod.produce(settings.topics.training_jobs, orjson.dumps(job), **kwargs)
    assert prod.flush(30) == 0


def _updates(client: LiveLearnClient, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    return list(client.subscribe("model-updates", from_beginning=True, timeout_s=timeout_s))


def _wait_final(
    client: LiveLearnClient, job_ids: set[str], timeout_s: float = 300
) -> dict[str, list[dict[str, Any]]]:
    """Every model-updates record of ``job_ids``, once each has a final one."""
    seen: dict[str, list[dict[str, Any]]] = {j: [] for j in job_ids}
    finished: set[str] = set()
    for update in client.subscribe("model-updates", from_beginning=True, timeout_s=timeout_s):
        if update["job_id"] in seen:
            seen[update["job_id"]].append(update)
            if update["status"] in FINAL:
                finished.add(update["job_id"])
        if finished == job_ids:
            return seen
    raise AssertionError(f"no final update for {sorted(job_ids - finished)}")


def _dead_letters(settings: Settings, n: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    from streams.kafka import consumer

    dlq = settings.topics.dlq(settings.topics.training_jobs)
    c = consumer(settings, settings.kafka.bootstrap_servers, None)
    c.subscribe([dlq])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(contracts.validate("dlq", orjson.loads(msg.value())))
    finally:
        c.close()
    return out


def _start(worker: TrainerWorker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def _plant_a_model(folder: Path, client_rows: list[tuple[dict[str, float], bool]]) -> None:
    """A complete, loadable version folder outside the registry: the attacker's model."""
    records = [(0, i, {"id": f"x{i}", "features": x, "label": y}) for i, (x, y) in
               enumerate(client_rows)]  # fmt: skip
    examples = examples_from_records(records)
    vectorizer = FeatureVectorizer.fit([e.features or {} for e in examples], 64)
    labels = LabelEncoder.fit(e.label for e in examples)
    TabularMLP.build(vectorizer, "classification", labels, (0.0, 1.0), 8).save(folder / "model")
    manifest = {"job_id": "planted", "status": "promoted", "artifacts": {"model": "model"}}
    (folder / "manifest.json").write_text(orjson.dumps(manifest).decode())


def test_a_base_version_that_is_a_path_is_dead_lettered_and_nothing_is_promoted(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streams.trainer_worker")
    client = LiveLearnClient(settings)
    _send_phishing(client, 0, 300)
    registry = ModelRegistry(settings.data_dir / "registry")
    # root/<model>/../../planted is <data_dir>/planted: next to the registry, not in it (the
    # model's folder exists once the model has had a version, or a lock, as here).
    (settings.data_dir / "registry" / settings.models.name).mkdir(parents=True)
    _plant_a_model(settings.data_dir / "planted", list(datasets.Phishing())[:300])
    legit = manual_job(settings, client.bootstrap, "retrain")
    attack = dict(legit, job_id="attack-1", kind="finetune", base_version="../../planted")
    _produce_raw(settings, attack)
    # Not a path, but a version the registry does not hold: a permanent failure.
    unknown = dict(legit, job_id="unknown-base", kind="finetune", base_version="v0042-0123abcd")
    _produce_raw(settings, unknown)
    other_topic = dict(legit, job_id="other-topic", data={**legit["data"], "topic": "docs"})
    _produce_raw(settings, other_topic)

    worker = TrainerWorker(settings, client.bootstrap, {"epochs": 2, "seed": 1},
                           retry_backoff_s=5.0)  # fmt: skip
    thread = _start(worker)
    try:
        updates = _wait_final(client, {"unknown-base"}, timeout_s=180)
        letters = _dead_letters(settings, 2)
        wait_caught_up(settings, f"{settings.kafka.group_prefix}-trainers",
                       settings.topics.training_jobs, 60)  # fmt: skip
    finally:
        worker.stop()
        thread.join(30)

    by_key = {d["key"]: d for d in letters}
    assert set(by_key) == {"attack-1", "other-topic"}, letters
    assert "base_version" in by_key["attack-1"]["error"], by_key["attack-1"]
    assert "../../planted" in by_key["attack-1"]["raw"]
    assert "data.topic" in by_key["other-topic"]["error"], by_key["other-topic"]
    # Nothing was trained from the planted model, nor registered, nor promoted.
    assert registry.list(settings.models.name) == []
    assert registry.serving(settings.models.name) is None
    all_updates = _updates(client)
    assert not [u for u in all_updates if u["job_id"] in ("attack-1", "other-topic")]
    # The unknown base version: failed at once, said so, and not retried.
    (final,) = [u for u in updates["unknown-base"] if u["status"] in FINAL]
    assert final["status"] == "failed"
    assert "not in the registry" in final["error"] and "permanent" in final["error"]
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_a_transient_failure_is_retried_after_a_backoff(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="streams.trainer_worker")
    client = LiveLearnClient(settings)
    _send_phishing(client, 0, 300)
    # The registry's folder cannot be created (a file is in the way): an OSError, transient.
    root = tmp_path / "registry-volume"
    root.write_text("not mounted yet")
    job = manual_job(settings, client.bootstrap, "retrain", registry_root=tmp_path / "none")
    client.produce("training-jobs", job, wait=True)
    worker = TrainerWorker(settings, client.bootstrap, {"epochs": 2, "seed": 1},
                           registry_root=root, max_retries=5, retry_backoff_s=2.0)  # fmt: skip
    thread = _start(worker)
    try:
        deadline = time.monotonic() + 120
        while not [r for r in caplog.records if "retrying in" in r.getMessage()]:
            assert time.monotonic() < deadline, "the first failure was not retried"
            time.sleep(0.2)
        first_retry_logged = time.monotonic()
        root.unlink()  # the volume "comes back"
        updates = _wait_final(client, {job["job_id"]}, timeout_s=180)
    finally:
        worker.stop()
        thread.join(30)
    final = updates[job["job_id"]][-1]
    assert final["status"] == "promoted", final
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert 1 <= len(retries) <= 5
    assert "FileExistsError" in retries[0].getMessage() or "NotADirectory" in str(retries)
    # The retry waited for its backoff (2 s) instead of running again at once.
    assert time.monotonic() - first_retry_logged >= 1.5
    registry = ModelRegistry(root)
    assert [v.job_id for v in registry.list(settings.models.name)] == [job["job_id"]]


def test_two_trainers_and_rebalances_mid_job_finish_every_job_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streams.trainer_worker")
    client = LiveLearnClient(settings)
    _send_phishing(client, 0, 600)
    base = manual_job(settings, client.bootstrap, "retrain")
    job_ids = [f"job-{i}" for i in range(6)]
    config = {"epochs": 25, "batch_size": 32, "seed": 1}
    results: dict[str, list[str]] = {"a": [], "b": []}
    reused: list[str] = []  # announced again (a commit skipped in a rebalance), not trained

    def finished(name: str) -> Any:
        def on_result(u: dict[str, Any]) -> None:
            (reused if u.get("reused") else results[name]).append(u["job_id"])

        return on_result

    a = TrainerWorker(settings, client.bootstrap, config, retry_backoff_s=1.0,
                      on_result=finished("a"))  # fmt: skip
    b = TrainerWorker(settings, client.bootstrap, config, retry_backoff_s=1.0,
                      on_result=finished("b"))  # fmt: skip
    _produce_raw(settings, dict(base, job_id=job_ids[0]), partition=0)
    thread_a = _start(a)
    thread_b: threading.Thread | None = None
    try:
        # B joins while A is in the middle of its first job: a rebalance mid-job, which
        # moves one of A's partitions to B (the sticky assignor moves partition 0 first, the
        # one of A's job: then A abandons the job and B runs it).
        for update in client.subscribe("model-updates", from_beginning=True, timeout_s=180):
            if update["status"] == "progress":
                break
        assert a.running == job_ids[0]
        thread_b = _start(b)
        for i, job_id in enumerate(job_ids[1:], start=1):  # more jobs, on every partition
            _produce_raw(settings, dict(base, job_id=job_id), partition=i % 3)
        # A leaves in the middle of a job while B is busy too: A abandons its job, and its
        # partitions move to B mid-job (paused there until B is free, then run by B).
        deadline = time.monotonic() + 240
        while not (results["a"] + results["b"] + reused and a.running and b.running):
            assert time.monotonic() < deadline, results
            time.sleep(0.1)
        abandoned = a.running
        a_stopped_at = time.time()
        a.stop()
        thread_a.join(120)
        assert not thread_a.is_alive()
        updates = _wait_final(client, set(job_ids), timeout_s=600)
        wait_caught_up(settings, f"{settings.kafka.group_prefix}-trainers",
                       settings.topics.training_jobs, 120)  # fmt: skip
    finally:
        a.stop()
        b.stop()
        thread_a.join(30)
        if thread_b is not None:
            thread_b.join(60)

    # A job whose partition moved to B when B joined, before A left, was abandoned by A mid-job
    # and not finished by A. Usually the first job (the sticky assignor moves partition 0
    # first); on a slower rebalance A has finished it and runs the next job of partition 0
    # by then (seen on Kafka 4.4). A's leaving logs the same line for the job it abandons then.
    moved = [r.args[1] for r in caplog.records if "moved to another trainer" in r.getMessage()
             and isinstance(r.args, tuple) and r.created < a_stopped_at]  # fmt: skip
    assert not set(moved) & set(results["a"]), (moved, results)
    registry = ModelRegistry(settings.data_dir / "registry")
    versions = registry.list(settings.models.name)
    # One version per job: no job trained and registered twice, none lost.
    assert sorted(v.job_id or "" for v in versions) == sorted(job_ids)
    by_job = {v.job_id: v.version for v in versions}
    for job_id, seen in updates.items():
        finals = [u for u in seen if u["status"] in FINAL]
        assert finals and {u["model_version"] for u in finals} == {by_job[job_id]}, seen
        assert all(u["status"] != "failed" for u in finals), finals
    assert abandoned not in results["a"] and abandoned in results["b"], (abandoned, results)
    done = results["a"] + results["b"]
    assert set(done) == set(job_ids), (results, reused)
    # Trained and finished once: a job finished by both trainers would be here twice. A job
    # whose commit a rebalance skipped is announced again by its new owner, as reused.
    assert sorted(done) == sorted(job_ids), (results, reused)
    assert set(reused) <= set(job_ids), reused
