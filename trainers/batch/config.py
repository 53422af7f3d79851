"""A training job's configuration and its result: what goes in and what comes out of a job.

* :class:`JobConfig` — every knob of a fine-tune or retrain job (validated at construction;
  :func:`config_from_dict` refuses unknown keys);
* :class:`JobResult` — the outcome (promoted, rejected, failed) as a ``model-updates`` record;
* :func:`is_transient` — whether a failure is worth running the job again.

>>> JobConfig.from_dict({"epochs": 2}).epochs
2
>>> JobConfig.from_dict({"epochs": 2, "nope": 1})
Traceback (most recent call last):
...
trainers.exceptions.JobConfigError: unknown job config key(s) ['nope']; ...
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from trainers.batch.models import (
    MINILM_ID,
    Task,
)
from trainers.exceptions import JobConfigError

__all__ = [
    "JobConfig",
    "JobResult",
    "ProgressCallback",
    "Record",
    "config_from_dict",
    "config_to_dict",
    "is_transient",
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

    >>> from trainers.exceptions import TrainingJobError
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
