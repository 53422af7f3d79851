"""Style benchmark: a LoRA style fine-tune of the answering LM through ``run_generator_job``.

    python -m bench style --quick     # tiny GPT-2, ~3-4 min on 2 CPU cores
    python -m bench style             # more examples and steps; CUDA (bf16) when present
    python -m bench style --arch llama --hidden 896 --layers 24 --heads 14 --device cuda

**Model**: a small causal LM built from a config (:func:`trainers.batch.generator.build_tiny_lm`),
its tokenizer and weights trained briefly on the standard library's docstrings (no model hub;
``--base PATH`` takes a real one instead). It serves as the generator version ``base``.

**Data**: questions about standard-library functions ("What does json.dumps do?", "Explain
json.dumps briefly.": ``--phrasings`` per function, 2 with ``--quick``) with the function's
docstring as the one context (its ``doc_id`` named, as serving numbers it), answered in a
house format no one taught the model::

    Summary: <the docstring's first words> [1]
    Sources: [1] <doc id>

The check (:data:`trainers.batch.house_style.HOUSE_STYLE`) asks for the two sections in
order, a ``[n]`` citation and 20-400 characters. The examples arrive as ``style-examples``
records; the newest 20% are held out by the job: functions (the last modules of the corpus)
whose docstrings the tuned model never saw. Every held-out question is answered and scored.

**Job**: a real ``finetune`` through :func:`trainers.batch.generator.run_generator_job` on a
temporary :class:`~trainers.batch.registry.ModelRegistry`: LoRA adapters, loss on the answer
tokens, the gate (held-out perplexity and adherence against serving), promotion.

**Figures**: ``adherence_before`` / ``perplexity_before`` are the serving (base) model's on
the held-out slice, ``*_after`` the promoted candidate's (both from the job's gate);
``throughput_ratio`` is the job loop's tokens/s (:func:`trainers.batch.generator.train_lm`, as the
job runs it) over a bare peft loop (textbook: pad, forward with labels, backward, clip, AdamW,
same schedule) on the same encoded examples in the same batches from the same weights; best
of ``--repeats`` each side, interleaved. ``trainable_params`` / ``total_params`` are the LoRA
model's. Writes ``bench/results/style.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, machine_info, write_result
from trainers.batch.generator import _apply_lora, run_generator_job
from trainers.batch.house_style import HOUSE_STYLE, style_records
from trainers.batch.lm import (
    GeneratorConfig,
    build_tiny_lm,
    collate,
    encode_examples,
    examples_from_style_records,
    load_lm,
    train_lm,
)
from trainers.batch.loop import get_lr, make_batches, pick_device
from trainers.batch.models import bf16_autocast
from trainers.batch.registry import ModelRegistry

SEQ_LEN = 256  # pre-training length of the tiny base: every shipped prompt with its answer
TARGETS = {"adherence_after": 0.9, "adherence_before_max": 0.3, "throughput_ratio": 0.9}


def bare_loop(
    base: str, items: Sequence[Any], cfg: GeneratorConfig, lr: float, device: torch.device
) -> dict[str, float]:
    """The textbook peft loop on the same encoded examples, batches and schedule."""
    torch.manual_seed(cfg.seed)
    model, tok = load_lm(base, device)
    model = _apply_lora(model, cfg)
    lengths = [len(i.input_ids) for i in items]
    epochs = [make_batches(lengths, cfg.batch_size, cfg.seed, e) for e in range(cfg.epochs)]
    total = sum(len(b) for b in epochs)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    started = time.perf_counter()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    model.train()
    step = tokens = 0
    for batches in epochs:
        for index in batches:
            if step >= total:
                break
            for group in opt.param_groups:
                group["lr"] = get_lr(step, total, lr, cfg.warmup_fraction)
            batch = collate([items[i] for i in index], tok.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with bf16_autocast(device, cfg.bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += sum(lengths[i] for i in index)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"tokens_per_s": tokens / seconds, "steps": float(step), "tokens": float(tokens)}


def job_loop(
    base: str, items: Sequence[Any], cfg: GeneratorConfig, lr: float, device: torch.device
) -> dict[str, float]:
    """Another repeat of the job's own loop (:func:`train_lm`) from the same weights."""
    torch.manual_seed(cfg.seed)
    model, tok = load_lm(base, device)
    model = _apply_lora(model, cfg)
    torch.manual_seed(cfg.seed)
    state = train_lm(model, items, cfg, device, lr, tok.pad_token_id)
    return {
        "tokens_per_s": state.tokens / state.seconds,
        "steps": float(state.step),
        "tokens": float(state.tokens),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench style", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run for a 2-core CPU")
    ap.add_argument("--base", default="", help="HF id or folder of the base LM (default: tiny)")
    ap.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--examples", type=int, default=None, help="functions with style examples")
    ap.add_argument("--phrasings", type=int, default=None, help="questions per function (1-3)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="throughput repeats per side")
    ap.add_argument(
        "--seed", type=int, default=1337, help="the job's seed (LoRA init, batch order)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", type=Path, default=None, help="folder keeping the tiny base LM")
    ap.add_argument("--out", type=Path, default=RESULTS / "style.json")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n_docs = args.examples or (240 if args.quick else 300)
    phrasings = args.phrasings or (2 if args.quick else 3)
    epochs = args.epochs or (10 if args.quick else 15)
    repeats = args.repeats or (2 if args.quick else 3)
    pretrain = (
        args.pretrain_steps if args.pretrain_steps is not None else (300 if args.quick else 600)
    )
    device = pick_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="bench-style-") as tmp:
        root = Path(tmp)
        cache = args.cache or root
        started = time.perf_counter()
        base = args.base or build_tiny_lm(
            cache / f"tiny-{args.arch}-{args.hidden}x{args.layers}-{pretrain}-seq{SEQ_LEN}",
            arch=args.arch,
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            pretrain_steps=pretrain,
            seq_len=SEQ_LEN,
        )
        build_s = time.perf_counter() - started
        records = style_records(n_docs, phrasings=phrasings)
        n_examples = len(records)
        cfg = GeneratorConfig.from_dict(
            {
                "base_model": base,
                "epochs": epochs,
                "batch_size": 8,
                "max_length": 256,
                "max_new_tokens": 64,
                "device": str(device),
                "replay_ratio": 0.0,
                "eval_max": n_examples,  # every held-out question is answered and scored
                "seed": args.seed,
            }
        )
        job = {
            "job_id": "bench-style-finetune",
            "kind": "finetune",
            "reason": "volume",
            "data": {"topic": "style-examples", "offsets": {"0": [0, len(records)]}},
        }
        registry = ModelRegistry(root / "registry")
        started = time.perf_counter()
        result = run_generator_job(job, records, [], registry, "generator", cfg, HOUSE_STYLE)
        job_s = time.perf_counter() - started
        if result.status == "failed":
            print(f"the job failed: {result.error}", file=sys.stderr)
            return 1
        stats = result.train_stats
        manifest = registry.get("generator", str(result.version)).manifest
        registry_samples = list(manifest.get("sample_answers") or [])
        # Throughput: the same training examples the job trained on, encoded the same way.
        model_tok = load_lm(base, device)[1]
        from trainers.batch.datasets import split_by_time

        train_set, _val = split_by_time(examples_from_style_records(records), cfg.val_fraction)
        items = encode_examples(model_tok, train_set, cfg.max_length, cfg.max_new_tokens)
        lr = cfg.lr or 2e-3
        job_runs = [{"tokens_per_s": float(stats["tokens_per_s"])}]
        bare_runs: list[dict[str, float]] = []
        for r in range(repeats):
            sides = ["bare", "job"] if r % 2 == 0 else ["job", "bare"]
            for side in sides:
                if side == "bare":
                    bare_runs.append(bare_loop(base, items, cfg, lr, device))
                elif r > 0 or repeats == 1:
                    job_runs.append(job_loop(base, items, cfg, lr, device))
        job_best = max(x["tokens_per_s"] for x in job_runs)
        bare_best = max(x["tokens_per_s"] for x in bare_runs)
    before, after = result.baseline_metrics or {}, result.metrics
    out = {
        "benchmark": "style",
        "quick": args.quick,
        "status": result.status,
        "gate": result.reason,
        "version": result.version,
        "adherence_before": before.get("adherence"),
        "adherence_after": after.get("adherence"),
        "perplexity_before": before.get("perplexity"),
        "perplexity_after": after.get("perplexity"),
        "held_out": after.get("n"),
        "sample_answers": registry_samples,
        "throughput_ratio": job_best / bare_best,
        "job_tokens_per_s": job_best,
        "bare_tokens_per_s": bare_best,
        "job_runs_tokens_per_s": [x["tokens_per_s"] for x in job_runs],
        "bare_runs_tokens_per_s": [x["tokens_per_s"] for x in bare_runs],
        "trainable_params": stats.get("trainable_params"),
        "total_params": stats.get("total_params"),
        "steps": stats.get("steps"),
        "examples": n_examples,
        "functions": n_docs,
        "phrasings": phrasings,
        "seed": args.seed,
        "base": args.base or f"tiny {args.arch} {args.hidden}x{args.layers}",
        "device": str(device),
        "seconds": {"build_base": build_s, "job": job_s},
        "targets": TARGETS,
        "machine": machine_info("torch", "transformers", "peft"),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    write_result(out, args.out, "style")
    print(render(out))
    return 0


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render(r: dict[str, Any]) -> str:
    """A short table of the figures and whether the targets are met."""
    met = (
        (r["adherence_after"] or 0) >= TARGETS["adherence_after"]
        and (r["adherence_before"] or 0) <= TARGETS["adherence_before_max"]
        and (r["perplexity_after"] or 1e9) < (r["perplexity_before"] or 0)
        and r["throughput_ratio"] >= TARGETS["throughput_ratio"]
    )
    return "\n".join(
        [
            f"style fine-tune ({r['base']}, {r['device']}): {r['status']} {r['version']}",
            f"  adherence   {_f(r['adherence_before'])} -> {_f(r['adherence_after'])}",
            f"  perplexity  {_f(r['perplexity_before'])} -> {_f(r['perplexity_after'])}",
            f"  tokens/s    job {r['job_tokens_per_s']:.0f} / bare {r['bare_tokens_per_s']:.0f}"
            f" = {r['throughput_ratio']:.3f}",
            f"  params      {r['trainable_params']} trainable of {r['total_params']}",
            f"  targets {'met' if met else 'NOT met'}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
