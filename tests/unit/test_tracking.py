"""MLflow tracking of training jobs, on a real MLflow SQLite store (no server)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from streams import metrics
from streams.settings import MlflowSettings, Settings
from streams.trainer import TrainerWorker, make_tracker
from tests.unit.test_jobs import TAB, job, tabular_records
from trainers.jobs import JobConfig, run_job
from trainers.registry import ModelRegistry
from trainers.tracking import MlflowTracker

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_promoted_job_logs_a_run_and_a_model_version_with_its_lineage(
    tmp_path: Path, store: str
) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    recs = tabular_records(240)
    j = job("mlf-1", "retrain", recs)
    config = JobConfig.from_dict(TAB)
    res = run_job(j, recs, [], reg, "m", config)
    assert res.status == "promoted", res
    tracker = MlflowTracker(store, "jobs")
    run_id = tracker.log_job(j, "m", res, config.to_dict())
    assert run_id is not None
    run = tracker.client.get_run(run_id)
    tags, params, logged = run.data.tags, run.data.params, run.data.metrics
    assert tags["livelearn.job_id"] == "mlf-1" and tags["gate.decision"] == "promoted"
    assert tags["gate.reason"] == res.reason
    assert tags["kafka.topic"] == "events" and tags["kafka.offsets.0"] == "0-239"
    assert params["epochs"] == "8" and params["model_kind"] == "tabular"
    assert logged["accuracy"] == pytest.approx(res.metrics["accuracy"])
    history = tracker.client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 9))  # one point per epoch
    assert run.info.status == "FINISHED"
    [mv] = tracker.client.search_model_versions("name = 'm'")
    assert mv.run_id == run_id and mv.source == res.artifact
    assert mv.tags["kafka.offsets.0"] == "0-239" and mv.tags["livelearn.version"] == res.version
    # The registry stays the truth: its version names the same data.
    assert reg.get("m", res.version or "").manifest["data"] == j["data"]
    # At least once: announcing the job again logs nothing new.
    assert tracker.log_job(j, "m", res, config.to_dict()) == run_id
    assert len(tracker.client.search_model_versions("name = 'm'")) == 1


def test_rejected_job_is_a_run_without_a_model_version(tmp_path: Path, store: str) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    recs = tabular_records(60)
    j = job("mlf-2", "retrain", recs)
    res = run_job(j, recs, [], reg, "r", JobConfig.from_dict(TAB | {"epochs": 1}))
    assert res.status in ("rejected", "promoted")
    tracker = MlflowTracker(store, "jobs")
    run_id = tracker.log_job(j, "r", res)
    assert run_id is not None
    assert tracker.client.get_run(run_id).data.tags["gate.decision"] == res.status
    versions = tracker.client.search_model_versions("name = 'r'")
    assert len(versions) == (1 if res.status == "promoted" else 0)


def test_mlflow_down_is_a_warning_and_a_metric_not_a_failed_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = Settings(data_dir=tmp_path, mlflow=MlflowSettings(tracking_uri="http://127.0.0.1:9"))
    worker = TrainerWorker(settings, "127.0.0.1:9")
    assert isinstance(worker.tracker, MlflowTracker)
    reg = ModelRegistry(tmp_path / "reg")
    recs = tabular_records(60)
    j = job("mlf-3", "retrain", recs)
    res = run_job(j, recs, [], reg, "m", JobConfig.from_dict(TAB | {"epochs": 1}))
    before = metrics.TRACKING_FAILURES.labels("mlflow")._value.get()
    started = time.monotonic()
    box: dict[str, Any] = {"result": res, "config": JobConfig.from_dict(TAB)}
    worker._track(j, "m", box)  # raises nothing
    assert time.monotonic() - started < 30
    assert metrics.TRACKING_FAILURES.labels("mlflow")._value.get() == before + 1
    assert "MLflow: job mlf-3 not logged" in caplog.text
    assert make_tracker(Settings(data_dir=tmp_path)) is None  # off unless configured
