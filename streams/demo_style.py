"""The demo's third act: the answering model learns the house style.

Until here the demo answers with the extractive generator (quotes with citations). Now the
operator switches the answering model to a causal LM (``LIVELEARN_MODELS__GENERATOR``) and
restarts the worker and the trainer; they resume from their committed offsets and the same
collection. No model hub is reachable here, so the LM is a tiny GPT-2 (96 wide, 2 layers,
about half a million parameters) pre-trained for 300 steps on the shipped docstrings
(:func:`trainers.batch.lm.build_tiny_lm`, ~30 s on 2 cores, kept in a cache folder). Then:

1. the sources of the style examples are indexed (``docs``), and questions about functions
   the examples do *not* cover are asked: the base's answers are in no house format (it was
   pre-trained on extractive answers, and imitates them badly);
2. 480 ``style-examples`` in the house format (:mod:`trainers.batch.house_style`:
   ``Summary: ... [1]`` then ``Sources: [1] <doc id>``) stream in; the generator's trigger
   policy counts them and its volume rule asks for a LoRA fine-tune;
3. the trainer runs it (loss on the answer tokens; the recipe of ``bench style --quick``),
   the gate scores candidate and serving on the newest held-out examples (perplexity,
   adherence), the registry promotes it, and the worker swaps the adapters in between two
   queries (``livelearn_serving_model_info`` with ``source="generator"`` names the version);
4. the same questions are asked again: the answers name the new version and follow the
   house format.

What the tiny model can and cannot do, said plainly in the report too: it learns the form
(sections, citation, length) from a few hundred examples; it knows no facts and copies badly,
so its summary is a garble and the id it cites is seldom its source's.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from streams.contracts import FINAL_JOB_STATUSES
from streams.demo_waits import first_record, wait_searchable, wait_served
from streams.sdk import LiveLearnClient
from streams.settings import StyleSettings, section_env
from trainers.batch.house_style import HOUSE_STYLE, style_records

__all__ = ["StyleAct", "base_lm", "lm_env", "play", "section", "trainer_args"]

#: The tiny base LM (GPT-2): width, layers, heads, pre-training steps; the style benchmark's.
LM_SHAPE = (96, 2, 2, 300)
N_FUNCTIONS = 240  # functions with style examples ...
PHRASINGS = 2  # ... each asked two ways (480 examples)
N_PROBES = 4  # questions about functions no example covers, asked before and after
#: The generator's job config (``trainer --set generator=...``): the recipe of
#: ``python -m bench style --quick``; the device is the default (CUDA in bf16 when present).
GENERATOR_JOB = {"epochs": 10, "batch_size": 8, "max_length": 256, "eval_max": 16,
                 "min_eval_samples": 1, "val_fraction": 0.2, "replay_ratio": 0.0}  # fmt: skip


@dataclass
class StyleAct:
    """What the third act saw: answers before and after, the job, its gate."""

    base: str = ""
    questions: list[str] = field(default_factory=list)
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    examples: int = 0
    update: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    served: bool = False

    def styled(self, answers: list[dict[str, Any]]) -> int:
        """How many of ``answers`` follow the house style."""
        return sum(HOUSE_STYLE.adheres(str(a["answer"])) for a in answers)


def base_lm(cache: Path) -> str:
    """The tiny base LM's folder under ``cache``, pre-trained there on the first call."""
    from trainers.batch.lm import build_tiny_lm

    hidden, layers, heads, steps = LM_SHAPE
    folder = cache / f"tiny-gpt2-{hidden}x{layers}-{steps}"
    return build_tiny_lm(folder, hidden=hidden, layers=layers, heads=heads, pretrain_steps=steps)


def lm_env(lm: str) -> dict[str, str]:
    """The environment that makes ``lm`` the answering model, with the house style as the
    style check and a volume trigger at the act's number of examples (no cooldown: a demo)."""
    style = StyleSettings(
        sections=HOUSE_STYLE.sections, pattern=HOUSE_STYLE.pattern,
        min_chars=HOUSE_STYLE.min_chars, max_chars=HOUSE_STYLE.max_chars,
        volume_threshold=N_FUNCTIONS * PHRASINGS, cooldown_s=0,
    )  # fmt: skip
    return {
        "LIVELEARN_MODELS__GENERATOR": lm,
        "LIVELEARN_MODELS__GENERATOR_MAX_NEW_TOKENS": "64",
        **section_env("style", style),
    }


def trainer_args() -> list[str]:
    """``livelearn trainer`` options for the generator's jobs."""
    return ["--set", "generator=" + orjson.dumps(GENERATOR_JOB).decode()]


def _index(client: LiveLearnClient, web: int, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        client.upsert_doc(doc["doc_id"], doc["text"], title=doc["doc_id"], source="demo-style")
    client.flush()
    wait_searchable(web, docs[-1]["text"], docs[-1]["doc_id"], 120)


def play(
    client: LiveLearnClient, console: Console, act: StyleAct, web: int, metrics_url: str
) -> None:
    """The act on a worker and a trainer that serve ``act.base`` (see :func:`lm_env`)."""
    records = [v for _p, _o, v in style_records(N_FUNCTIONS + N_PROBES, phrasings=PHRASINGS,
                                                 source="demo")]  # fmt: skip
    examples, probes = records[: N_FUNCTIONS * PHRASINGS], records[N_FUNCTIONS * PHRASINGS :]
    act.questions = [p["question"] for p in probes[::PHRASINGS]]
    sources = {r["contexts"][0]["doc_id"]: r["contexts"][0] for r in records}
    with console.status(f"indexing the sources of {len(sources)} functions' questions ..."):
        _index(client, web, list(sources.values()))
        act.before = [client.ask(q, k=1, timeout_s=120) for q in act.questions]
    console.print(
        f"[green]✓[/] the base LM answers {len(act.before)} new questions; "
        f"{act.styled(act.before)} in the house style"
    )
    with console.status(f"{len(examples)} style examples in the house format; "
                        "the volume trigger asks for a LoRA fine-tune ..."):  # fmt: skip
        for v in examples:
            client.produce("style-examples", v)
        client.flush()
        act.examples = len(examples)
        act.update = first_record(
            client, "model-updates",
            lambda u: u.get("model") == "generator" and u["status"] in FINAL_JOB_STATUSES, 600,
        )  # fmt: skip
    update = act.update
    if update is None or update["status"] != "promoted":
        console.print(f"[red]✗[/] the generator job did not promote: {update}; see trainer.log")
        return
    version = update["model_version"]
    from streams.paths import StatePaths
    from trainers.batch.registry import ModelRegistry

    registry = ModelRegistry(StatePaths.of(client.settings).registry)
    act.manifest = dict(registry.get("generator", version).manifest)
    console.print(
        f"[green]✓[/] {update['kind']} job promoted {version} (held out: candidate "
        f"{update.get('metrics')}, serving {update.get('baseline_metrics')})"
    )
    with console.status(f"waiting for the worker to swap {version} in ..."):
        act.served = wait_served(metrics_url, version, 120, source="generator")
        act.after = [client.ask(q, k=1, timeout_s=120) for q in act.questions]
    console.print(
        f"[green]✓[/] asked again: {act.styled(act.after)} of {len(act.after)} answers in the "
        f"house style, by {sorted({a['generator_version'] for a in act.after})}"
    )


def section(act: StyleAct) -> tuple[str, str]:
    """The report's section for the act: (title, HTML)."""
    rows = "".join(
        f"<tr><td>{html.escape(q)}</td>"
        + "".join(
            f"<td><pre>{html.escape(str(a['answer']))}</pre><small>"
            f"{html.escape(str(a.get('generator_version')))}, "
            f"{'house style' if HOUSE_STYLE.adheres(str(a['answer'])) else 'not the style'}"
            "</small></td>"
            for a in pair
        )
        + "</tr>"
        for q, *pair in zip(act.questions, act.before, act.after, strict=False)
    )
    m, u = act.manifest, act.update or {}
    stats, counts = m.get("train_stats", {}), m.get("examples", {})
    e = html.escape
    job = (
        f"<p>{act.examples} style examples streamed; the {e(str(u.get('kind')))} job: "
        f"{e(str(u.get('status')))} {e(str(u.get('model_version', '')))}; "
        f"{counts.get('train', '?')} examples trained on, {counts.get('val', '?')} held out; "
        f"{stats.get('trainable_params', '?')} of {stats.get('total_params', '?')} parameters "
        f"trained (LoRA), {stats.get('seconds', 0):.0f} s on {e(str(stats.get('device')))}. "
        f"The gate on the held-out examples: candidate "
        f"{e(orjson.dumps(m.get('metrics')).decode())}, serving "
        f"{e(orjson.dumps(m.get('baseline_metrics')).decode())}.</p>"
    )
    plain = (
        "<p>The base is a tiny GPT-2 (about half a million parameters) pre-trained for 300 "
        "steps on the shipped docstrings, since no model hub is reachable here. It knows the "
        "prompt's shape and little else: its words are garbled, and the document it names is "
        "seldom the one it was given (copying an id from the prompt takes more model and more "
        "pre-training than the demo's 30 seconds). The fine-tune teaches it the house "
        "<em>form</em> (a <code>Summary:</code> with a citation, then <code>Sources:</code>), "
        "which is all the style check looks at; it cannot teach it facts, and it does not "
        "make it read its source better. The questions below are about functions no style "
        "example covers. A real model (any Hugging Face id or path in "
        "<code>LIVELEARN_MODELS__GENERATOR</code>) goes through the same path.</p>"
    )
    table = (
        "<table><tr><th>question</th><th>before (base)</th><th>after (fine-tuned)</th></tr>"
        f"{rows}</table>"
    )
    return "The answering model learns the house style", plain + job + table
