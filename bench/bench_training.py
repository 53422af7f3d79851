"""Training benchmark: a retrain and a LoRA fine-tune via ``run_job``; its loop vs a bare one.

    python -m bench train --quick       # tiny BERT, 100 steps, best of 2: < 3 min on 2 cores
    python -m bench train               # MiniLM on CUDA (bf16 autocast) when present, else tiny
    python -m bench train --device cuda --model minilm --steps 300 --repeats 5

(``python bench/bench_training.py ...`` takes the same options.)

**Data**: paragraphs of Python standard-library docstrings (text no one in the project wrote),
labelled with the team that owns the module (``text``, ``files``, ``concurrency``, ``network``,
``data``, ``numbers``, ``language``), arriving as ``events`` records in a seeded random order.
After 60% of the stream a reorganisation moves ``asyncio`` to the network team and
``statistics`` to the data team: a concept change (same texts, new labels).

**Jobs**, each a real :func:`trainers.batch.jobs.run_job` on a :class:`ModelRegistry` in a temporary
folder:

1. *bootstrap*: a first, briefly trained model on the oldest quarter of the history, so that the
   retrain has a serving version to be compared with;
2. *retrain*: a new model on the base encoder, on the whole history before the change;
3. *finetune*: LoRA adapters on the retrained version, on the records after the change (no
   replay: the old labels of the moved modules are stale).

For 2 and 3: wall time of ``run_job``, validation accuracy (the job's newest held-out slice) of
the serving version before (``baseline_metrics``) and of the candidate after (``metrics``),
trainable and total parameters of the trained module (the LoRA-wrapped one for the fine-tune),
status and gate reason.

**Loop throughput**: the job's training loop (``train_stats``: optimizer creation to the last
step) against the textbook loop in bare transformers/peft/torch (tokenize, pad, forward,
backward, clip, AdamW, the same LR schedule) from the same weights, on the same examples in the
same length-bucketed batches, for the same steps; best of N repeats each side, interleaved
(the scenario's job is the job side's first repeat). The top-level ``samples_per_s``,
``bare_samples_per_s``, ``throughput_ratio`` (target >= 0.9) and step p50/p99 are the
fine-tune's (the frequent job); the retrain's are in its section (``--compare``; ``--quick``
compares the fine-tune only). On CUDA, step times are host times between steps (the job's loop
syncs only every ``log_every`` steps); samples/s are over synced totals.

Writes ``bench/results/train.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/bench_training.py`` from a plain checkout
    sys.path.insert(0, str(ROOT))

from trainers.batch import jobs  # noqa: E402
from trainers.batch.datasets import Example, examples_from_records, split_by_time  # noqa: E402
from trainers.batch.jobs import JobConfig, JobResult, get_lr, make_batches, pick_device  # noqa: E402
from trainers.batch.models import (  # noqa: E402
    MINILM_ID,
    bf16_autocast,
    bf16_supported,
    resolve_model_path,
    save_tiny_encoder,
)
from trainers.batch.registry import ModelRegistry  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "train.json"
MODEL_NAME = "bench"
TARGET_RATIO = 0.9
Record = tuple[int, int, dict[str, Any]]

# Who owns which standard-library module: the label of each docstring paragraph.
TEAMS: dict[str, tuple[str, ...]] = {
    "text": ("re", "string", "textwrap", "difflib", "codecs", "unicodedata", "html",
             "html.parser", "shlex", "locale", "gettext"),
    "files": ("pathlib", "os.path", "shutil", "tempfile", "glob", "fnmatch", "io", "zipfile",
              "tarfile", "gzip", "bz2", "lzma", "filecmp", "fileinput", "mmap"),
    "concurrency": ("threading", "queue", "asyncio", "concurrent.futures", "multiprocessing",
                    "subprocess", "sched", "selectors", "signal"),
    "network": ("socket", "ssl", "http.client", "http.server", "http.cookies", "urllib.parse",
                "urllib.request", "smtplib", "ftplib", "ipaddress", "socketserver",
                "email.message", "imaplib", "poplib"),
    "data": ("json", "csv", "pickle", "struct", "sqlite3", "xml.etree.ElementTree",
             "xml.dom.minidom", "base64", "configparser", "plistlib", "array", "marshal",
             "shelve", "binascii", "zlib"),
    "numbers": ("math", "random", "statistics", "decimal", "fractions", "heapq", "bisect",
                "cmath", "numbers", "datetime", "calendar", "time"),
    "language": ("collections", "functools", "itertools", "operator", "contextlib",
                 "dataclasses", "enum", "typing", "abc", "copy", "weakref", "inspect", "types",
                 "dis", "ast", "traceback"),
}  # fmt: skip
# The concept change: a reorganisation hands these modules to another team.
MOVES = {"asyncio": "network", "statistics": "data"}
CHANGE_AT = 0.6  # share of the stream before the reorganisation


# -----------------------------------------------------------------------------------------
# data


def docstring_paragraphs(min_chars: int = 60) -> list[tuple[str, str, str]]:
    """``(object, module, paragraph)`` for the public functions, classes and methods of
    :data:`TEAMS`' modules, one per docstring paragraph (whitespace collapsed, duplicates
    dropped). Deterministic for a given Python version."""
    with warnings.catch_warnings():  # typing.io & co. warn when their docs are read
        warnings.simplefilter("ignore", DeprecationWarning)
        return _paragraphs(min_chars)


def _paragraphs(min_chars: int) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for modules in TEAMS.values():
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError:  # a platform without it (mmap, signal, ...)
                continue
            objects: list[tuple[str, Any]] = []
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_"):
                    continue
                if inspect.isclass(obj):
                    objects.append((f"{name}.{attr}", obj))
                    objects.extend(
                        (f"{name}.{attr}.{a}", o)
                        for a, o in sorted(vars(obj).items())
                        if not a.startswith("_")
                        and (inspect.isroutine(o) or isinstance(o, property))
                    )
                elif inspect.isroutine(obj):
                    objects.append((f"{name}.{attr}", obj))
            for obj_id, obj in objects:
                for para in re.split(r"\n\s*\n", inspect.getdoc(obj) or ""):
                    text = " ".join(para.split())
                    if len(text) >= min_chars and text not in seen:
                        seen.add(text)
                        out.append((obj_id, name, text))
    return out


def make_stream(limit: int | None, seed: int) -> tuple[list[Record], list[Record], dict[str, Any]]:
    """``events`` records before and after the reorganisation, and a description of them."""
    owner = {m: team for team, modules in TEAMS.items() for m in modules}
    paragraphs = docstring_paragraphs()
    random.Random(seed).shuffle(paragraphs)
    if limit is not None:
        paragraphs = paragraphs[:limit]
    n_before = round(len(paragraphs) * CHANGE_AT)
    before: list[Record] = []
    after: list[Record] = []
    for i, (obj_id, module, text) in enumerate(paragraphs):
        changed = i >= n_before
        label = MOVES.get(module, owner[module]) if changed else owner[module]
        value = {"id": f"{obj_id}#{i}", "ts": float(i), "text": text, "label": label}
        (after if changed else before).append((i % 3, i, value))
    moved = sum(1 for _, module, _ in paragraphs[n_before:] if module in MOVES)
    info = {
        "source": "Python standard-library docstring paragraphs, labelled by owning team",
        "python": platform.python_version(),
        "records": len(paragraphs),
        "before_change": len(before),
        "after_change": len(after),
        "teams": sorted(TEAMS),
        "moves": {m: [owner[m], team] for m, team in MOVES.items()},
        "moved_share_after_change": moved / max(1, len(after)),
    }
    return before, after, info


# -----------------------------------------------------------------------------------------
# helpers


def save_tiny_base(folder: Path, hidden: int = 128) -> str:
    """A small base encoder that learns in CPU-seconds: :func:`save_tiny_encoder`'s random
    2-layer BERT (MiniLM tokenizer) whose word embeddings are MiniLM's, projected onto their
    top ``hidden`` principal directions. A fully random one barely leaves chance accuracy in
    the quick run's steps; this one does, so the before/after metrics mean something."""
    from transformers import AutoModel, BertModel

    save_tiny_encoder(folder, hidden=hidden)
    tiny = BertModel.from_pretrained(str(folder))
    words = AutoModel.from_pretrained(resolve_model_path(MINILM_ID)).embeddings.word_embeddings
    with torch.no_grad():
        centered = words.weight - words.weight.mean(dim=0)
        _, vectors = torch.linalg.eigh(centered.T @ centered)  # ascending eigenvalues
        projected = centered @ vectors[:, -hidden:].flip(1)
        tiny.embeddings.word_embeddings.weight.copy_(projected * (0.06 / projected.std()))
    tiny.save_pretrained(str(folder))
    return str(folder)


def percentile(xs: Sequence[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(len(ys) * q))]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import peft
    import transformers

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


@contextlib.contextmanager
def count_params() -> Iterator[dict[str, int]]:
    """Parameter counts of the module ``run_job`` trains, taken as its training starts.

    ``run_job`` returns no model, so :func:`trainers.batch.jobs.train` is wrapped for the duration:
    the counts are read off the module it is handed (LoRA already applied for a fine-tune).
    """
    counts: dict[str, int] = {}
    real = jobs.train

    def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
        named = list(model.module.named_parameters())
        counts["trainable_params"] = sum(p.numel() for _, p in named if p.requires_grad)
        counts["total_params"] = sum(p.numel() for _, p in named)
        counts["lora_params"] = sum(p.numel() for n, p in named if "lora_" in n)
        return real(model, *args, **kwargs)

    jobs.train = spy
    try:
        yield counts
    finally:
        jobs.train = real


def epochs_for(n_train: int, batch_size: int, steps: int) -> int:
    """Enough epochs for ``steps`` optimizer steps (``max_steps`` stops the last one)."""
    return max(1, math.ceil(steps / max(1, math.ceil(n_train / batch_size))))


def n_train(records: list[Record], val_fraction: float) -> int:
    return len(split_by_time(examples_from_records(records), val_fraction)[0])


# -----------------------------------------------------------------------------------------
# the two loops


def bare_loop(
    model_dir: str,
    kind: str,
    train: list[Example],
    cfg: JobConfig,
    base_lr: float,
    device: torch.device,
) -> dict[str, Any]:
    """The reference: plain transformers (+ peft for a fine-tune) and a plain torch loop."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the jobs' model loading turns it back on
    classes = sorted({str(e.label) for e in train})
    label_id = {c: i for i, c in enumerate(classes)}
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if kind == "finetune":  # a saved version: its head already has the classes
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        label_id = {str(c): int(i) for c, i in model.config.label2id.items()}
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout)  # fmt: skip
        model = get_peft_model(model, lora)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(classes)
        )
    model.to(device).train()
    ids = tok([e.text or "" for e in train], truncation=True, max_length=cfg.max_length)[
        "input_ids"
    ]
    ys = torch.tensor([label_id[str(e.label)] for e in train])
    lengths = [len(x) for x in ids]
    batches = [b for ep in range(cfg.epochs) for b in make_batches(lengths, cfg.batch_size,
                                                                   cfg.seed, ep)]  # fmt: skip
    batches = batches[: cfg.max_steps]
    total = len(batches)
    pad = int(tok.pad_token_id or 0)
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    opt = torch.optim.AdamW(
        params, lr=base_lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: get_lr(s, total, 1.0, cfg.warmup_fraction)
    )
    times, samples, prev = [], 0, time.perf_counter()
    for batch in batches:
        width = max(lengths[i] for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : lengths[i]] = torch.tensor(ids[i])
            mask[row, : lengths[i]] = 1
        inputs = input_ids.to(device, non_blocking=True)
        attn = mask.to(device, non_blocking=True)
        labels = ys[batch].to(device, non_blocking=True)
        with bf16_autocast(device, cfg.bf16):
            logits = model(input_ids=inputs, attention_mask=attn).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        if cfg.grad_clip > 0:  # same recipe as the job, so the ratio measures the loop
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
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
        "steps": len(batches),
        "samples": samples,
        "seconds": elapsed,
    }


def run(
    reg: ModelRegistry,
    job_id: str,
    kind: str,
    records: list[Record],
    cfg: JobConfig,
    base_version: str | None = None,
) -> tuple[JobResult, float, dict[str, int]]:
    """One ``run_job``: its result, wall seconds and the trained module's parameter counts."""
    job: dict[str, Any] = {
        "job_id": job_id,
        "kind": kind,
        "reason": "manual",
        "data": {"topic": "events", "offsets": {"0": [records[0][1], records[-1][1]]}},
    }
    if base_version:
        job["base_version"] = base_version
    with count_params() as counts:
        started = time.perf_counter()
        res = jobs.run_job(job, records, [], reg, MODEL_NAME, cfg)
        wall = time.perf_counter() - started
    if res.status == "failed":
        raise SystemExit(f"benchmark job {job_id} failed: {res.error}")
    return res, wall, dict(counts)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def job_section(res: JobResult, wall: float, counts: dict[str, int], cfg: JobConfig) -> dict:
    metric = cfg.gate_metric
    stats = res.train_stats
    section: dict[str, Any] = {
        "status": res.status,
        "version": res.version,
        "gate_reason": res.reason,
        "wall_s": wall,
        "train_s": stats.get("seconds"),
        "train_samples_per_s": stats.get("samples_per_s"),
        "steps": stats.get("steps"),
        "step_p50_ms": _ms(stats.get("step_p50_s")),
        "step_p99_ms": _ms(stats.get("step_p99_s")),
        "metric": metric,
        "before": (res.baseline_metrics or {}).get(metric),
        "after": res.metrics.get(metric),
        "baseline_metrics": res.baseline_metrics,
        "metrics": res.metrics,
        "val_examples": int(res.metrics.get("n", 0)),
        "lr": cfg.lr,
        "epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
    }
    # prefer the job's own counts, should train_stats ever carry them
    for key in ("trainable_params", "total_params", "lora_params"):
        section[key] = stats.get(key, counts.get(key))
    return section


def summarize(job_runs: list[dict[str, Any]], bare_runs: list[dict[str, Any]]) -> dict:
    job = max(job_runs, key=lambda s: s["samples_per_s"])
    bare = max(bare_runs, key=lambda s: s["samples_per_s"])
    pairs = zip(job_runs, bare_runs, strict=True)
    return {
        "samples_per_s": job["samples_per_s"],
        "bare_samples_per_s": bare["samples_per_s"],
        "throughput_ratio": job["samples_per_s"] / bare["samples_per_s"],
        "ratio_median_of_pairs": statistics.median(
            j["samples_per_s"] / b["samples_per_s"] for j, b in pairs
        ),
        "step_p50_ms": job["step_p50_s"] * 1e3,
        "step_p99_ms": job["step_p99_s"] * 1e3,
        "bare_step_p50_ms": bare["step_p50_s"] * 1e3,
        "bare_step_p99_ms": bare["step_p99_s"] * 1e3,
        "steps": job["steps"],
        "bare_steps": bare["steps"],
        "repeats": len(job_runs),
        "job_runs_samples_per_s": [r["samples_per_s"] for r in job_runs],
        "bare_runs_samples_per_s": [r["samples_per_s"] for r in bare_runs],
    }


# -----------------------------------------------------------------------------------------
# command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench train", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny model, fewer steps and repeats (< 3 min on 2 CPU cores)",
    )
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument(
        "--model",
        default="auto",
        choices=["auto", "tiny", "minilm"],
        help="auto: minilm on CUDA (not --quick), else tiny (see save_tiny_base)",
    )
    ap.add_argument("--steps", type=int, help="optimizer steps per job (default 200; quick 100)")
    ap.add_argument("--repeats", type=int, help="best of N for each side (default 3; quick 2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument(
        "--compare",
        choices=["both", "finetune", "retrain"],
        help="jobs compared with a bare loop (default both; quick: finetune)",
    )
    ap.add_argument(
        "--grad-clip",
        type=float,
        default=JobConfig.grad_clip,
        help="max grad norm on both sides (0: off)",
    )
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick = True
    if args.steps is None:
        args.steps = 3 if args.smoke else 100 if args.quick else 200
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 2 if args.quick else 3
    if args.compare is None:
        args.compare = "finetune" if args.quick else "both"
    if args.steps < 1 or args.repeats < 1:
        ap.error("--steps and --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight loading/saving bars, once per job
    device = pick_device(args.device)
    model = args.model
    if model == "auto":
        model = "minilm" if device.type == "cuda" and not args.quick else "tiny"
    bf16 = JobConfig.bf16 and bf16_supported(device)
    before, after, data_info = make_stream(300 if args.smoke else None, args.seed)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if model == "tiny":
            base = save_tiny_base(Path(tmp) / "tiny", hidden=32 if args.smoke else 128)
            # mostly random weights: larger steps than the job's defaults for a pretrained one
            lrs: dict[str, float | None] = {"retrain": 1e-3, "finetune": 4e-3}
        else:
            base = MINILM_ID
            lrs = {"retrain": None, "finetune": None}  # the job's defaults (5e-5, LoRA 5e-4)
        common = JobConfig.from_dict({
            "model_kind": "text", "base_model": base, "batch_size": args.batch_size,
            "max_length": args.max_length, "grad_clip": args.grad_clip, "device": str(device),
            "progress": False, "replay_ratio": 0.0, "seed": args.seed,
            "min_eval_samples": 1 if args.smoke else JobConfig.min_eval_samples,
        })  # fmt: skip

        def config(kind: str, records: list[Record], steps: int) -> JobConfig:
            epochs = epochs_for(n_train(records, common.val_fraction), args.batch_size, steps)
            return JobConfig.from_dict(
                common.to_dict() | {"lr": lrs[kind], "max_steps": steps, "epochs": epochs}
            )

        reg = ModelRegistry(Path(tmp) / "registry")
        # 1. bootstrap: the serving version the retrain is compared with
        boot_records = before[: max(2, len(before) // 4)]
        boot_cfg = config("retrain", boot_records, max(1, args.steps // 10))
        boot, boot_wall, _ = run(reg, "bootstrap", "retrain", boot_records, boot_cfg)
        if boot.status != "promoted" and boot.version:
            # A first version must beat the majority class to be promoted; the bootstrap is
            # this benchmark's stand-in for "what serves", so it serves whatever it scored.
            reg.promote(MODEL_NAME, boot.version)

        cfgs = {"retrain": config("retrain", before, args.steps),
                "finetune": config("finetune", after, args.steps)}  # fmt: skip
        records = {"retrain": before, "finetune": after}
        sections: dict[str, dict[str, Any]] = {}
        job_runs: dict[str, list[dict[str, Any]]] = {"retrain": [], "finetune": []}
        bare_runs: dict[str, list[dict[str, Any]]] = {"retrain": [], "finetune": []}
        compared = ["retrain", "finetune"] if args.compare == "both" else [args.compare]
        bases: dict[str, str] = {}

        def bare(kind: str) -> None:
            cfg = cfgs[kind]
            train, _ = split_by_time(examples_from_records(records[kind]), cfg.val_fraction)
            start = (
                resolve_model_path(base)
                if kind == "retrain"
                else str(reg.get(MODEL_NAME, bases["finetune"]).artifact("model"))
            )
            lr = cfg.lr or (5e-5 if kind == "retrain" else 5e-4)
            bare_runs[kind].append(bare_loop(start, kind, train, cfg, lr, device))

        # 2. retrain, 3. finetune on the retrained version; each is its kind's first job repeat
        for kind in ("retrain", "finetune"):
            base_version = bases.get(kind)
            res, wall, counts = run(reg, kind, kind, records[kind], cfgs[kind], base_version)
            sections[kind] = job_section(res, wall, counts, cfgs[kind])
            sections[kind]["base_version"] = base_version or boot.version
            job_runs[kind].append(res.train_stats)
            if kind == "retrain":
                assert res.version is not None
                bases["finetune"] = res.version
            if kind in compared:
                bare(kind)
        # more repeats, interleaved (bare first on odd repeats: neither side always runs warm)
        for r in range(1, args.repeats):
            for kind in compared:
                sides = ["job", "bare"] if r % 2 == 0 else ["bare", "job"]
                for side in sides:
                    if side == "bare":
                        bare(kind)
                    else:
                        res, _, _ = run(reg, f"{kind}-repeat{r}", kind, records[kind],
                                        cfgs[kind], bases.get(kind))  # fmt: skip
                        job_runs[kind].append(res.train_stats)

    for kind in compared:
        sections[kind]["throughput"] = summarize(job_runs[kind], bare_runs[kind])
    top_kind = "finetune" if "finetune" in compared else compared[0]
    top = sections[top_kind]["throughput"]
    result: dict[str, Any] = {
        "bench": "train",
        **{k: top[k] for k in ("samples_per_s", "bare_samples_per_s", "throughput_ratio",
                               "step_p50_ms", "step_p99_ms", "bare_step_p50_ms",
                               "bare_step_p99_ms")},
        "throughput_kind": top_kind,
        "target_ratio": TARGET_RATIO,
        "device": str(device),
        "device_name": device_name(device),
        "bf16": bf16,
        "model": model,
        "base_model": MINILM_ID if model == "minilm" else "2-layer BERT, MiniLM embeddings (PCA)",
        "quick": bool(args.quick),
        "smoke": bool(args.smoke),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "grad_clip": args.grad_clip,
        "finetune": sections["finetune"],
        "retrain": sections["retrain"],
        "bootstrap": {"status": boot.status, "version": boot.version, "wall_s": boot_wall,
                      "steps": boot.train_stats.get("steps"),
                      "after": boot.metrics.get(boot_cfg.gate_metric)},
        "data": data_info,
        "machine": machine_info(),
        "total_wall_s": time.perf_counter() - t0,
        "ts": time.time(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(render(result))
    print(f"wrote {args.out}")
    return 0


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def render(r: dict[str, Any]) -> str:
    """The human summary of a ``train.json``."""
    lines = [
        f"train benchmark: {r['model']} on {r['device']} ({r['device_name']}), bf16 {r['bf16']}, "
        f"{'quick, ' if r['quick'] else ''}{r['steps']} steps x {r['batch_size']}, "
        f"best of {r['repeats']}, {r['total_wall_s']:.0f} s in all",
        f"{'job':<9} {'status':<9} {'wall s':>7} {'train s':>8} {'acc before':>10} "
        f"{'acc after':>9} {'trainable':>10} {'total':>8}",
    ]
    for kind in ("retrain", "finetune"):
        s = r[kind]
        lines.append(
            f"{kind:<9} {s['status']:<9} {s['wall_s']:>7.1f} {_fmt(s['train_s'], '.1f'):>8} "
            f"{_fmt(s['before']):>10} {_fmt(s['after']):>9} "
            f"{_params(s['trainable_params']):>10} {_params(s['total_params']):>8}"
        )
    lines.append(
        f"{'loop':<9} {'run_job/s':>10} {'bare/s':>9} {'ratio':>6} "
        f"{'p50 ms job|bare':>16} {'p99 ms job|bare':>16}"
    )
    for kind in ("retrain", "finetune"):
        t = r[kind].get("throughput")
        if t is None:
            continue
        lines.append(
            f"{kind:<9} {t['samples_per_s']:>10.1f} {t['bare_samples_per_s']:>9.1f} "
            f"{t['throughput_ratio']:>6.3f} "
            f"{t['step_p50_ms']:>7.1f} | {t['bare_step_p50_ms']:<6.1f} "
            f"{t['step_p99_ms']:>7.1f} | {t['bare_step_p99_ms']:<6.1f}"
        )
    verdict = "met" if r["throughput_ratio"] >= r["target_ratio"] else "NOT met"
    lines.append(
        f"throughput_ratio ({r['throughput_kind']}) {r['throughput_ratio']:.3f}: "
        f"target >= {r['target_ratio']} {verdict}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
