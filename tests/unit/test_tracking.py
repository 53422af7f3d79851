"""MLflow tracking of training jobs, on a real MLflow SQLite store (no server)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from streams import metrics
from streams.settings import MlflowSettings, Settings
from streams.trainer_worker import TrainerWorker, make_tracker
from tests.unit.test_jobs import TAB, job, tabular_records
from trainers.batch.jobs import JobConfig, run_job
from trainers.batch.registry import ModelRegistry
from trainers.batch.tracking import MlflowTracker

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any, Any]:
    """One real job, promoted (the first version of a model that beats the majority class)."""
    reg = ModelRegistry(tmp_path_factory.mktemp("reg"))
    recs = tabular_records(240)
    j = job("mlf-1", "retrain", recs)
    res = run_job(j, recs, [], reg, "m", JobConfig.from_dict(TAB))
    assert res.status == "promoted", res
    assert reg.get("m", res.version or "").manifest["data"] == j["data"]
    return j, res, reg


def test_promoted_job_logs_a_run_and_a_model_version_with_its_lineage(
    trained: tuple[dict[str, Any], Any, Any], store: str
) -> None:
    j, res, reg = trained
    config = JobConfig.from_dict(TAB)
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
    assert reg.serving("m").version == res.version
    # At least once: announcing the job again logs nothing new.
    assert tracker.log_job(j, "m", res, config.to_dict()) == run_id
    assert len(tracker.client.search_model_versions("name = 'm'")) == 1


def test_rejected_and_failed_jobs_are_runs_without_a_model_version(
    trained: tuple[dict[str, Any], Any, Any], store: str
) -> None:
    j, res, _reg = trained
    tracker = MlflowTracker(store, "jobs")
    for status, job_id in (("rejected", "mlf-2"), ("failed", "mlf-3")):
        other = dataclasses.replace(res, job_id=job_id, status=status, reason="no better")
        run_id = tracker.log_job({**j, "job_id": job_id}, "r", other)
        assert run_id is not None
        run = tracker.client.get_run(run_id)
        assert run.data.tags["gate.decision"] == status
        assert run.data.tags["gate.reason"] == "no better"
        assert run.info.status == ("FAILED" if status == "failed" else "FINISHED")
    assert tracker.client.search_model_versions("name = 'r'") == []


def test_mlflow_down_is_a_warning_and_a_metric_not_a_failed_job(
    trained: tuple[dict[str, Any], Any, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    # A logging config applied earlier in this process (faust's, in a test that ran a worker
    # in-process) may have disabled existing loggers: the warning must still be seen here.
    tracking_log = logging.getLogger("trainers.batch.tracking")
    monkeypatch.setattr(tracking_log, "disabled", False)
    monkeypatch.setattr(tracking_log, "propagate", True)
    caplog.set_level(logging.WARNING, logger="trainers.batch.tracking")
    settings = Settings(data_dir=tmp_path, mlflow=MlflowSettings(tracking_uri="http://127.0.0.1:9"))
    worker = TrainerWorker(settings, "127.0.0.1:9")
    assert isinstance(worker.tracker, MlflowTracker)
    j, res, _reg = trained
    before = metrics.TRACKING_FAILURES.labels("mlflow")._value.get()
    started = time.monotonic()
    box: dict[str, Any] = {"result": res, "config": JobConfig.from_dict(TAB)}
    worker._track(j, "m", box)  # raises nothing
    assert time.monotonic() - started < 30
    assert metrics.TRACKING_FAILURES.labels("mlflow")._value.get() == before + 1
    assert "MLflow: job mlf-1 not logged" in caplog.text
    assert make_tracker(Settings(data_dir=tmp_path)) is None  # off unless configured
