"""Fine-tune and retrain jobs: train a candidate, score it against serving, register it.

The job runner; its parts live beside it: the config and result in
:mod:`trainers.batch.config`, the training loop in :mod:`trainers.batch.loop`, the serving
predictor in :mod:`trainers.batch.predictor` (re-exported here for callers of the runner).

Run manual
----------
The ``streams`` job runner replays the job's Kafka offsets into ``(partition, offset,
value)`` records and calls :func:`run_job`; nothing here imports Kafka::

    from trainers.batch.jobs import JobConfig, run_job
    from trainers.batch.registry import ModelRegistry

    job = {"job_id": "j-42", "kind": "retrain", "reason": "drift",
           "data": {"topic": "events", "offsets": {"0": [0, 9999]}}}
    result = run_job(job, records, [], ModelRegistry(".livelearn/registry"), "default",
                     JobConfig.from_dict({"epochs": 2, "batch_size": 64}))
    result.status, result.version, result.metrics      # promoted | rejected | failed

From a shell, on a JSON job and a JSON-lines file of ``[partition, offset, value]``::

    python -m trainers.batch.jobs job.json records.jsonl --registry .livelearn/registry \\
        --model default --set epochs=2 --set batch_size=64 [--replay old.jsonl]

Benchmark against a bare torch/peft loop: ``python bench/bench_training.py --model tiny``.

What a job does
---------------
* **retrain**: a new head on ``base_model`` (text) or a fresh MLP (tabular), trained on all
  the job's records (the runner replays the whole history; ``replay_records`` is unused).
* **finetune**: loads the serving version (or ``base_version``), applies LoRA adapters
  (peft), trains on the new records plus ``replay_ratio`` x as many old ones, saves the
  adapter files and merges them for evaluation and serving. A class the serving model
  does not know fails the job: that needs a retrain.
* The newest ``val_fraction`` of the new records (by ts, then offset) is held out; the
  candidate and the serving version are scored on that same slice, the gate decides, and
  the registry records the version as promoted or rejected with both metrics and the
  lineage (job id, kind, base version, topic offsets). A job that raises is returned as
  ``failed`` and registers nothing.
* Idempotent: a job id the registry already holds returns that version, untrained.

There is no optimizer state in the saved version: a job is short and re-runs from scratch
(idempotently) after a crash, so what is kept is what serving needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from trainers.batch.config import (
    JobConfig,
    JobResult,
    ProgressCallback,
    Record,
    _json_safe,
    config_from_dict,
    config_to_dict,
    is_transient,
)
from trainers.batch.datasets import (
    Example,
    LabelEncoder,
    examples_from_records,
    replay_sample,
    split_at_change,
    split_by_time,
)
from trainers.batch.loop import evaluate, make_batches, pick_device, seed_everything, train
from trainers.batch.models import (
    BatchModel,
    FeatureVectorizer,
    TabularMLP,
    TextClassifier,
    apply_lora,
)
from trainers.batch.predictor import Predictor, _load_on, load_serving_predictor
from trainers.batch.registry import ModelRegistry, Version
from trainers.exceptions import TrainingJobError

__all__ = [
    "JobConfig",
    "JobResult",
    "Predictor",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "is_transient",
    "load_serving_predictor",
    "make_batches",
    "pick_device",
    "run_job",
    "train",
]

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------------------
# helpers


def _resolve_kind(config: JobConfig, examples: Sequence[Example]) -> str:
    if config.model_kind != "auto":
        return config.model_kind
    if all(e.text is not None for e in examples):
        return "text"
    if all(e.features is not None for e in examples):
        return "tabular"
    raise TrainingJobError(
        "model_kind='auto' needs every example to have text, or every one features; "
        "set model_kind to 'text' or 'tabular'"
    )


def _target_scale(config: JobConfig, examples: Sequence[Example]) -> tuple[float, float]:
    if config.task != "regression":
        return (0.0, 1.0)
    ys = [float(e.label) for e in examples]
    mean = sum(ys) / len(ys)
    std = math.sqrt(sum((y - mean) ** 2 for y in ys) / len(ys))
    return (mean, std if std > 1e-12 else 1.0)


def _new_model(config: JobConfig, examples: Sequence[Example]) -> BatchModel:
    labels = (
        LabelEncoder.fit(e.label for e in examples) if config.task == "classification" else None
    )
    scale = _target_scale(config, examples)
    if _resolve_kind(config, examples) == "text":
        return TextClassifier.from_pretrained(
            config.base_model,
            config.task,
            labels,
            scale,
            config.max_length,
        )
    vectorizer = FeatureVectorizer.fit([e.features or {} for e in examples], config.n_buckets)
    return TabularMLP.build(vectorizer, config.task, labels, scale, config.hidden)


def _result_from_version(v: Version, reused: bool) -> JobResult:
    m = v.manifest
    status = v.status if v.status in ("promoted", "rejected") else "rejected"
    if v.status == "retired":  # promoted once, since replaced or rolled back
        status = "promoted"
    return JobResult(
        job_id=str(m.get("job_id")),
        kind=str(m.get("kind")),
        status=status,
        version=v.version,
        metrics=dict(m.get("metrics") or {}),
        baseline_metrics=m.get("baseline_metrics"),
        artifact=str(v.path),
        data=m.get("data"),
        reason=(m.get("gate") or {}).get("reason"),
        train_stats=dict(m.get("train_stats") or {}),
        reused=reused,
    )


def _decide(registry: ModelRegistry, model_name: str, v: Version) -> Version:
    """Apply the gate decision stored in a candidate's manifest (also after a crash)."""
    if v.status != "candidate":
        return v
    decision = v.manifest.get("gate") or {}
    if decision.get("promote"):
        return registry.promote(model_name, v.version)
    return registry.reject(model_name, v.version, str(decision.get("reason", "")))


# -----------------------------------------------------------------------------------------
# the job


def run_job(
    job: Mapping[str, Any],
    train_records: Iterable[Record],
    replay_records: Iterable[Record],
    registry: ModelRegistry,
    model_name: str,
    config: JobConfig | None = None,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """Run one ``training-jobs`` record end to end; see the module docstring.

    Parameters
    ----------
    job
        ``{"job_id", "kind": "finetune"|"retrain", "reason", "data": {"topic", "offsets"},
        "base_version"?}``.
    train_records
        ``(partition, offset, value)`` of ``events`` in the job's offsets.
    replay_records
        Older ``events`` records to replay from (fine-tune only).
    registry
        Where versions are read and registered.
    model_name
        Registry name of the model.
    config
        Job configuration (defaults when ``None``).
    on_progress
        Called with ``{"step", "total", "loss", "samples_per_s"}`` every ``log_every`` steps.

    Returns
    -------
    JobResult
        ``status`` is ``promoted``, ``rejected`` or ``failed`` (with ``error``).
    """
    config = config or JobConfig()
    job_id = str(job.get("job_id") or "")
    kind = str(job.get("kind") or "")
    data = dict(job.get("data") or {})
    existing = registry.find_by_job(job_id, model_name) if job_id else None
    if existing is not None:
        log.info("job %s already produced %s; not training again", job_id, existing.version)
        return _result_from_version(_decide(registry, model_name, existing), reused=True)
    staging: Path | None = None
    try:
        if not job_id:
            raise TrainingJobError("the job has no job_id; every training-jobs record needs one")
        if kind not in ("finetune", "retrain"):
            raise TrainingJobError(f"job kind must be 'finetune' or 'retrain', got {kind!r}")
        staging = registry.staging_dir()
        version = _train_and_register(
            job, kind, data, list(train_records), replay_records, registry, model_name,
            config, staging, on_progress,
        )  # fmt: skip
        staging = None  # moved into the registry
        if version.reused:  # another trainer registered this job while this one trained
            log.info("job %s was registered meanwhile as %s", job_id, version.version)
        return _result_from_version(_decide(registry, model_name, version), version.reused)
    except Exception as exc:  # a failed job is a result, not a crash of the runner
        log.exception("training job %s failed", job_id)
        return JobResult(
            job_id=job_id,
            kind=kind,
            status="failed",
            version=None,
            error=f"{type(exc).__name__}: {exc}",
            data=data or None,
            retryable=is_transient(exc),
        )
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _train_and_register(
    job: Mapping[str, Any],
    kind: str,
    data: dict[str, Any],
    train_records: list[Record],
    replay_records: Iterable[Record],
    registry: ModelRegistry,
    model_name: str,
    config: JobConfig,
    staging: Path,
    on_progress: ProgressCallback | None,
) -> Version:
    seed_everything(config.seed)
    device = pick_device(config.device)
    new = examples_from_records(train_records)
    if not new:
        raise TrainingJobError(
            f"no labelled examples in the job's records ({len(train_records)} records): "
            "check the offsets, or wait for labels before triggering a job"
        )
    since = {int(p): int(o) for p, o in (data.get("since") or {}).items()}
    if kind == "retrain" and since:  # decided on a drift: the new concept must be learned
        train_set, val = split_at_change(new, since, config.val_fraction)
    else:
        train_set, val = split_by_time(new, config.val_fraction)
    serving_version = registry.serving(model_name)
    n_replay = 0
    base_version: str | None
    if kind == "finetune":
        base_name = job.get("base_version") or (serving_version and serving_version.version)
        if not base_name:
            raise TrainingJobError(
                f"a finetune continues from a serving version and {model_name!r} has none: "
                "run a retrain job first"
            )
        base = registry.get(model_name, str(base_name))
        base_version = base.version
        model = _load_on(base, device)
        if config.task != model.task:
            raise TrainingJobError(
                f"the job's task is {config.task!r} but {base.version} is {model.task!r}"
            )
        if model.labels is not None:
            unknown = model.labels.unknown(e.label for e in new)
            if unknown:
                raise TrainingJobError(
                    f"labels {unknown} are new to {base.version} (classes "
                    f"{model.labels.classes}); a new class needs a retrain job"
                )
        old = examples_from_records(replay_records)
        if model.labels is not None:  # old labels the model never had cannot be replayed
            old = [e for e in old if not model.labels.unknown([e.label])]
        replay = replay_sample(old, round(config.replay_ratio * len(train_set)), config.seed)
        n_replay = len(replay)
        train_set = train_set + replay
        apply_lora(
            model,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
        )
        # LoRA needs a larger step than full fine-tuning; the tiny tabular MLP larger still
        # (measured: at 5e-4 a LoRA MLP could not follow a label flip in 10 epochs).
        base_lr = config.lr or (5e-4 if isinstance(model, TextClassifier) else 5e-3)
    else:
        base_version = serving_version.version if serving_version else None
        torch.manual_seed(config.seed)  # head / MLP initialisation
        model = _new_model(config, new)
        base_lr = config.lr or (5e-5 if isinstance(model, TextClassifier) else 1e-3)

    torch.manual_seed(config.seed)  # dropout
    params = list(model.module.parameters())  # counted as trained (LoRA applied, not merged)
    n_trainable = sum(p.numel() for p in params if p.requires_grad)
    n_total = sum(p.numel() for p in params)
    state = train(model, train_set, config, device, base_lr, on_progress)
    elapsed = time.perf_counter() - state.started
    artifacts: dict[str, str] = {"model": "model"}
    if model.has_adapter:
        model.save_adapter(staging / "adapter")
        artifacts["adapter"] = "adapter"
        model.merge()

    serving_model = _load_on(serving_version, device) if serving_version else None
    metrics, baseline, decision = evaluate(model, serving_model, val, config, train_set)
    log.info("job %s: %s", job.get("job_id"), decision.reason)
    model.save(staging / "model")

    steps = sorted(state.step_times)
    manifest = {
        "job_id": job["job_id"],
        "kind": kind,
        "reason": job.get("reason"),
        "base_version": base_version,
        "base_model": config.base_model if model.kind == "text" else None,
        "model_kind": model.kind,
        "task": model.task,
        "labels": model.labels.to_dict() if model.labels else None,
        "data": data,
        "metrics": metrics,
        "baseline_metrics": baseline,
        "gate": {"promote": decision.promote, "reason": decision.reason,
                 "trivial_metrics": decision.trivial,
                 "metric": config.gate_metric, "margin": config.margin},
        "config": config.to_dict(),
        "examples": {"train": len(train_set) - n_replay, "replay": n_replay, "val": len(val)},
        "train_stats": {
            "steps": state.step,
            "samples": state.samples,
            "seconds": elapsed,
            "samples_per_s": state.samples / elapsed if elapsed > 0 else 0.0,
            "step_p50_s": steps[len(steps) // 2] if steps else None,
            "step_p99_s": steps[min(len(steps) - 1, int(len(steps) * 0.99))] if steps else None,
            "device": str(device),
            "trainable_params": n_trainable,
            "total_params": n_total,
            "epoch_loss": [None if math.isnan(x) else x for x in state.epoch_losses],
        },
        "artifacts": artifacts,
        "status": "candidate",
    }  # fmt: skip
    return registry.register(model_name, staging, _json_safe(manifest) or {}, move=True)


# -----------------------------------------------------------------------------------------
# serving


# -----------------------------------------------------------------------------------------
# command line


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _read_records(path: Path) -> list[Record]:
    out: list[Record] = []
    for line in path.read_text().splitlines():
        if line.strip():
            p, o, v = json.loads(line)
            out.append((int(p), int(o), v))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: run one job from files (see the module docstring)."""
    ap = argparse.ArgumentParser(
        prog="python -m trainers.batch.jobs", description=__doc__.split("\n")[0]
    )
    ap.add_argument("job", type=Path, help="training-jobs record (JSON file)")
    ap.add_argument("records", type=Path, help="JSON lines of [partition, offset, value]")
    ap.add_argument("--replay", type=Path, help="older records to replay (fine-tune)")
    ap.add_argument("--registry", type=Path, default=Path(".livelearn/registry"))
    ap.add_argument("--model", default="default", help="registry model name")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    config = JobConfig.from_dict({k: _parse_value(v) for k, v in overrides.items()})
    result = run_job(
        json.loads(args.job.read_text()),
        _read_records(args.records),
        _read_records(args.replay) if args.replay else [],
        ModelRegistry(args.registry),
        args.model,
        config,
    )
    print(json.dumps(result.to_update(args.model), indent=2, default=str))
    return 0 if result.status != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
