"""Fine-tune and retrain jobs: train a candidate, score it against serving, register it.

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
import dataclasses
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainers.batch.datasets import (
    Example,
    LabelEncoder,
    examples_from_records,
    replay_sample,
    split_at_change,
    split_by_time,
)
from trainers.batch.evaluation import LOWER_IS_BETTER, GateDecision, gate, score, trivial_metrics
from trainers.batch.models import (
    MINILM_ID,
    BatchModel,
    FeatureVectorizer,
    TabularMLP,
    Task,
    TextClassifier,
    apply_lora,
    bf16_autocast,
    load_model,
)
from trainers.batch.registry import ModelRegistry, Version
from trainers.exceptions import JobConfigError, RegistryError, TrainingJobError

__all__ = [
    "JobConfig",
    "JobResult",
    "Predictor",
    "evaluate",
    "is_transient",
    "load_serving_predictor",
    "make_batches",
    "run_job",
    "train_epoch",
]

log = logging.getLogger(__name__)
Record = tuple[int, int, Mapping[str, Any]]
ProgressCallback = Callable[[dict[str, Any]], None]


_Config = TypeVar("_Config")


def config_from_dict(cls: type[_Config], d: Mapping[str, Any], what: str) -> _Config:
    """A dataclass config ``cls`` with ``d`` over its defaults: an unknown key, or a value the
    class refuses, is a :class:`JobConfigError` naming the ``what`` config (job, generator)."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise JobConfigError(f"unknown {what} config key(s) {unknown}; known keys: {sorted(known)}")
    values = dict(d)
    if isinstance(values.get("lora_target_modules"), list):
        values["lora_target_modules"] = tuple(values["lora_target_modules"])
    try:
        return cls(**values)
    except TypeError as exc:
        raise JobConfigError(f"invalid {what} config: {exc}") from exc


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config in JSON-ready form (stored in a version's manifest)."""
    d = dataclasses.asdict(config)
    if isinstance(d.get("lora_target_modules"), tuple):
        d["lora_target_modules"] = list(d["lora_target_modules"])
    return d


@dataclass(frozen=True)
class JobConfig:
    """Every knob of a training job, with its default. Build overrides with :meth:`from_dict`.

    Examples
    --------
    >>> JobConfig.from_dict({"epochs": 1, "lr": 1e-3}).epochs
    1
    >>> JobConfig.from_dict({"epoch": 1})
    Traceback (most recent call last):
    ...
    trainers.exceptions.JobConfigError: unknown job config key(s) ['epoch']...
    """

    # -- model ------------------------------------------------------------------------
    model_kind: str = "auto"  # "text" | "tabular" | "auto" (text if every example has text)
    base_model: str = MINILM_ID  # HF id or path of the text encoder (retrain starts here)
    task: Task = "classification"  # "classification" | "regression"
    max_length: int = 128  # tokens kept per text
    hidden: int = 64  # tabular MLP hidden width
    n_buckets: int = 64  # hash slots for string features (tabular)
    # -- optimisation -----------------------------------------------------------------
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None  # None: 5e-5 text, 1e-3 tabular; LoRA 5e-4 text, 5e-3 tabular
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06  # share of steps with linear warm-up, then linear decay
    grad_clip: float = 1.0  # max grad norm; 0 disables
    max_steps: int | None = None  # cap on optimizer steps (0 = no training); None: epochs
    # -- fine-tune (LoRA) -------------------------------------------------------------
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str | tuple[str, ...] = "auto"
    replay_ratio: float = 1.0  # old examples replayed per new example (anti-forgetting)
    # -- evaluation and gate ----------------------------------------------------------
    val_fraction: float = 0.2  # newest share of the new data held out
    metric: str = "auto"  # gate metric; auto: accuracy (classification), mae (regression)
    margin: float = 0.0  # the candidate must beat serving by this much (ties pass at 0)
    min_eval_samples: int = 20  # a smaller held-out slice cannot promote anything
    # -- system -----------------------------------------------------------------------
    seed: int = 1337
    device: str = "auto"  # "auto" (cuda if present) | "cpu" | "cuda" | "cuda:1" ...
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    num_workers: int = 0  # DataLoader workers for collation
    progress: bool = True  # tqdm progress bar
    log_every: int = 10  # steps between on_progress calls

    def __post_init__(self) -> None:
        checks = [
            (self.model_kind in ("auto", "text", "tabular"), "model_kind: auto|text|tabular"),
            (self.task in ("classification", "regression"), "task: classification|regression"),
            (self.epochs >= 1, "epochs >= 1"),
            (self.batch_size >= 1, "batch_size >= 1"),
            (self.lr is None or self.lr > 0, "lr > 0"),
            (self.max_steps is None or self.max_steps >= 0, "max_steps >= 0"),
            (self.lora_r >= 1, "lora_r >= 1"),
            (0.0 <= self.lora_dropout < 1.0, "0 <= lora_dropout < 1"),
            (self.replay_ratio >= 0, "replay_ratio >= 0"),
            (0.0 <= self.val_fraction < 1.0, "0 <= val_fraction < 1"),
            (0.0 <= self.warmup_fraction < 1.0, "0 <= warmup_fraction < 1"),
            (self.num_workers >= 0, "num_workers >= 0"),
            (self.log_every >= 1, "log_every >= 1"),
        ]
        bad = [rule for ok, rule in checks if not ok]
        if bad:
            raise JobConfigError(f"invalid job config: expected {'; '.join(bad)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobConfig:
        """Defaults overridden by ``d``; an unknown key is an error (typos do not pass)."""
        return config_from_dict(cls, d, "job")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the version's manifest)."""
        return config_to_dict(self)

    @property
    def gate_metric(self) -> str:
        """The metric the gate compares."""
        if self.metric != "auto":
            return self.metric
        return "accuracy" if self.task == "classification" else "mae"


@dataclass(frozen=True)
class JobResult:
    """Outcome of :func:`run_job`; :meth:`to_update` gives the ``model-updates`` record."""

    job_id: str
    kind: str
    status: str  # promoted | rejected | failed
    version: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline_metrics: dict[str, Any] | None = None
    artifact: str | None = None
    error: str | None = None
    data: dict[str, Any] | None = None
    reason: str | None = None  # the gate's reason
    train_stats: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # True when the job id was already registered (nothing trained)
    retryable: bool = False  # a failure that may go away on a retry (see is_transient)

    def to_update(self, model_name: str, ts: float | None = None) -> dict[str, Any]:
        """The ``model-updates`` contract value for this result."""
        return {
            "job_id": self.job_id,
            "model": model_name,
            "model_version": self.version or "",
            "kind": self.kind,
            "status": self.status,
            "metrics": _json_safe(self.metrics),
            "baseline_metrics": _json_safe(self.baseline_metrics),
            "artifact": self.artifact,
            "data": self.data,
            "error": self.error,
            # True: this job was registered before (another trainer, a re-delivery) and is
            # announced again, not trained again. Announcements are at least once.
            "reused": self.reused,
            "ts": time.time() if ts is None else ts,
        }


def is_transient(exc: BaseException) -> bool:
    """Whether a job that raised ``exc`` may succeed if it runs again later.

    I/O (a replay that stalled, a full or vanished disk), memory (host or GPU) and CUDA errors
    are transient; a bad job (no labelled data, an unknown base version, a task or class the
    model does not have, an invalid config) fails the same way every time, and so does a bug.

    >>> is_transient(TimeoutError("replay stalled")), is_transient(MemoryError())
    (True, True)
    >>> is_transient(TrainingJobError("no labelled examples")), is_transient(KeyError("x"))
    (False, False)
    """
    if isinstance(exc, OSError | MemoryError | torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError) and not isinstance(exc, NotImplementedError):
        text = str(exc)
        return "CUDA" in text or "out of memory" in text
    return False


def _json_safe(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}


# -----------------------------------------------------------------------------------------
# helpers


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; on CUDA, TF32 matmuls are switched on."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise JobConfigError("device='cuda' but no CUDA device is visible; use 'auto'")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def make_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0, bucket: int = 50
) -> list[list[int]]:
    """Index batches for one epoch: similar lengths together, batch order shuffled.

    Indices are shuffled, cut into chunks of ``bucket * batch_size``, sorted by length
    inside each chunk and split into batches, so padding stays small while batches still
    vary from epoch to epoch. Same ``seed`` and ``epoch`` give the same batches.

    Examples
    --------
    >>> bs = make_batches([5, 1, 4, 2, 3, 1], batch_size=2, seed=0)
    >>> sorted(i for b in bs for i in b), [len(b) for b in bs]
    ([0, 1, 2, 3, 4, 5], [2, 2, 2])
    >>> bs == make_batches([5, 1, 4, 2, 3, 1], batch_size=2, seed=0)
    True
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = max(batch_size, bucket * batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def get_lr(step: int, total: int, base_lr: float, warmup_fraction: float) -> float:
    """Linear warm-up then linear decay to 10% of ``base_lr``.

    Examples
    --------
    >>> [round(get_lr(s, 10, 1.0, 0.2), 2) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.1]
    """
    warmup = int(total * warmup_fraction)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (1.0 - 0.9 * min(1.0, progress))


class _Encoded(Dataset[tuple[Any, Any]]):
    def __init__(self, items: Sequence[Any], targets: torch.Tensor) -> None:
        self.items = items
        self.targets = targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.items[i], self.targets[i]


class _Collate:
    """Picklable collate function (DataLoader workers need one)."""

    def __init__(self, model: BatchModel) -> None:
        self.model = model

    def __call__(self, pairs: Sequence[tuple[Any, Any]]) -> dict[str, torch.Tensor]:
        batch = self.model.collate([p[0] for p in pairs])
        batch["targets"] = torch.stack([p[1] for p in pairs])
        return batch


def make_loader(
    model: BatchModel,
    examples: Sequence[Example],
    batches: list[list[int]],
    device: torch.device,
    num_workers: int = 0,
    items: Sequence[Any] | None = None,
) -> DataLoader[Any]:
    """A DataLoader over pre-encoded examples in the given index batches (pinned on CUDA)."""
    if items is None:
        items = model.encode([e.input for e in examples])
    targets = model.encode_targets([e.label for e in examples])
    return DataLoader(
        _Encoded(items, targets),
        batch_sampler=batches,
        collate_fn=_Collate(model),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


@dataclass
class TrainState:
    """Counters carried across epochs (for progress, step caps and the benchmark)."""

    total: int
    step: int = 0
    samples: int = 0
    loss: float = float("nan")
    step_times: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def train_epoch(
    model: BatchModel,
    loader: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: JobConfig,
    base_lr: float,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    bar: Any = None,
) -> None:
    """One pass over ``loader`` (stops early at ``state.total`` steps)."""
    module = model.module
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    t_prev = time.perf_counter()
    for batch in loader:
        if state.step >= state.total:
            break
        lr = get_lr(state.step, state.total, base_lr, config.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        targets = batch.pop("targets")
        with bf16_autocast(device, config.bf16):
            out = model.forward(batch)
        loss = model.loss(out, targets)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.samples += int(targets.shape[0])
        now = time.perf_counter()
        state.step_times.append(now - t_prev)
        t_prev = now
        if bar is not None:
            bar.update(1)
        if state.step % config.log_every == 0 or state.step == state.total:
            state.loss = float(loss.detach())  # the only host sync, every log_every steps
            elapsed = max(1e-9, now - state.started)
            if bar is not None:
                bar.set_postfix(loss=f"{state.loss:.4f}")
            if on_progress is not None:
                on_progress(
                    {
                        "step": state.step,
                        "total": state.total,
                        "loss": state.loss,
                        "samples_per_s": state.samples / elapsed,
                    }
                )


def train(
    model: BatchModel,
    examples: Sequence[Example],
    config: JobConfig,
    device: torch.device,
    base_lr: float,
    on_progress: ProgressCallback | None = None,
) -> TrainState:
    """Train ``model`` in place on ``examples``; returns the counters."""
    from tqdm.auto import tqdm

    model.to(device)
    items = model.encode([e.input for e in examples])
    lengths = [model.item_length(x) for x in items]
    epochs = [
        make_batches(lengths, config.batch_size, config.seed, epoch)
        for epoch in range(config.epochs)
    ]
    total = sum(len(b) for b in epochs)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    state = TrainState(total=total)
    if total == 0:
        return state
    params = [p for p in model.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=base_lr,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )
    with tqdm(total=total, disable=not config.progress, desc="train", leave=False) as bar:
        for batches in epochs:
            if state.step >= total:
                break
            loader = make_loader(model, examples, batches, device, config.num_workers, items)
            train_epoch(model, loader, optimizer, state, config, base_lr, device, on_progress, bar)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return state


def evaluate(
    candidate: BatchModel,
    serving: BatchModel | None,
    val: Sequence[Example],
    config: JobConfig,
    train: Sequence[Example] = (),
) -> tuple[dict[str, float], dict[str, float] | None, GateDecision]:
    """Score candidate and serving model on the same held-out slice, then gate (with nothing
    serving, against the trivial model of the ``train`` labels: a first version must beat
    it; its metrics are the decision's ``trivial``)."""
    metrics = score(candidate, val, config.task)
    baseline = score(serving, val, config.task) if serving is not None else None
    trivial = trivial_metrics([e.label for e in train], val, config.task) \
        if serving is None and train else None  # fmt: skip
    metric = config.gate_metric
    decision = gate(
        metrics,
        baseline,
        metric=metric,
        margin=config.margin,
        higher_is_better=metric not in LOWER_IS_BETTER,
        min_samples=config.min_eval_samples,
        trivial=trivial,
    )
    return metrics, baseline, decision


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


def _load_on(version: Version, device: torch.device) -> BatchModel:
    return load_model(version.artifact("model")).to(device)


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
        },
        "artifacts": artifacts,
        "status": "candidate",
    }  # fmt: skip
    return registry.register(model_name, staging, _json_safe(manifest) or {}, move=True)


# -----------------------------------------------------------------------------------------
# serving


class Predictor:
    """The serving version of a model, ready for one-at-a-time predictions.

    Immutable once loaded: a hot swap builds a new ``Predictor`` and replaces the
    reference, so in-flight predictions finish on the old one.
    """

    def __init__(self, model: BatchModel, version: str, model_name: str) -> None:
        self.model = model
        self.version = version
        self.model_name = model_name
        model.module.eval()

    def predict_one(self, x: Mapping[str, Any] | str) -> tuple[Any, dict[str, float] | None]:
        """``(prediction, {class: probability} | None)`` for a text or a feature dict."""
        labels, probas = self.model.predict([x])
        return labels[0], (probas[0] if probas is not None else None)

    def predict_many(
        self, xs: Sequence[Mapping[str, Any] | str]
    ) -> list[tuple[Any, dict[str, float] | None]]:
        """Batched :meth:`predict_one`."""
        labels, probas = self.model.predict(list(xs))
        return [(y, probas[i] if probas is not None else None) for i, y in enumerate(labels)]


def load_serving_predictor(
    registry: ModelRegistry, model_name: str, device: str = "auto"
) -> Predictor:
    """A :class:`Predictor` for the version ``SERVING`` points at."""
    version = registry.serving(model_name)
    if version is None:
        raise RegistryError(
            f"no version of {model_name!r} is serving yet: run a retrain job or promote one"
        )
    model = _load_on(version, pick_device(device))
    return Predictor(model, version.version, model_name)


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
