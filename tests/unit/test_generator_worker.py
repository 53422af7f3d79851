"""The worker's generator functions (feedback routing, signals, trigger, swap), no broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.answering import CausalLMGenerator, QueryAnswerer
from retrieval.store import Hit
from streams import contracts
from streams.generator_worker import (
    GeneratorRuntime,
    observe_answers,
    observe_style_examples,
    route_feedback_records,
)
from streams.processing import DecodedRecord, OutRecord, Rejection
from streams.settings import ModelSettings, Settings, StyleSettings
from trainers.batch.style import feedback_doc_id

LABELLED = Path(__file__).resolve().parents[1] / "data" / "feedback_routes.json"


def _settings(tmp_path: Path, generator: str = "extractive", **style: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        models=ModelSettings(generator=generator),
        style=StyleSettings(**style),
    )


def _answers(runtime: GeneratorRuntime) -> dict[str, dict[str, Any]]:
    data = json.loads(LABELLED.read_text())
    for aid, a in data["answers"].items():
        contexts = [{"doc_id": c["doc_id"], "chunk": 0, "score": 0.9, "text": c["text"]}
                    for c in a["contexts"]]  # fmt: skip
        out = OutRecord("answers", aid, {"id": aid, "answer": a["answer"], "contexts": contexts,
                                         "latency_ms": 1.0})  # fmt: skip
        observe_answers(runtime, [out], {aid: a["question"]})
    return data


def test_feedback_becomes_docs_upserts_and_style_examples(tmp_path: Path) -> None:
    runtime = GeneratorRuntime(_settings(tmp_path))
    data = _answers(runtime)
    records = [DecodedRecord(0, i, {k: v for k, v in f.items() if k != "label"})
               for i, f in enumerate(data["feedback"])]  # fmt: skip
    outputs = route_feedback_records(runtime, records)
    docs = [o for o in outputs if o.topic == "docs"]
    styles = [o for o in outputs if o.topic == "style-examples"]
    assert docs and styles and len(outputs) < len(records)  # ratings alone produce nothing
    for o in docs:
        contracts.validate("docs", dict(o.value))
        assert o.key == o.value["id"] and o.value["meta"]["route"] == "knowledge"
    for o in styles:
        contracts.validate("style-examples", dict(o.value))
    again = route_feedback_records(runtime, records)  # a replay: the same keys and values
    assert [(o.key, o.value) for o in again] == [(o.key, o.value) for o in outputs]
    assert {o.key for o in docs} <= {feedback_doc_id(f["id"]) for f in data["feedback"]}


def test_feedback_on_an_unknown_answer_is_dead_lettered_with_its_reason(tmp_path: Path) -> None:
    runtime = GeneratorRuntime(_settings(tmp_path))
    _answers(runtime)
    fact = {"id": "fb-x", "answer_id": "never-given", "preferred_answer": "Redpanda uses Raft."}
    rating = {"id": "fb-y", "answer_id": "never-given", "rating": 1}
    records = [DecodedRecord(2, 7, fact), DecodedRecord(2, 8, rating)]
    out = route_feedback_records(runtime, records)
    assert [type(o) for o in out] == [Rejection, Rejection]
    assert [(o.partition, o.offset) for o in out] == [(2, 7), (2, 8)]
    assert all("'never-given' is not an answer this worker gave" in o.reason for o in out)


def test_answers_name_the_generator_and_weak_retrieval_is_a_knowledge_gap(
    tmp_path: Path,
) -> None:
    runtime = GeneratorRuntime(_settings(tmp_path, gap_min_score=0.5, min_samples=3, window=3))
    outs = [OutRecord("answers", f"q{i}", {"id": f"q{i}", "answer": "x", "contexts": [
        {"doc_id": "d", "chunk": 0, "score": 0.1, "text": "t"}], "latency_ms": 1.0})
        for i in range(3)]  # fmt: skip
    extra = observe_answers(runtime, outs, {})
    assert outs[0].value["generator"] == "extractive"
    assert outs[0].value["generator_version"] == "extractive"
    (alert,) = extra
    assert alert.topic == "drift-alerts" and alert.value["signal"] == "knowledge-gap"
    contracts.validate("drift-alerts", dict(alert.value))


def test_style_examples_trigger_a_finetune_of_the_serving_lm(tmp_path: Path) -> None:
    runtime = GeneratorRuntime(_settings(tmp_path, generator="some/lm", volume_threshold=5))
    records = [DecodedRecord(i % 2, i, {"id": f"s{i}"}) for i in range(5)]
    (job,) = observe_style_examples(runtime, records)
    assert job.topic == "training-jobs"
    value = contracts.validate("training-jobs", dict(job.value))
    assert value["kind"] == "finetune" and value["reason"] == "volume"
    assert value["model"] == "generator" and value["data"]["topic"] == "style-examples"
    assert value["data"]["offsets"] == {"0": [0, 5], "1": [0, 4]}
    assert observe_style_examples(runtime, records) == []  # one in flight


def test_a_style_slump_alerts_and_asks_for_a_job(tmp_path: Path) -> None:
    runtime = GeneratorRuntime(_settings(tmp_path, generator="some/lm", sections=("Summary:",),
                                         window=4, min_samples=4, cooldown_s=0))  # fmt: skip
    observe_style_examples(runtime, [DecodedRecord(0, 0, {"id": "s0"})])
    outs = [OutRecord("answers", f"q{i}", {"id": f"q{i}", "answer": "plain", "contexts": [],
                                            "latency_ms": 1.0}) for i in range(4)]  # fmt: skip
    extra = observe_answers(runtime, outs, {})
    topics = sorted(o.topic for o in extra)
    assert "training-jobs" in topics and "drift-alerts" in topics
    style = next(o for o in extra if o.topic == "drift-alerts" and o.value["signal"] == "style")
    assert style.value["action"] == "finetune"


def test_refresh_swaps_in_the_promoted_version(tmp_path: Path) -> None:
    from trainers.batch.lm import build_tiny_lm, shipped_text
    from trainers.batch.registry import ModelRegistry

    base = build_tiny_lm(tmp_path / "lm", hidden=32, layers=1, heads=2, positions=128,
                         vocab_size=300, pretrain_steps=1, seq_len=32, batch_size=2,
                         texts=shipped_text(10))  # fmt: skip

    class OneDim:
        def encode(self, texts: list[str]) -> Any:
            return np.ones((len(texts), 1), "f4")

    class Fixed:
        def search(self, vector: Any, k: int = 5, filter: Any = None) -> list[Hit]:
            return [Hit("d#0", "d", 0, "Kafka keeps the log.", 0.9, "", "", {})][:k]

    settings = _settings(tmp_path, generator=base)
    answerer = QueryAnswerer(OneDim(), Fixed(), CausalLMGenerator(base, max_new_tokens=4))
    runtime = GeneratorRuntime(settings, answerer)
    assert runtime.version == "base" and runtime.refresh() is None
    registry = ModelRegistry(tmp_path / "registry")
    import shutil

    shutil.copytree(base, tmp_path / "stage" / "model")  # a version holds its model folder
    version = registry.register("generator", tmp_path / "stage", {"job_id": "j1",
                                "kind": "finetune", "artifacts": {"model": "model"}})  # fmt: skip
    registry.promote("generator", version.version)
    old = answerer.generator

    def served() -> dict[str, float]:  # livelearn_serving_model_info of the generator
        from prometheus_client import REGISTRY

        return {s.labels["version"]: s.value for m in REGISTRY.collect()
                if m.name == "livelearn_serving_model_info" for s in m.samples
                if s.labels.get("source") == "generator"}  # fmt: skip

    assert served().get("base") == 1.0
    assert runtime.refresh() == version.version
    assert answerer.generator is not old and runtime.version == version.version
    assert served().get(version.version) == 1.0 and "base" not in served()  # old one gone
    assert runtime.refresh() is None  # already serving
    out = OutRecord("answers", "q", {"id": "q", "answer": "a", "contexts": [], "latency_ms": 1})
    observe_answers(runtime, [out], {})
    assert out.value["generator_version"] == version.version


def test_decoding_settings_reach_every_serving_generator(tmp_path: Path, monkeypatch: Any) -> None:
    import shutil

    from trainers.batch.lm import build_tiny_lm, shipped_text
    from trainers.batch.registry import ModelRegistry

    base = build_tiny_lm(tmp_path / "lm", hidden=32, layers=1, heads=2, positions=128,
                         vocab_size=300, pretrain_steps=1, seq_len=32, batch_size=2,
                         texts=shipped_text(10))  # fmt: skip
    monkeypatch.setenv("LIVELEARN_MODELS__GENERATOR", base)
    monkeypatch.setenv("LIVELEARN_MODELS__GENERATOR_NO_REPEAT_NGRAM_SIZE", "0")
    monkeypatch.setenv("LIVELEARN_MODELS__GENERATOR_MAX_NEW_TOKENS", "5")
    monkeypatch.setenv("LIVELEARN_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.models.generator_no_repeat_ngram_size == 0
    monkeypatch.delenv("LIVELEARN_MODELS__GENERATOR_NO_REPEAT_NGRAM_SIZE")
    assert Settings().models.generator_no_repeat_ngram_size == 4  # the default

    class Nothing:
        def encode(self, texts: list[str]) -> Any:
            return np.ones((len(texts), 1), "f4")

        def search(self, vector: Any, k: int = 5, filter: Any = None) -> list[Hit]:
            return []

    # the configured base, as the worker's services build it (constructor defaults)
    answerer = QueryAnswerer(Nothing(), Nothing(), CausalLMGenerator(base, device="cpu"))
    runtime = GeneratorRuntime(settings, answerer)
    assert answerer.generator.no_repeat_ngram_size == 0
    assert answerer.generator.max_new_tokens == 5
    registry = ModelRegistry(tmp_path / "registry")
    shutil.copytree(base, tmp_path / "stage" / "model")
    version = registry.register("generator", tmp_path / "stage", {"job_id": "j1",
                                "kind": "finetune", "artifacts": {"model": "model"}})  # fmt: skip
    registry.promote("generator", version.version)
    assert runtime.refresh(tmp_path / "registry") == version.version
    swapped = answerer.generator
    assert swapped.version == version.version
    assert (swapped.no_repeat_ngram_size, swapped.max_new_tokens) == (0, 5)
