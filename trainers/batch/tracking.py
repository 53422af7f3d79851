"""Optional MLflow tracking of training jobs; the built-in registry stays the source of truth.

When ``LIVELEARN_MLFLOW__TRACKING_URI`` is set, the trainer logs one MLflow run per job: the
job config as params, the final and baseline metrics, the training loss of every epoch (as
steps), the gate decision, and the job's lineage (Kafka topic and offsets, base version) as
tags. A promoted version is also registered as an MLflow model version with the same tags,
its ``source`` being the version's folder in livelearn's registry. MLflow is told, never
asked: a tracking server that is down costs a warning and a metric, never the job. A job
announced again (``reused``) logs nothing new: runs are found by their job id.

>>> flatten({"a": 1, "b": {"c": [1, 2]}})
{'a': '1', 'b.c': '[1, 2]'}
>>> lineage_tags({"topic": "events", "offsets": {"0": [0, 10]}}, "v3")["kafka.offsets.0"]
'0-10'
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["MlflowTracker", "flatten", "lineage_tags"]

_MAX_PARAM = 6000  # MLflow's limit on a param value
_MAX_TAG = 8000


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys with string values (MLflow params and tags are strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def lineage_tags(data: Mapping[str, Any] | None, base_version: str | None) -> dict[str, str]:
    """Tags naming a version's training data: the topic, offsets per partition, the base."""
    data = data or {}
    tags = {"kafka.topic": str(data.get("topic", ""))}
    offsets = data.get("offsets") or {}
    tags["kafka.offsets"] = json.dumps(offsets, sort_keys=True)
    for p, (lo, hi) in sorted(offsets.items(), key=lambda kv: int(kv[0])):
        tags[f"kafka.offsets.{p}"] = f"{lo}-{hi}"
    if base_version:
        tags["livelearn.base_version"] = str(base_version)
    return tags


def _numbers(d: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


class MlflowTracker:
    """Logs training jobs to MLflow (see the module docstring).

    Parameters
    ----------
    tracking_uri
        ``http://host:5000``, ``sqlite:///mlflow.db``...; also the model registry's URI.
    experiment
        The experiment the runs go to (created when missing).
    register_models
        Register promoted versions as MLflow model versions.

    Examples
    --------
    Not run here (it opens a store)::

        tracker = MlflowTracker("sqlite:///mlflow.db")
        run_id = tracker.log_job(job, "default", result, config.to_dict())
    """

    def __init__(
        self, tracking_uri: str, experiment: str = "livelearn", register_models: bool = True
    ) -> None:
        # A tracking server that is down must cost seconds, not MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.register_models = register_models
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        return str(exp.experiment_id if exp is not None else self.client.create_experiment(
            self.experiment
        ))  # fmt: skip

    def find_run(self, job_id: str) -> str | None:
        """The id of the run logged for ``job_id``, if any."""
        runs = self.client.search_runs(
            [self._experiment_id()], filter_string=f"tags.`livelearn.job_id` = '{job_id}'"
        )
        return str(runs[0].info.run_id) if runs else None

    def log_job(
        self,
        job: Mapping[str, Any],
        model_name: str,
        result: Any,
        config: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Log the job's run (and its model version when promoted); the run id, or ``None``
        when MLflow could not be reached or refused (logged as a warning)."""
        try:
            return self._log_job(job, model_name, result, config or {})
        except Exception as exc:  # MLflow is optional: never the job's failure
            log.warning("MLflow: job %s not logged to %s: %s", job.get("job_id"),
                        self.tracking_uri, exc)  # fmt: skip
            return None

    def _log_job(
        self, job: Mapping[str, Any], model_name: str, result: Any, config: Mapping[str, Any]
    ) -> str:
        from mlflow.entities import Metric, Param

        job_id = str(job["job_id"])
        existing = self.find_run(job_id)
        if existing is not None:
            return existing
        tags = {
            "livelearn.job_id": job_id,
            "livelearn.model": model_name,
            "livelearn.kind": str(job.get("kind")),
            "livelearn.reason": str(job.get("reason", "")),
            "livelearn.status": str(result.status),
            "livelearn.version": str(result.version or ""),
            "gate.decision": str(result.status),
            "gate.reason": str(result.reason or result.error or ""),
            **lineage_tags(result.data or job.get("data"), job.get("base_version")),
        }
        run = self.client.create_run(
            self._experiment_id(), run_name=f"{model_name}-{job_id}", tags=tags
        )
        run_id = str(run.info.run_id)
        params = {"kind": str(job.get("kind")), **flatten(config)}
        stats = dict(result.train_stats or {})
        epoch_losses = stats.pop("epoch_loss", None) or []
        values = {
            **_numbers(result.metrics),
            **_numbers(result.baseline_metrics, "baseline_"),
            **_numbers(stats, "train_"),
        }
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in values.items()]
        metrics += [
            Metric("train_loss", float(loss), now, epoch + 1)
            for epoch, loss in enumerate(epoch_losses)
            if isinstance(loss, (int, float)) and math.isfinite(loss)
        ]
        self.client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, v[:_MAX_PARAM]) for k, v in params.items()],
            tags=[],
        )
        self.client.set_terminated(run_id, "FAILED" if result.status == "failed" else "FINISHED")
        if result.status == "promoted" and result.version and self.register_models:
            self._register(model_name, result, run_id, tags)
        return run_id

    def _register(self, model_name: str, result: Any, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                model_name, description="livelearn model (livelearn's registry is the truth)"
            )
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        self.client.create_model_version(
            model_name,
            source=str(result.artifact),
            run_id=run_id,
            tags={k: v[:_MAX_TAG] for k, v in tags.items()},
            description=f"livelearn version {result.version}",
        )
