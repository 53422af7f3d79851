"""The answering model through real Kafka: feedback to docs, style examples to a LoRA job,
the job's promotion, the worker's hot swap to the new generator version, and answers that
follow the house style after it when they did not before."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from streams.contracts import FINAL_JOB_STATUSES
from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings, StyleSettings
from streams.trainer_worker import TrainerWorker
from tests.conftest import make_settings
from tests.integration.helpers import wait_caught_up
from tests.integration.worker import WorkerProcess
from trainers.batch.house_style import HOUSE_STYLE, style_records
from trainers.batch.registry import ModelRegistry
from trainers.batch.style import feedback_doc_id

# The benchmark's house format (``python -m bench style``): "Summary: <the source's first
# words>. [1]" then "Sources: [1] <doc id>", for questions about standard-library functions
# whose docstring is the one source. The tiny base (96x2, 300 steps on the shipped docstrings,
# ~30 s on 2 cores) answers in the extractive form it was pre-trained on, never in this one.
N_EXAMPLES = 80
PROBES = (0, 1, 2, 3)  # style examples whose questions are asked before and after the job
GENERATOR_JOB = {"epochs": 20, "batch_size": 8, "max_length": 256, "eval_max": 4,
                 "min_eval_samples": 1, "val_fraction": 0.2, "device": "cpu",
                 "replay_ratio": 0.0}  # fmt: skip
STYLE = StyleSettings(sections=HOUSE_STYLE.sections, pattern=HOUSE_STYLE.pattern,
                      min_chars=HOUSE_STYLE.min_chars, max_chars=HOUSE_STYLE.max_chars,
                      volume_threshold=N_EXAMPLES, cooldown_s=0)  # fmt: skip


@pytest.fixture
def style_settings(tmp_path: Path, kafka_bootstrap: str, answering_lm_cache: Path) -> Settings:
    from streams.demo_style import base_lm
    from streams.kafka import admin_client
    from streams.topics import ensure_topics, topic_specs

    lm = base_lm(answering_lm_cache)  # 96x2, 300 pre-training steps: the demo's base
    s = make_settings(tmp_path, kafka_bootstrap, style=STYLE, models=ModelSettings(
        generator=lm, generator_max_new_tokens=64, chunk_tokens=160, chunk_overlap=16))  # fmt: skip
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    return s


def _search(worker: WorkerProcess, text: str) -> list[str]:
    return [h["doc_id"] for h in worker.get(f"/search?q={quote(text)}&k=5")["hits"]]


def _wait_update(client: LiveLearnClient, timeout_s: float = 300) -> dict[str, Any]:
    for update in client.subscribe("model-updates", from_beginning=True, timeout_s=timeout_s):
        if update.get("model") == "generator" and update["status"] in FINAL_JOB_STATUSES:
            return update
    raise AssertionError("no final model-updates record for the generator job")


def _probe(client: LiveLearnClient, questions: list[str]) -> list[dict[str, Any]]:
    return [client.ask(q, k=1, timeout_s=120) for q in questions]


def test_feedback_and_style_examples_keep_the_generator_current(
    style_settings: Settings, tmp_path: Path
) -> None:
    s = style_settings
    client = LiveLearnClient(s)
    examples = [v for _p, _o, v in style_records(N_EXAMPLES)]
    for v in examples:  # each example's source is a document the worker indexes
        ctx = v["contexts"][0]
        client.produce("docs", {"id": ctx["doc_id"], "op": "upsert", "text": ctx["text"],
                                "title": ctx["doc_id"]})  # fmt: skip
    client.produce("docs", {"id": "kafka", "op": "upsert",
                            "text": "Kafka keeps an ordered log of records per partition."},
                   wait=True)  # fmt: skip
    worker = WorkerProcess(s, tmp_path / "worker.log").start()  # settings_env: the style too
    trainer = TrainerWorker(s, s.kafka.bootstrap_servers, {"generator": GENERATOR_JOB})
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    questions = [examples[i]["question"] for i in PROBES]
    try:
        wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs)
        first = client.ask("What does Kafka keep?", timeout_s=120)
        assert first["generator"] == "generator" and first["generator_version"] == "base"
        before = _probe(client, questions)
        assert [a["generator_version"] for a in before] == ["base"] * len(PROBES)
        assert not any(HOUSE_STYLE.adheres(a["answer"]) for a in before), before

        # Knowledge: facts no context of that answer supports -> a docs upsert -> searchable.
        fact = "Redpanda 24.2 replaces ZooKeeper with Raft quorum controllers entirely."
        client.produce("feedback", {"id": "fb-1", "answer_id": first["id"],
                                    "preferred_answer": fact}, wait=True)  # fmt: skip
        doc_id = feedback_doc_id("fb-1")
        deadline = time.monotonic() + 60
        while doc_id not in _search(worker, fact):
            assert time.monotonic() < deadline, "feedback never reached the index"
            time.sleep(0.5)

        # Style examples -> the volume trigger -> a LoRA job -> promoted -> swapped in.
        for v in examples:
            client.produce("style-examples", v)
        client.flush()
        update = _wait_update(client)
        assert update["status"] == "promoted", update
        assert update["kind"] == "finetune" and update["data"]["topic"] == s.topics.style_examples
        version = ModelRegistry(s.data_dir / "registry").get("generator", update["model_version"])
        offsets = version.manifest["data"]["offsets"]
        assert sum(hi - lo for lo, hi in offsets.values()) == N_EXAMPLES  # lineage
        assert version.artifact("adapter").is_dir()
        assert version.manifest["metrics"]["adherence"] > 0.5  # the gate's own held-out score
        deadline = time.monotonic() + 90
        while True:
            answer = client.ask("What does Kafka keep?", timeout_s=60)
            if answer["generator_version"] == update["model_version"]:
                break
            assert answer["generator_version"] == "base"  # the old one until the swap
            assert time.monotonic() < deadline, "the worker never swapped the generator"
            time.sleep(1)

        # The next answers are the new version's, and they follow the house style.
        after = _probe(client, questions)
        assert {a["generator_version"] for a in after} == {update["model_version"]}
        styled = [a["answer"] for a in after if HOUSE_STYLE.adheres(a["answer"])]
        assert len(styled) >= len(PROBES) - 1, [a["answer"] for a in after]
    finally:
        trainer.stop()
        thread.join(60)
        worker.stop()
