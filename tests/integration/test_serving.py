"""Serving through real Kafka: hot swaps on promotion and rollback, learner failover."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from river import datasets

from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings, TriggerSettings
from streams.topics import ensure_topics, topic_specs
from streams.trainer_worker import TrainerWorker, manual_job
from tests.conftest import make_settings, settings_env
from tests.integration.helpers import wait_job_final
from tests.integration.worker import WorkerProcess
from trainers.batch.registry import ModelRegistry
from trainers.online.learner import OnlineLearner
from trainers.online.state import load_checkpoint

ROWS = list(datasets.Phishing())
QUIET = TriggerSettings(volume_threshold=0, warning_action="none", drift_action="none")


def _settings(tmp_path: Path, bootstrap: str, **models: Any) -> Settings:
    s = make_settings(tmp_path, bootstrap, partitions=1, models=ModelSettings(**models),
                      trigger=QUIET)  # fmt: skip
    ensure_topics(admin_client(s, bootstrap), topic_specs(s.topics))
    return s


def _predictions(client: LiveLearnClient, prefix: str = "", timeout_s: float = 5) -> list[Any]:
    return [
        p for p in client.subscribe("predictions", from_beginning=True, timeout_s=timeout_s)
        if p["id"].startswith(prefix)
    ]  # fmt: skip


def _served_by(client: LiveLearnClient, version: str, tag: str, timeout_s: float = 90) -> int:
    """Probe one event at a time until its prediction comes from ``version``; then 30 more
    events must all say so (the swap happened once, between two micro-batches)."""
    x = ROWS[0][0]
    deadline = time.monotonic() + timeout_s
    n = 0
    with_version = None
    consumer = client.subscribe("predictions", from_beginning=True, timeout_s=timeout_s)
    while time.monotonic() < deadline and with_version != version:
        client.send_event(f"{tag}-probe-{n}", features=x, wait=True)
        n += 1
        for p in consumer:
            if p["id"] == f"{tag}-probe-{n - 1}":
                with_version = p["model_version"]
                break
    consumer.close()
    assert with_version == version, f"{version} never served (last {with_version})"
    for i in range(30):
        client.send_event(f"{tag}-after-{i}", features=ROWS[i][0])
    client.flush()
    after: list[Any] = []
    deadline = time.monotonic() + 60
    while len(after) < 30 and time.monotonic() < deadline:
        after = _predictions(client, f"{tag}-after-", timeout_s=2)
    assert len(after) == 30
    assert {(p["model_version"], p["source"]) for p in after} == {(version, "batch")}
    return n


def test_promotion_and_rollback_hot_swap_what_serves(tmp_path: Path, kafka_bootstrap: str) -> None:
    s = _settings(tmp_path, kafka_bootstrap, serving="batch")
    client = LiveLearnClient(s)
    trainer = TrainerWorker(s, kafka_bootstrap, {"epochs": 8, "batch_size": 32, "seed": 1})
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        for i, (x, y) in enumerate(ROWS[:600]):
            client.send_event(f"p{i}", features=x, label=y, ts=1_700_000_000 + i)
        client.flush()
        retrain = manual_job(s, kafka_bootstrap, "retrain")
        client.produce("training-jobs", retrain, wait=True)
        v1 = wait_job_final(client, retrain["job_id"])
        assert v1["status"] == "promoted", v1
        _served_by(client, v1["model_version"], "a")

        for i, (x, y) in enumerate(ROWS[600:1000], 600):  # the concept flips
            client.send_event(f"p{i}", features=x, label=not y, ts=1_700_000_000 + i)
        client.flush()
        finetune = manual_job(s, kafka_bootstrap, "finetune")
        client.produce("training-jobs", finetune, wait=True)
        v2 = wait_job_final(client, finetune["job_id"])
        assert v2["status"] == "promoted", v2
        _served_by(client, v2["model_version"], "b")

        # Rollback from the CLI: the registry points back at v1, model-updates says so, the
        # worker swaps it in, and the predictions name it.
        out = subprocess.run(
            [sys.executable, "-m", "streams", "models", "rollback"], env=settings_env(s),
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert v1["model_version"] in out
        _served_by(client, v1["model_version"], "c")
        registry = ModelRegistry(s.data_dir / "registry")
        serving = registry.serving(s.models.name)
        assert serving is not None and serving.version == v1["model_version"]
    finally:
        worker.stop()
        trainer.stop()
        thread.join(30)
    # Through three swaps, every event was answered exactly once.
    counts = Counter(p["id"] for p in _predictions(client))
    assert counts and set(counts.values()) == {1}
    assert all(f"p{i}" in counts for i in range(1000))


def _two_workers(s: Settings, tmp_path: Path) -> list[WorkerProcess]:
    """Two worker processes on one Kafka; each has its own milvus-lite file (a file is one
    process's)."""
    return [
        WorkerProcess(s, tmp_path / f"worker{i}.log",
                      {"LIVELEARN_MILVUS__URI": str(tmp_path / f"milvus{i}.db")}).start()
        for i in range(2)
    ]  # fmt: skip


def _leader(workers: list[WorkerProcess]) -> WorkerProcess:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for w in workers:
            if "this worker is the learner" in w.log_path.read_text(errors="replace"):
                return w
        time.sleep(0.5)
    raise AssertionError("no worker took the learner lease")


@pytest.mark.parametrize("kill_after", [400])
def test_a_second_worker_takes_over_learning(
    tmp_path: Path, kafka_bootstrap: str, kill_after: int
) -> None:
    s = _settings(tmp_path, kafka_bootstrap, checkpoint_every_records=100)
    client = LiveLearnClient(s)
    workers = _two_workers(s, tmp_path)
    try:
        leader = _leader(workers)
        for i, (x, y) in enumerate(ROWS):
            client.send_event(f"p{i}", features=x, label=y)
            if i == kill_after:
                client.flush()
                while len({p["id"] for p in _predictions(client, timeout_s=1)}) < kill_after // 2:
                    time.sleep(0.2)
                leader.kill()  # kill -9: the lease moves after the session timeout
        client.flush()
        survivor = next(w for w in workers if w is not leader)
        seen: set[str] = set()
        deadline = time.monotonic() + 120
        while len(seen) < len(ROWS) and time.monotonic() < deadline:
            seen |= {p["id"] for p in _predictions(client, timeout_s=2)}
        assert seen == {f"p{i}" for i in range(len(ROWS))}  # every event predicted
        assert "this worker is the learner" in survivor.log_path.read_text()
        path = s.data_dir / "online" / f"{s.models.name}.ckpt"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = load_checkpoint(path)
            if state is not None and state["offsets"] == {0: len(ROWS)}:
                break
            time.sleep(0.5)
    finally:
        for w in workers:
            w.stop()
    state = load_checkpoint(path)
    assert state is not None
    resumed = OnlineLearner.restore(state["learner"])
    assert resumed.n_learned == len(ROWS)  # one writer at a time: nothing learned twice
    uninterrupted = OnlineLearner("logreg")
    for x, y in ROWS:
        uninterrupted.predict_then_learn(x, y)
    probe = [x for x, _ in ROWS[::25]]
    assert [resumed.predict(x) for x in probe] == [uninterrupted.predict(x) for x in probe]


def test_predict_only_replicas_share_events_and_answer_from_snapshots(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    s = make_settings(
        tmp_path, kafka_bootstrap, partitions=2, trigger=QUIET,
        models=ModelSettings(predict="replicas", checkpoint_every_records=100,
                             checkpoint_every_s=1),
    )  # fmt: skip
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    client = LiveLearnClient(s)
    workers = _two_workers(s, tmp_path)
    path = s.data_dir / "online" / f"{s.models.name}.ckpt"
    try:
        for i, (x, y) in enumerate(ROWS[:600]):
            client.send_event(f"p{i}", features=x, label=y)
        client.flush()
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline:  # the learner learned all 600 and published it
            state = load_checkpoint(path) if path.exists() else None
            if state is not None and sum(state["offsets"].values()) == 600:
                break
            time.sleep(0.5)
        assert state is not None and OnlineLearner.restore(state["learner"]).n_learned == 600
        time.sleep(2)  # the replicas look for a new snapshot every second
        for i, (x, _y) in enumerate(ROWS[600:800]):
            client.send_event(f"q{i}", features=x)
        client.flush()
        seen: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(seen) < 800:
            seen = {}
            for p in _predictions(client, timeout_s=2):
                seen.setdefault(p["id"], []).append(p)
    finally:
        for w in workers:
            w.stop()
    assert len(seen) == 800  # every event answered (at least once: a rebalance may repeat)
    # The unlabelled events were answered from the learner's snapshot of all 600 labels.
    assert {p["model_version"] for i in range(200) for p in seen[f"q{i}"]} == {"online-600"}
    # Both replicas answered: the group gave each worker a partition of `events`.
    for w in workers:
        assigned = [line for line in w.log_path.read_text().splitlines()
                    if "predicting partitions" in line]  # fmt: skip
        assert assigned and "[]" not in assigned[-1], assigned
