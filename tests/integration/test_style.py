"""The answering model through real Kafka: feedback to docs, style examples to a LoRA job,
the job's promotion, and the worker's hot swap to the new generator version."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings
from streams.trainer_worker import TrainerWorker
from tests.conftest import make_settings
from tests.integration.helpers import wait_caught_up
from tests.integration.worker import WorkerProcess
from trainers.batch.lm import build_tiny_lm, shipped_text
from trainers.batch.registry import ModelRegistry
from trainers.batch.style import feedback_doc_id

N_EXAMPLES = 12
GENERATOR_JOB = {"epochs": 3, "batch_size": 4, "max_length": 160, "eval_max": 2,
                 "min_eval_samples": 1, "val_fraction": 0.25, "device": "cpu"}  # fmt: skip


@pytest.fixture
def style_settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    from streams.kafka import admin_client
    from streams.topics import ensure_topics, topic_specs

    lm = build_tiny_lm(tmp_path / "lm", hidden=32, layers=1, heads=2, positions=256,
                       vocab_size=400, pretrain_steps=2, seq_len=64, batch_size=2,
                       texts=shipped_text(30))  # fmt: skip
    s = make_settings(tmp_path, kafka_bootstrap, models=ModelSettings(
        generator=lm, generator_max_new_tokens=8, chunk_tokens=64, chunk_overlap=16))  # fmt: skip
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    return s


def _search(worker: WorkerProcess, text: str) -> list[str]:
    return [h["doc_id"] for h in worker.get(f"/search?q={quote(text)}&k=5")["hits"]]


def _wait_update(client: LiveLearnClient, timeout_s: float = 300) -> dict[str, Any]:
    for update in client.subscribe("model-updates", from_beginning=True, timeout_s=timeout_s):
        if update.get("model") == "generator" and update["status"] in (
            "promoted", "rejected", "failed"):  # fmt: skip
            return update
    raise AssertionError("no final model-updates record for the generator job")


def test_feedback_and_style_examples_keep_the_generator_current(
    style_settings: Settings, tmp_path: Path
) -> None:
    s = style_settings
    client = LiveLearnClient(s)
    env = {"LIVELEARN_STYLE__SECTIONS": '["Summary:"]', "LIVELEARN_STYLE__PATTERN": r"\[\d+\]",
           "LIVELEARN_STYLE__VOLUME_THRESHOLD": str(N_EXAMPLES),
           "LIVELEARN_STYLE__COOLDOWN_S": "0"}  # fmt: skip
    client.produce("docs", {"id": "kafka", "op": "upsert",
                            "text": "Kafka keeps an ordered log of records per partition."},
                   wait=True)  # fmt: skip
    worker = WorkerProcess(s, tmp_path / "worker.log", env=env).start()
    trainer = TrainerWorker(s, s.kafka.bootstrap_servers, {"generator": GENERATOR_JOB})
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    try:
        wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs)
        first = client.ask("What does Kafka keep?", timeout_s=120)
        assert first["generator"] == "generator" and first["generator_version"] == "base"

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
        for i in range(N_EXAMPLES):
            client.produce("style-examples", {
                "id": f"s{i}", "question": f"What does item {i} keep?",
                "answer": f"Summary: item {i} keeps an ordered log. [1]",
                "contexts": [f"Item {i} keeps an ordered log."], "ts": 1.7e9 + i})  # fmt: skip
        client.flush()
        update = _wait_update(client)
        assert update["status"] == "promoted", update
        assert update["kind"] == "finetune" and update["data"]["topic"] == s.topics.style_examples
        version = ModelRegistry(s.data_dir / "registry").get("generator", update["model_version"])
        offsets = version.manifest["data"]["offsets"]
        assert sum(hi - lo for lo, hi in offsets.values()) == N_EXAMPLES  # lineage
        assert version.artifact("adapter").is_dir()
        deadline = time.monotonic() + 90
        while True:
            answer = client.ask("What does Kafka keep?", timeout_s=60)
            if answer["generator_version"] == update["model_version"]:
                break
            assert answer["generator_version"] == "base"  # the old one until the swap
            assert time.monotonic() < deadline, "the worker never swapped the generator"
            time.sleep(1)
    finally:
        trainer.stop()
        thread.join(60)
        worker.stop()
