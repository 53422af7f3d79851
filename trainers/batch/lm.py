"""The answering causal LM's building blocks: a tiny model built without a hub, its data, its
training loop and its perplexity.

What :mod:`trainers.batch.generator`'s jobs are made of; readable top to bottom like the
batch loop (:mod:`trainers.batch.loop`): tokenise prompt + answer with the loss on the
answer only, bucket by length, AdamW with warmup and cosine decay, bf16 autocast on CUDA.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retrieval.answering import CausalLMGenerator, Context, build_prompt
from trainers.batch.config import ProgressCallback, Record, config_from_dict, config_to_dict
from trainers.batch.datasets import Example
from trainers.batch.loop import get_lr, make_batches
from trainers.batch.models import bf16_autocast, resolve_model_path
from trainers.exceptions import JobConfigError, TrainingJobError

__all__ = [
    "IGNORE",
    "Encoded",
    "GeneratorConfig",
    "LMState",
    "StyleExample",
    "build_tiny_lm",
    "collate",
    "encode_examples",
    "examples_from_style_records",
    "load_lm",
    "perplexity",
    "shipped_answers",
    "shipped_text",
    "train_lm",
    "train_tokenizer",
]

log = logging.getLogger(__name__)


IGNORE = -100  # label of tokens the loss skips (the prompt, the padding)


@dataclass(frozen=True)
class StyleExample(Example):
    """A ``style-examples`` record: ``text`` is the question, ``label`` the house answer.

    ``contexts`` are the source texts and ``doc_ids`` their documents, where the record named
    them: the training prompt then numbers them exactly as the serving prompt does, so the
    model learns to cite what it is shown (``example-N`` stands in for a missing id).

    Examples
    --------
    >>> e = StyleExample((0, 4), 1.0, "Why?", None, "Summary: because. [1]", ("ctx",))
    >>> e.question, e.answer, e.contexts
    ('Why?', 'Summary: because. [1]', ('ctx',))
    >>> e = StyleExample((0, 5), 1.0, "Why?", None, "A [1]", ("c1", "c2"), ("kafka", ""))
    >>> [c.doc_id for c in e.context_list()]
    ['kafka', 'example-2']
    """

    contexts: tuple[str, ...] = ()
    doc_ids: tuple[str, ...] = ()

    @property
    def question(self) -> str:
        """The question answered."""
        return self.text or ""

    @property
    def answer(self) -> str:
        """The answer in the house style."""
        return str(self.label)

    def context_list(self) -> list[Context]:
        """The contexts as the serving prompt numbers them."""
        ids = self.doc_ids
        return [
            Context((ids[i] if i < len(ids) else "") or f"example-{i + 1}", 0, 1.0, t)
            for i, t in enumerate(self.contexts)
        ]


def examples_from_style_records(records: Iterable[Record]) -> list[StyleExample]:
    """Style examples from replayed ``(partition, offset, value)``; a later record with the
    same id replaces the earlier one (a correction of the example).

    >>> recs = [(0, 0, {"id": "s1", "question": "Q?", "answer": "A1", "contexts": ["c"]}),
    ...         (0, 1, {"id": "s1", "question": "Q?", "answer": "A2", "ts": 5.0})]
    >>> [(e.answer, e.ts) for e in examples_from_style_records(recs)]
    [('A2', 5.0)]
    """
    by_id: dict[str, StyleExample] = {}
    for p, off, v in records:
        raw = list(v.get("contexts") or ())
        contexts = tuple(c if isinstance(c, str) else str(c.get("text", "")) for c in raw)
        doc_ids = tuple("" if isinstance(c, str) else str(c.get("doc_id") or "") for c in raw)
        by_id[str(v["id"])] = StyleExample(
            (int(p), int(off)),
            float(v.get("ts") or 0.0),
            str(v["question"]),
            None,
            str(v["answer"]),
            contexts,
            doc_ids if any(doc_ids) else (),
        )
    return sorted(by_id.values(), key=lambda e: e.offset_key)


@dataclass(frozen=True)
class GeneratorConfig:
    """Every knob of a generator job, with its default; :meth:`from_dict` for overrides.

    Examples
    --------
    >>> GeneratorConfig.from_dict({"epochs": 2}).epochs
    2
    >>> GeneratorConfig.from_dict({"epoch": 2})
    Traceback (most recent call last):
    ...
    trainers.exceptions.JobConfigError: unknown generator config key(s) ['epoch']...
    """

    # -- model ------------------------------------------------------------------------
    base_model: str = ""  # HF id or path: what retrain starts from, and finetune when none serves
    max_length: int = 512  # tokens of prompt + answer kept (the prompt is cut from the left)
    max_new_tokens: int = 64  # answer tokens trained on, and generated when scoring
    no_repeat_ngram_size: int = 4  # decoding when scoring, as serving decodes (0: off)
    # -- optimisation -----------------------------------------------------------------
    epochs: int = 3
    batch_size: int = 8
    lr: float | None = None  # None: 5e-3 with LoRA, 2e-4 full
    weight_decay: float = 0.0
    warmup_fraction: float = 0.06
    grad_clip: float = 1.0
    max_steps: int | None = None
    # -- fine-tune (LoRA) -------------------------------------------------------------
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    replay_ratio: float = 0.5
    # -- evaluation and gate ----------------------------------------------------------
    val_fraction: float = 0.2
    eval_max: int = 32  # held-out questions answered for the adherence score
    margin: float = 0.0
    min_eval_samples: int = 4
    # -- system -----------------------------------------------------------------------
    seed: int = 1337
    device: str = "auto"
    bf16: bool = True
    log_every: int = 10

    def __post_init__(self) -> None:
        checks = [
            (self.max_length >= 16, "max_length >= 16"),
            (self.max_new_tokens >= 1, "max_new_tokens >= 1"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size >= 0"),
            (self.epochs >= 1, "epochs >= 1"),
            (self.batch_size >= 1, "batch_size >= 1"),
            (self.lr is None or self.lr > 0, "lr > 0"),
            (self.max_steps is None or self.max_steps >= 0, "max_steps >= 0"),
            (self.lora_r >= 1, "lora_r >= 1"),
            (self.replay_ratio >= 0, "replay_ratio >= 0"),
            (0.0 <= self.val_fraction < 1.0, "0 <= val_fraction < 1"),
            (self.eval_max >= 1, "eval_max >= 1"),
            (self.log_every >= 1, "log_every >= 1"),
        ]
        bad = [rule for ok, rule in checks if not ok]
        if bad:
            raise JobConfigError(f"invalid generator config: expected {'; '.join(bad)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneratorConfig:
        """Defaults overridden by ``d``; an unknown key is an error."""
        return config_from_dict(cls, d, "generator")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the version's manifest)."""
        return config_to_dict(self)


def shipped_text(limit: int = 400) -> list[str]:
    """Text the project ships: the standard library's docstrings (``retrieval.corpus``)."""
    from retrieval.corpus import stdlib_corpus

    return [d["text"] for d in stdlib_corpus(limit)]


def shipped_answers(limit: int = 400, context_chars: int = 300) -> list[str]:
    """Serving prompts about the standard library, each followed by the extractive
    generator's answer: what a base model is pre-trained on to know the prompt format and to
    answer with citations (the way any instruction-tuned model already does), in the
    extractive form, not the house style. No running text keeps ``NO_CONTEXT_ANSWER`` (14 of
    265), so the tiny base and ``bench style``'s figures stay the measured ones.
    """
    from retrieval.answering import NO_CONTEXT_ANSWER, NO_PROSE_ANSWER, ExtractiveGenerator
    from retrieval.corpus import stdlib_corpus

    extractive = ExtractiveGenerator(max_sentences=1, max_chars=160)
    out = []
    for d in stdlib_corpus(limit):
        ctx = [Context(d["id"], 0, 1.0, d["text"][:context_chars])]
        question = f"Explain {d['id']}."
        answer = extractive.generate(question, ctx)
        answer = NO_CONTEXT_ANSWER if answer.startswith(NO_PROSE_ANSWER) else answer
        out.append(f"{build_prompt(question, ctx)} {answer}")
    return out


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts``, as a transformers
    ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as end, padding and unknown token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=end, pad_token=end, unk_token=end, bos_token=end
    )


def _tiny_config(
    arch: str, vocab: int, hidden: int, layers: int, heads: int, positions: int, eos: int
) -> Any:
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab,
            n_positions=positions,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=positions,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
            tie_word_embeddings=True,
        )
    raise JobConfigError(f"arch must be 'gpt2' or 'llama', got {arch!r}")


def build_tiny_lm(
    folder: str | Path,
    arch: str = "gpt2",
    hidden: int = 96,
    layers: int = 2,
    heads: int = 2,
    positions: int = 512,
    vocab_size: int = 2048,
    pretrain_steps: int = 150,
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    texts: Sequence[str] | None = None,
    lr: float = 1e-2,
) -> str:
    """Write a small causal LM and its tokenizer into ``folder``, pre-trained briefly.

    The tokenizer and the weights are trained on ``texts`` (default: :func:`shipped_text`
    and :func:`shipped_answers`, the serving prompt answered in the extractive form) for
    ``pretrain_steps`` steps of next-token prediction at peak rate ``lr``: enough for
    fluent-looking docstring English and the prompt's shape, nothing like a real model's
    knowledge. Each text is cut at ``seq_len`` tokens: the default fits every shipped prompt
    with its answer (at most 237 tokens with the default tokenizer), so the base sees each
    answer's citation, ``Sources:`` line and end token; at 192 a third of them lost that end.
    An existing folder holding a model is reused as it is. Returns the folder, loadable with
    ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM

    out = Path(folder)
    if (out / "config.json").is_file():
        return str(out)
    texts = list(texts) if texts is not None else shipped_text() + shipped_answers()
    tokenizer = train_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    config = _tiny_config(
        arch, len(tokenizer), hidden, layers, heads, positions, tokenizer.eos_token_id
    )
    model = AutoModelForCausalLM.from_config(config)
    eos = tokenizer.eos_token_id
    docs = [
        Encoded(ids, ids)
        for ids in (tokenizer(t)["input_ids"][: seq_len - 1] + [eos] for t in texts)
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(pretrain_steps):
        pick = torch.randint(0, len(docs), (batch_size,), generator=gen).tolist()
        batch = collate([docs[i] for i in pick], eos)
        for group in opt.param_groups:
            group["lr"] = get_lr(step, pretrain_steps, lr, 0.1)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out)
    log.info(
        "tiny %s LM (%d params) pre-trained %d steps into %s, loss %.2f",
        arch,
        sum(p.numel() for p in model.parameters()),
        pretrain_steps,
        out,
        float(loss.detach()),
    )
    return str(out)


def load_lm(path: str, device: torch.device) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a Hugging Face id or folder (fp32 weights for training)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        resolved = resolve_model_path(path)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise TrainingJobError(
            f"could not load the causal LM {path!r}: {exc}; give a local folder or a Hugging "
            "Face id available offline (trainers.batch.generator.build_tiny_lm writes a small one)"
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device)  # type: ignore[arg-type]
    return model, tokenizer


@dataclass(frozen=True)
class Encoded:
    """One example as token ids, and the labels the loss sees (``-100`` on the prompt)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def answer_tokens(self) -> int:
        """Tokens the loss counts."""
        return sum(1 for t in self.labels if t != IGNORE)


def encode_examples(
    tokenizer: Any, examples: Sequence[StyleExample], max_length: int, max_new_tokens: int
) -> list[Encoded]:
    """Prompt (as serving builds it) + answer + end token; the loss sees the answer only.

    The answer is cut at ``max_new_tokens`` (what serving may generate) and the prompt is cut
    from the left to fit ``max_length`` (serving keeps the end of the prompt too).
    """
    out = []
    eos = tokenizer.eos_token_id
    for e in examples:
        prompt = CausalLMGenerator.prompt_ids_for(
            tokenizer, build_prompt(e.question, e.context_list())
        )
        answer = tokenizer(" " + e.answer.strip(), add_special_tokens=False)["input_ids"]
        answer = (list(answer) + ([eos] if eos is not None else []))[:max_new_tokens]
        prompt = list(prompt)[-max(1, max_length - len(answer)) :]
        out.append(Encoded(prompt + answer, [IGNORE] * len(prompt) + answer))
    return out


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    width = max(len(i.input_ids) for i in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class LMState:
    """Counters of a training run (for progress, the manifest and the benchmark)."""

    total: int
    step: int = 0
    tokens: int = 0
    loss: float = float("nan")
    seconds: float = 0.0


def train_lm(
    model: Any,
    items: Sequence[Encoded],
    config: GeneratorConfig,
    device: torch.device,
    base_lr: float,
    pad_id: int,
    on_progress: ProgressCallback | None = None,
) -> LMState:
    """Train ``model`` in place on ``items`` (length-bucketed batches, AdamW, warm-up then
    linear decay, clipping); tokens/s counts every input token of every batch."""
    lengths = [len(i.input_ids) for i in items]
    epochs = [
        make_batches(lengths, config.batch_size, config.seed, epoch)
        for epoch in range(config.epochs)
    ]
    total = sum(len(b) for b in epochs)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    state = LMState(total=total)
    if total == 0:
        return state
    params = [p for p in model.parameters() if p.requires_grad]
    started = time.perf_counter()
    optimizer = torch.optim.AdamW(
        params, lr=base_lr, weight_decay=config.weight_decay, fused=device.type == "cuda"
    )
    model.train()
    for batches in epochs:
        for index in batches:
            if state.step >= total:
                break
            lr = get_lr(state.step, total, base_lr, config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = {
                k: v.to(device, non_blocking=True)
                for k, v in collate([items[i] for i in index], pad_id).items()
            }
            with bf16_autocast(device, config.bf16):
                loss = model(**batch).loss
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens += int(sum(lengths[i] for i in index))
            if state.step % config.log_every == 0 or state.step == total:
                state.loss = float(loss.detach())
                if on_progress is not None:
                    elapsed = max(1e-9, time.perf_counter() - started)
                    on_progress(
                        {
                            "step": state.step,
                            "total": total,
                            "loss": state.loss,
                            "tokens_per_s": state.tokens / elapsed,
                        }
                    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    state.seconds = time.perf_counter() - started
    model.eval()
    return state


def perplexity(
    model: Any, items: Sequence[Encoded], pad_id: int, device: torch.device, batch_size: int = 8
) -> float:
    """exp(mean negative log-likelihood of the answer tokens) of ``items`` (NaN for none)."""
    if not items:
        return float("nan")
    model.eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            targets = batch["labels"][:, 1:]
            logp = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            nll += float(logp)
            count += int((targets != IGNORE).sum())
    return math.exp(nll / count) if count else float("nan")
