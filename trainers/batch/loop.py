"""The training loop: batches, the learning-rate schedule, one epoch, a whole run, evaluation.

Readable top to bottom in the manner of nanoGPT: :func:`train` seeds, builds the loaders and
the optimizer, runs :func:`train_epoch` per epoch (bf16 autocast on CUDA, gradient clipping,
warmup then cosine decay from :func:`get_lr`), scores the held-out slice with
:func:`evaluate` after each one and reports progress.

>>> [round(get_lr(s, 100, 1e-3, 0.1), 6) for s in (0, 9, 10, 99)]
[0.0001, 0.001, 0.001, 0.0]
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainers.batch.config import JobConfig, ProgressCallback
from trainers.batch.datasets import (
    Example,
)
from trainers.batch.evaluation import LOWER_IS_BETTER, GateDecision, gate, score, trivial_metrics
from trainers.batch.models import (
    BatchModel,
    bf16_autocast,
)
from trainers.exceptions import JobConfigError

__all__ = [
    "TrainState",
    "evaluate",
    "get_lr",
    "make_batches",
    "make_loader",
    "pick_device",
    "seed_everything",
    "train",
    "train_epoch",
]

log = logging.getLogger(__name__)


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
    epoch_losses: list[float] = field(default_factory=list)  # loss last logged in each
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
            state.epoch_losses.append(state.loss)
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
