"""The answering model's jobs: LoRA style fine-tunes and full retrains of a causal LM.

Run manual
----------
The ``streams`` trainer replays the job's ``style-examples`` offsets into ``(partition,
offset, value)`` records and calls :func:`run_generator_job`; nothing here imports Kafka::

    from trainers.batch.generator import GeneratorConfig, run_generator_job
    from trainers.batch.registry import ModelRegistry
    from trainers.batch.style import StyleCheck

    job = {"job_id": "g-1", "kind": "finetune", "reason": "volume",
           "data": {"topic": "style-examples", "offsets": {"0": [0, 400]}}}
    config = GeneratorConfig.from_dict({"base_model": "Qwen/Qwen2.5-0.5B-Instruct"})
    result = run_generator_job(job, records, replay, ModelRegistry(".livelearn/registry"),
                               "generator", config, StyleCheck(sections=("Summary:",)))

Without a model hub, :func:`build_tiny_lm` writes a small GPT-2 or Llama model, with a
byte-level BPE tokenizer, both trained briefly on the standard library's docstrings (text the
project ships), into a folder usable as ``base_model`` or ``LIVELEARN_MODELS__GENERATOR``.

What a job does
---------------
* **finetune**: LoRA adapters (peft) on the serving generator (the registry's serving
  version, else ``base_model``), trained on the new style examples plus ``replay_ratio`` x as
  many older ones; the loss counts the answer tokens only (the prompt, built exactly as
  serving builds it, is masked). The adapter files are kept; the merged weights serve.
* **retrain**: a full fine-tune from ``base_model`` on every example of the job.
* **gate**: the newest ``val_fraction`` of the new examples is held out; candidate and serving
  are scored on it: perplexity of the held-out answers, and style adherence of the answers
  they generate for those questions. The candidate is promoted only if it is no worse on both
  (:func:`trainers.batch.evaluation.gate` for each metric); the registry records the lineage (job,
  kind, base version, the ``style-examples`` offsets).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retrieval.answering import CausalLMGenerator
from trainers.batch.config import (
    JobResult,
    ProgressCallback,
    Record,
    _json_safe,
)
from trainers.batch.datasets import replay_sample, split_by_time
from trainers.batch.evaluation import GateDecision, gate
from trainers.batch.jobs import _decide, _result_from_version
from trainers.batch.lm import (
    Encoded,
    GeneratorConfig,
    LMState,
    StyleExample,
    build_tiny_lm,
    encode_examples,
    examples_from_style_records,
    load_lm,
    perplexity,
    train_lm,
)
from trainers.batch.loop import pick_device, seed_everything
from trainers.batch.registry import ModelRegistry, Version
from trainers.batch.style import StyleCheck
from trainers.exceptions import RegistryError, TrainingJobError

__all__ = [
    "GeneratorConfig",
    "LMState",
    "ServingGenerator",
    "StyleExample",
    "build_tiny_lm",
    "encode_examples",
    "examples_from_style_records",
    "load_generator",
    "perplexity",
    "run_generator_job",
    "style_adherence",
    "train_lm",
]

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------------------
# a tiny model, built without a hub


# -----------------------------------------------------------------------------------------
# data


# -----------------------------------------------------------------------------------------
# training and scoring


def style_adherence(
    generator: CausalLMGenerator, examples: Sequence[StyleExample], check: StyleCheck
) -> tuple[float, list[str]]:
    """Share of the answers ``generator`` writes for the examples' questions that follow
    ``check``, and those answers."""
    answers = [generator.generate(e.question, e.context_list()) for e in examples]
    return check.score(answers), answers


def _score(
    model: Any,
    tokenizer: Any,
    val: Sequence[StyleExample],
    items: Sequence[Encoded],
    check: StyleCheck,
    config: GeneratorConfig,
    device: torch.device,
) -> tuple[dict[str, float], list[str]]:
    gen = CausalLMGenerator(
        (model, tokenizer),
        max_new_tokens=config.max_new_tokens,
        device=str(device),
        no_repeat_ngram_size=config.no_repeat_ngram_size,
    )
    sample = list(val)[-config.eval_max :]
    adherence, answers = style_adherence(gen, sample, check)
    ppl = perplexity(model, items, tokenizer.pad_token_id, device)
    return {"perplexity": ppl, "adherence": adherence, "n": float(len(val))}, answers


def gate_generator(
    metrics: Mapping[str, float], baseline: Mapping[str, float] | None, config: GeneratorConfig
) -> GateDecision:
    """Promote when the candidate is no worse than serving on held-out perplexity *and* style
    adherence (and better than the margin on both, when one is set).

    >>> cfg = GeneratorConfig(min_eval_samples=1)
    >>> gate_generator({"perplexity": 9.0, "adherence": 1.0, "n": 8},
    ...                {"perplexity": 20.0, "adherence": 0.1, "n": 8}, cfg).promote
    True
    >>> gate_generator({"perplexity": 25.0, "adherence": 1.0, "n": 8},
    ...                {"perplexity": 20.0, "adherence": 0.1, "n": 8}, cfg).promote
    False
    """
    ppl = gate(
        metrics,
        baseline,
        "perplexity",
        config.margin,
        higher_is_better=False,
        min_samples=config.min_eval_samples,
    )
    style = gate(
        metrics,
        baseline,
        "adherence",
        config.margin,
        higher_is_better=True,
        min_samples=config.min_eval_samples,
    )
    return GateDecision(ppl.promote and style.promote, f"{ppl.reason}; {style.reason}")


# -----------------------------------------------------------------------------------------
# the job


def _serving_path(
    registry: ModelRegistry, model_name: str, config: GeneratorConfig, version: str | None = None
) -> tuple[str, str | None]:
    """Weights a fine-tune continues from: a given version, the serving one, or the base
    (``base``: the configured weights, what serves before any job)."""
    if version and version != "base":
        return str(registry.get(model_name, version).artifact("model")), version
    serving = registry.serving(model_name)
    if serving is not None:
        return str(serving.artifact("model")), serving.version
    if not config.base_model:
        raise TrainingJobError(
            f"nothing serves {model_name!r} and no base_model is configured: set "
            "LIVELEARN_MODELS__GENERATOR to a causal LM id or folder"
        )
    return config.base_model, None


def _apply_lora(model: Any, config: GeneratorConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=None
        if targets == "auto"
        else (list(targets) if isinstance(targets, tuple) else targets),
        task_type="CAUSAL_LM",
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",  # Conv1D layers
    )
    return get_peft_model(model, lora)


def run_generator_job(
    job: Mapping[str, Any],
    train_records: Iterable[Record],
    replay_records: Iterable[Record],
    registry: ModelRegistry,
    model_name: str,
    config: GeneratorConfig,
    check: StyleCheck,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """Run one generator ``training-jobs`` record end to end (see the module docstring).

    Idempotent like :func:`trainers.batch.jobs.run_job`: a job id already registered returns its
    version untrained; a job that raises is a ``failed`` result that registers nothing.
    """
    job_id = str(job.get("job_id") or "")
    kind = str(job.get("kind") or "")
    data = dict(job.get("data") or {})
    existing = registry.find_by_job(job_id, model_name) if job_id else None
    if existing is not None:
        return _result_from_version(_decide(registry, model_name, existing), reused=True)
    staging: Path | None = None
    try:
        if not job_id:
            raise TrainingJobError("the job has no job_id; every training-jobs record needs one")
        if kind not in ("finetune", "retrain"):
            raise TrainingJobError(f"job kind must be 'finetune' or 'retrain', got {kind!r}")
        staging = registry.staging_dir()
        version = _train_and_register(
            job,
            kind,
            data,
            list(train_records),
            replay_records,
            registry,
            model_name,
            config,
            check,
            staging,
            on_progress,
        )
        staging = None
        return _result_from_version(_decide(registry, model_name, version), reused=False)
    except Exception as exc:  # a failed job is a result, not a crash of the runner
        log.exception("generator job %s failed", job_id)
        return JobResult(
            job_id=job_id,
            kind=kind,
            status="failed",
            version=None,
            error=f"{type(exc).__name__}: {exc}",
            data=data or None,
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
    config: GeneratorConfig,
    check: StyleCheck,
    staging: Path,
    on_progress: ProgressCallback | None,
) -> Version:
    seed_everything(config.seed)
    device = pick_device(config.device)
    new = examples_from_style_records(train_records)
    if not new:
        raise TrainingJobError(
            f"no style examples in the job's records ({len(train_records)} records): "
            "check the offsets"
        )
    train_part, val_part = split_by_time(new, config.val_fraction)
    train_set = [e for e in train_part if isinstance(e, StyleExample)]
    val = [e for e in val_part if isinstance(e, StyleExample)]
    serving_path, serving_version = _serving_path(registry, model_name, config)
    n_replay = 0
    if kind == "finetune":
        base_path, base_version = _serving_path(
            registry, model_name, config, job.get("base_version") or serving_version
        )
        model, tokenizer = load_lm(base_path, device)
        old = examples_from_style_records(replay_records)
        drawn = replay_sample(old, round(config.replay_ratio * len(train_set)), config.seed)
        replay = [e for e in drawn if isinstance(e, StyleExample)]
        n_replay = len(replay)
        train_set = train_set + replay
        model = _apply_lora(model, config)
        base_lr = config.lr or 5e-3
    else:
        if not config.base_model:
            raise TrainingJobError("a generator retrain starts from base_model: set it")
        model, tokenizer = load_lm(config.base_model, device)
        base_version = serving_version
        base_lr = config.lr or 2e-4
    pad = tokenizer.pad_token_id
    items = encode_examples(tokenizer, train_set, config.max_length, config.max_new_tokens)
    val_items = encode_examples(tokenizer, val, config.max_length, config.max_new_tokens)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    torch.manual_seed(config.seed)
    state = train_lm(model, items, config, device, base_lr, pad, on_progress)
    artifacts = {"model": "model"}
    if kind == "finetune":
        model.save_pretrained(str(staging / "adapter"))
        artifacts["adapter"] = "adapter"
        model = model.merge_and_unload()
    metrics, answers = _score(model, tokenizer, val, val_items, check, config, device)
    baseline: dict[str, float] | None = None
    if serving_path:
        serving_model, serving_tok = load_lm(serving_path, device)
        baseline, _ = _score(serving_model, serving_tok, val, val_items, check, config, device)
        del serving_model
    decision = gate_generator(metrics, baseline, config)
    log.info("generator job %s: %s", job.get("job_id"), decision.reason)
    model.save_pretrained(str(staging / "model"))
    tokenizer.save_pretrained(str(staging / "model"))
    manifest = {
        "job_id": job["job_id"],
        "kind": kind,
        "reason": job.get("reason"),
        "base_version": base_version,
        "base_model": config.base_model,
        "model_kind": "generator",
        "data": data,
        "metrics": metrics,
        "baseline_metrics": baseline,
        "gate": {
            "promote": decision.promote,
            "reason": decision.reason,
            "metric": "perplexity+adherence",
            "margin": config.margin,
        },
        "style_check": dataclasses.asdict(check),
        "config": config.to_dict(),
        "examples": {"train": len(train_set) - n_replay, "replay": n_replay, "val": len(val)},
        "sample_answers": answers[:3],
        "train_stats": {
            "steps": state.step,
            "tokens": state.tokens,
            "seconds": state.seconds,
            "tokens_per_s": state.tokens / state.seconds if state.seconds > 0 else 0.0,
            "device": str(device),
            "trainable_params": n_trainable,
            "total_params": n_total,
        },
        "artifacts": artifacts,
        "status": "candidate",
    }
    return registry.register(model_name, staging, _json_safe(manifest) or {}, move=True)


# -----------------------------------------------------------------------------------------
# serving


@dataclass(frozen=True)
class ServingGenerator:
    """A loaded generator and the version it is (``base`` when nothing is registered).

    Immutable: a hot swap builds a new one and replaces the reference, so a query in flight
    finishes on the model it started with.
    """

    generator: CausalLMGenerator
    version: str


def load_generator(
    registry: ModelRegistry | None,
    model_name: str,
    base_model: str,
    max_new_tokens: int = 64,
    device: str | None = None,
    no_repeat_ngram_size: int = 4,
) -> ServingGenerator:
    """The serving version of the generator from ``registry``, else ``base_model``, decoding
    with ``max_new_tokens`` and ``no_repeat_ngram_size`` (see :class:`CausalLMGenerator`)."""
    serving = registry.serving(model_name) if registry is not None else None
    if serving is None:
        if not base_model or base_model == "extractive":
            raise RegistryError(f"no version of {model_name!r} serves and no base model is set")
        gen = CausalLMGenerator(
            base_model,
            max_new_tokens=max_new_tokens,
            device=device,
            version="base",
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        return ServingGenerator(gen, "base")
    gen = CausalLMGenerator(
        str(serving.artifact("model")),
        max_new_tokens=max_new_tokens,
        device=device,
        version=serving.version,
        name=model_name,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    return ServingGenerator(gen, serving.version)
