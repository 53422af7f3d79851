"""Training jobs through real Kafka: retrain, fine-tune, rejection, a trainer killed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from river import datasets

from streams.sdk import LiveLearnClient
from streams.settings import Settings
from streams.trainer_worker import TrainerWorker, manual_job
from tests.conftest import settings_env
from tests.integration.helpers import wait_job_final
from trainers.batch.registry import ModelRegistry


def _phishing(start: int, stop: int) -> list[tuple[dict[str, float], bool]]:
    return list(datasets.Phishing())[start:stop]


def _send(client: LiveLearnClient, rows: list[tuple[dict[str, float], bool]], base: int) -> None:
    for i, (x, y) in enumerate(rows):
        client.send_event(f"p{base + i}", features=x, label=y, ts=1_700_000_000 + base + i)
    client.flush()


@pytest.fixture
def trainer(settings: Settings):  # type: ignore[no-untyped-def]
    worker = TrainerWorker(
        settings, settings.kafka.bootstrap_servers, {"epochs": 8, "batch_size": 32, "seed": 1}
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(30)


def test_retrain_then_finetune_promoted_with_lineage(settings: Settings, trainer: Any) -> None:
    client = LiveLearnClient(settings)
    _send(client, _phishing(0, 800), 0)
    job = manual_job(settings, client.bootstrap, "retrain")
    client.produce("training-jobs", job, wait=True)
    update = wait_job_final(client, job["job_id"])
    assert update["status"] == "promoted", update
    assert update["metrics"]["accuracy"] > 0.75
    registry = ModelRegistry(settings.data_dir / "registry")
    v1 = registry.serving(settings.models.name)
    assert v1 is not None and v1.version == update["model_version"]
    assert v1.manifest["data"] == job["data"] and v1.job_id == job["job_id"]
    assert sum(hi - lo for lo, hi in job["data"]["offsets"].values()) == 800

    # The concept changes: the same pages now carry the opposite label. The serving version
    # is wrong on most of them; a fine-tune on the new range must beat it.
    _send(client, [(x, not y) for x, y in _phishing(800, 1250)], 800)
    ft = manual_job(settings, client.bootstrap, "finetune")
    # A fine-tune covers exactly what arrived since the serving version's data.
    for p, (lo, _hi) in ft["data"]["offsets"].items():
        assert lo == job["data"]["offsets"][p][1]
    client.produce("training-jobs", ft, wait=True)
    update = wait_job_final(client, ft["job_id"])
    assert update["status"] == "promoted", update
    v2 = registry.serving(settings.models.name)
    assert v2 is not None and v2.manifest["kind"] == "finetune"
    assert v2.manifest["base_version"] == v1.version and v2.manifest["data"] == ft["data"]

    # The same job again: trained once, the same version answers.
    client.produce("training-jobs", ft, wait=True)
    time.sleep(2)
    assert len([v for v in registry.list(settings.models.name) if v.job_id == ft["job_id"]]) == 1


def test_a_worse_candidate_is_rejected(settings: Settings) -> None:
    client = LiveLearnClient(settings)
    _send(client, _phishing(0, 1000), 0)
    good = TrainerWorker(settings, client.bootstrap, {"epochs": 8, "seed": 1})
    bad = TrainerWorker(
        settings, client.bootstrap, {"epochs": 1, "max_steps": 1, "lr": 1e-7, "seed": 2}
    )
    for worker, kind in ((good, "retrain"), (bad, "retrain")):
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        job = manual_job(settings, client.bootstrap, kind)
        job["job_id"] += f"-{id(worker)}"  # a second, distinct retrain of the same data
        client.produce("training-jobs", job, wait=True)
        update = wait_job_final(client, job["job_id"])
        worker.stop()
        thread.join(30)
    assert update["status"] == "rejected", update
    assert update["metrics"]["accuracy"] < update["baseline_metrics"]["accuracy"]
    registry = ModelRegistry(settings.data_dir / "registry")
    statuses = sorted(v.status for v in registry.list(settings.models.name))
    assert statuses == ["promoted", "rejected"]


def test_trainer_killed_mid_job_finishes_it_once(settings: Settings, tmp_path: Path) -> None:
    client = LiveLearnClient(settings)
    _send(client, _phishing(0, 1250), 0)
    job = manual_job(settings, client.bootstrap, "retrain")
    client.produce("training-jobs", job, wait=True)
    env = settings_env(settings)
    cmd = [sys.executable, "-m", "streams", "trainer", "--set", "epochs=40"]
    log = (tmp_path / "trainer.log").open("ab")
    first = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    for update in client.subscribe("model-updates", from_beginning=True, timeout_s=120):
        if update["job_id"] == job["job_id"] and update["status"] == "progress":
            break
    os.killpg(first.pid, signal.SIGKILL)  # mid-training: nothing committed, nothing registered
    first.wait(10)
    registry = ModelRegistry(settings.data_dir / "registry")
    assert registry.find_by_job(job["job_id"]) is None
    second = subprocess.Popen(
        [*cmd[:-2], "--set", "epochs=2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        update = wait_job_final(client, job["job_id"])
        assert update["status"] == "promoted"
        time.sleep(3)  # a second run of the job would show up as a second version
        assert [v.job_id for v in registry.list(settings.models.name)] == [job["job_id"]]
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)


def test_a_retrain_over_a_long_history_reads_a_bounded_newest_part(
    settings: Settings, tmp_path: Path
) -> None:
    """LIVELEARN_LIMITS__MAX_TRAIN_RECORDS bounds what one job holds in memory: a retrain over
    600 events with a bound of 200 reads the newest 200, and its lineage says so."""
    from streams.settings import LimitSettings

    s = settings.model_copy(update={"limits": LimitSettings(max_train_records=200)})
    client = LiveLearnClient(s)
    _send(client, _phishing(0, 600), 0)
    worker = TrainerWorker(s, s.kafka.bootstrap_servers, {"epochs": 4, "seed": 1})
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        job = manual_job(s, client.bootstrap, "retrain")
        client.produce("training-jobs", job, wait=True)
        update = wait_job_final(client, job["job_id"])
    finally:
        worker.stop()
        thread.join(30)
    assert update["status"] in ("promoted", "rejected"), update
    version = ModelRegistry(s.data_dir / "registry").find_by_job(job["job_id"], s.models.name)
    assert version is not None
    data = version.manifest["data"]
    assert data["offsets_asked"] == job["data"]["offsets"]
    read = {p: hi - lo for p, (lo, hi) in data["offsets"].items()}
    assert 190 <= sum(read.values()) <= 200
    for p, (_lo, hi) in data["offsets"].items():  # the newest records, up to the same end
        assert hi == job["data"]["offsets"][p][1]
