"""Training throughput: ``run_job``'s loop vs a bare transformers/peft loop, same data.

Both sides train the same model (same weights, same seed) on the same examples in the same
length-bucketed batches, for the same number of steps. The job side is a full ``run_job``
(its ``train_stats`` time the loop only: from the optimizer's creation to the last step);
the bare side is the textbook loop: tokenize, pad, forward, backward, clip, AdamW step
(the same recipe, so the ratio measures the loop; ``--grad-clip 0`` turns clipping off
on both sides).

    python bench/bench_training.py --model tiny --device cpu --steps 60
    python bench/bench_training.py --model minilm --device cuda --steps 200 --kind retrain

Prints samples/s of both, their ratio (target >= 0.9) and p50/p99 step times, and writes
``bench/results/training.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trainers.datasets import Example, examples_from_records, split_by_time
from trainers.jobs import JobConfig, make_batches, pick_device, run_job
from trainers.models import MINILM_ID, resolve_model_path, save_tiny_encoder
from trainers.registry import ModelRegistry

SPORT = "goal match team score player coach league ball referee season stadium fans".split()
FOOD = "pasta bread cheese soup salad pizza rice apple butter sauce garlic onion".split()
RESULTS = Path(__file__).parent / "results" / "training.json"


def make_records(n: int, seed: int = 0) -> list[tuple[int, int, dict[str, Any]]]:
    """Sport/food sentences of 4-24 words (varied lengths exercise the padding)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "sport" if rng.random() < 0.5 else "food"
        words = rng.choices(SPORT if label == "sport" else FOOD, k=rng.randint(4, 24))
        out.append(
            (i % 3, i, {"id": f"e{i}", "ts": float(i), "text": " ".join(words), "label": label})
        )
    return out


def percentile(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(len(ys) * q))]


def bare_loop(
    model_dir: str,
    kind: str,
    train: list[Example],
    cfg: JobConfig,
    device: torch.device,
    steps: int,
    lr: float,
) -> dict[str, float]:
    """The reference: plain transformers (+ peft for fine-tune) and a plain torch loop."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    classes = sorted({e.label for e in train})
    label_id = {c: i for i, c in enumerate(classes)}
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(classes))
    if kind == "finetune":
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout)  # fmt: skip
        model = get_peft_model(model, lora)
    model.to(device).train()
    ids = tok([e.text or "" for e in train], truncation=True, max_length=cfg.max_length)[
        "input_ids"
    ]
    ys = torch.tensor([label_id[e.label] for e in train])
    batches = make_batches([len(x) for x in ids], cfg.batch_size, cfg.seed, 0)[:steps]
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    opt = torch.optim.AdamW(
        params, lr=lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    times, samples, prev = [], 0, time.perf_counter()
    for batch in batches:
        seqs = [torch.tensor(ids[i]) for i in batch]
        input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
        mask = (input_ids != 0).long()
        inputs = input_ids.to(device, non_blocking=True)
        attn = mask.to(device, non_blocking=True)
        labels = ys[batch].to(device, non_blocking=True)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        with ctx:
            logits = model(input_ids=inputs, attention_mask=attn).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        if cfg.grad_clip > 0:  # same recipe as the job, so the ratio measures the loop
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        samples += len(batch)
        now = time.perf_counter()
        times.append(now - prev)
        prev = now
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "samples_per_s": samples / elapsed,
        "step_p50_s": percentile(times, 0.5),
        "step_p99_s": percentile(times, 0.99),
        "steps": float(len(batches)),
        "seconds": elapsed,
    }


def job_loop(
    base_dir: str,
    kind: str,
    records: list[tuple[int, int, dict[str, Any]]],
    cfg: JobConfig,
    root: Path,
) -> tuple[dict[str, float], str]:
    """One ``run_job``; returns its train stats and the model folder the bare loop starts from."""
    reg = ModelRegistry(root)
    offsets = {"0": [0, len(records) - 1]}
    base = base_dir
    if kind == "finetune":  # a serving version to continue from (barely trained)
        init = JobConfig.from_dict(cfg.to_dict() | {"max_steps": 1})
        first = run_job({"job_id": "init", "kind": "retrain", "reason": "manual",
                         "data": {"topic": "bench", "offsets": offsets}},
                        records, [], reg, "bench", init)  # fmt: skip
        if first.status != "promoted":
            raise SystemExit(f"setup job did not promote: {first}")
        serving = reg.serving("bench")
        assert serving is not None
        base = str(serving.artifact("model"))
    res = run_job({"job_id": f"{kind}-{time.time_ns()}", "kind": kind, "reason": "manual",
                   "data": {"topic": "bench", "offsets": offsets}},
                  records, [], reg, "bench", cfg)  # fmt: skip
    if res.status == "failed":
        raise SystemExit(f"benchmark job failed: {res.error}")
    return res.train_stats, base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--model", default="tiny", choices=["tiny", "minilm"])
    ap.add_argument("--kind", default="finetune", choices=["finetune", "retrain"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grad-clip", type=float, default=JobConfig.grad_clip,
                    help="max grad norm on both sides (0: off)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each side")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        base = save_tiny_encoder(Path(tmp) / "tiny") if args.model == "tiny" else MINILM_ID
        n_train = args.steps * args.batch_size + args.batch_size
        records = make_records(math.ceil(n_train / 0.8))
        lr = 5e-4 if args.kind == "finetune" else 5e-5
        cfg = JobConfig.from_dict({
            "model_kind": "text", "base_model": base, "epochs": 1, "batch_size": args.batch_size,
            "max_steps": args.steps, "device": str(device), "progress": False, "lr": lr,
            "replay_ratio": 0.0, "max_length": 64, "grad_clip": args.grad_clip,
        })  # fmt: skip
        train, _ = split_by_time(examples_from_records(records), cfg.val_fraction)
        job_runs, bare_runs = [], []
        for r in range(args.repeats):
            stats, start_dir = job_loop(base, args.kind, records, cfg, Path(tmp) / f"reg{r}")
            job_runs.append(stats)
            start = start_dir if args.kind == "finetune" else resolve_model_path(base)
            bare_runs.append(bare_loop(start, args.kind, train, cfg, device, args.steps, lr))
    job = max(job_runs, key=lambda s: s["samples_per_s"])
    bare = max(bare_runs, key=lambda s: s["samples_per_s"])
    ratio = job["samples_per_s"] / bare["samples_per_s"]
    pairs = zip(job_runs, bare_runs, strict=True)
    pair_ratios = [j["samples_per_s"] / b["samples_per_s"] for j, b in pairs]
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    result = {
        "bench": "training",
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "kind": args.kind,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "grad_clip": args.grad_clip,
        "job": {k: job[k] for k in ("samples_per_s", "step_p50_s", "step_p99_s", "steps")},
        "bare": {k: bare[k] for k in ("samples_per_s", "step_p50_s", "step_p99_s", "steps")},
        "ratio": ratio,
        "ratio_median_of_pairs": statistics.median(pair_ratios),
        "target": 0.9,
        "torch": torch.__version__,
        "ts": time.time(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"training {args.kind} {args.model} on {device}: run_job {job['samples_per_s']:.1f} "
        f"samples/s (p50 {job['step_p50_s'] * 1e3:.1f} ms, p99 {job['step_p99_s'] * 1e3:.1f} ms) | "
        f"bare {bare['samples_per_s']:.1f} samples/s (p50 {bare['step_p50_s'] * 1e3:.1f} ms, "
        f"p99 {bare['step_p99_s'] * 1e3:.1f} ms) | ratio {ratio:.3f} (target >= 0.9)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
