"""Generator jobs on a tiny causal LM built from a config (no model hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from retrieval.answering import Context
from trainers.batch.generator import load_generator, run_generator_job
from trainers.batch.lm import (
    IGNORE,
    GeneratorConfig,
    build_tiny_lm,
    encode_examples,
    examples_from_style_records,
    load_lm,
    shipped_text,
)
from trainers.batch.loop import pick_device
from trainers.batch.registry import ModelRegistry
from trainers.batch.style import StyleCheck

CHECK = StyleCheck(r"\[\d+\]", ("Summary:",))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("lm") / "tiny"
    return build_tiny_lm(
        folder, hidden=32, layers=1, heads=2, positions=256, vocab_size=400,
        pretrain_steps=2, seq_len=64, batch_size=2, texts=shipped_text(30),
    )  # fmt: skip


def _records(n: int, start: int = 0) -> list[tuple[int, int, dict[str, Any]]]:
    return [
        (0, start + i, {"id": f"s{start + i}", "question": f"What is item {i}?",
                        "answer": f"Summary: item {i} is a thing. [1]",
                        "contexts": [f"Item {i} is a thing."], "ts": float(start + i)})
        for i in range(n)
    ]  # fmt: skip


def _config(base: str, **kw: Any) -> GeneratorConfig:
    return GeneratorConfig.from_dict({
        "base_model": base, "epochs": 1, "batch_size": 4, "max_length": 128,
        "max_new_tokens": 8, "eval_max": 2, "min_eval_samples": 1, "val_fraction": 0.25,
        "device": "cpu", **kw,
    })  # fmt: skip


def _job(job_id: str, kind: str, n: int) -> dict[str, Any]:
    return {"job_id": job_id, "kind": kind, "reason": "volume",
            "data": {"topic": "style-examples", "offsets": {"0": [0, n]}}}  # fmt: skip


def test_loss_sees_the_answer_tokens_only(tiny_lm: str) -> None:
    _model, tok = load_lm(tiny_lm, pick_device("cpu"))
    (item,) = encode_examples(tok, examples_from_style_records(_records(1)), 128, 64)
    answer = [t for t in item.labels if t != IGNORE]
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]).strip() == "Summary: item 0 is a thing. [1]"
    n_prompt = len(item.labels) - item.answer_tokens
    assert item.labels[:n_prompt] == [IGNORE] * n_prompt
    assert "Question: What is item 0?" in tok.decode(item.input_ids[:n_prompt])


def test_the_training_prompt_is_the_serving_prompt_with_its_doc_ids(tiny_lm: str) -> None:
    from retrieval.answering import CausalLMGenerator, build_prompt

    _model, tok = load_lm(tiny_lm, pick_device("cpu"))
    record = {
        "id": "s1",
        "question": "What does json.dumps do?",
        "answer": "Summary: x. [1]",
        "contexts": [{"doc_id": "json.dumps", "text": "Serialize obj."}, "Plain text."],
    }
    (example,) = examples_from_style_records([(0, 0, record)])
    assert [c.doc_id for c in example.context_list()] == ["json.dumps", "example-2"]
    (item,) = encode_examples(tok, [example], 256, 64)
    served = [Context("json.dumps", 0, 0.9, "Serialize obj."),
              Context("example-2", 0, 0.5, "Plain text.")]  # fmt: skip
    prompt = CausalLMGenerator.prompt_ids_for(tok, build_prompt(record["question"], served))
    assert item.input_ids[: len(prompt)] == prompt


def test_a_valid_but_absurd_context_doc_id_keeps_the_example_bounded(tiny_lm: str) -> None:
    """A 50,000-character doc_id (valid by the contract: a string): the example is kept, its
    prompt is cut from the left to max_length, and the question and the answer survive."""
    _model, tok = load_lm(tiny_lm, pick_device("cpu"))
    record = {"id": "s1", "question": "What is item 0?", "answer": "Summary: x. [1]",
              "contexts": [{"doc_id": "d" * 50_000, "text": "Item 0."}]}  # fmt: skip
    from streams import contracts

    contracts.validate("style-examples", record)  # valid by the contract
    (example,) = examples_from_style_records([(0, 0, record)])
    assert [c.text for c in example.context_list()] == ["Item 0."]
    (item,) = encode_examples(tok, [example], 128, 64)
    assert len(item.input_ids) <= 128
    n_prompt = len(item.labels) - item.answer_tokens
    assert "Question: What is item 0?" in tok.decode(item.input_ids[:n_prompt])
    assert tok.decode([t for t in item.labels if t != IGNORE][:-1]).strip() == "Summary: x. [1]"


def test_finetune_registers_an_adapter_with_lineage_and_is_idempotent(
    tiny_lm: str, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    records = _records(12)
    old = _records(4, start=100)
    job = {**_job("g-ft-1", "finetune", 12), "base_version": "base"}  # as the trigger says
    result = run_generator_job(job, records, old, registry, "generator", _config(tiny_lm), CHECK)
    assert result.status in ("promoted", "rejected"), result.error
    version = registry.get("generator", str(result.version))
    assert version.manifest["data"] == job["data"]  # lineage: the style-examples offsets
    assert version.manifest["base_version"] is None  # LoRA on the configured base weights
    assert version.artifact("adapter").joinpath("adapter_config.json").is_file()
    assert version.manifest["examples"] == {"train": 9, "replay": 4, "val": 3}
    for metrics in (result.metrics, result.baseline_metrics or {}):
        assert metrics["perplexity"] > 1 and 0 <= metrics["adherence"] <= 1
    stats = result.train_stats
    assert 0 < stats["trainable_params"] < stats["total_params"]
    again = run_generator_job(job, records, old, registry, "generator", _config(tiny_lm), CHECK)
    assert again.reused and again.version == result.version
    assert len(registry.list("generator")) == 1


def test_retrain_is_a_full_fine_tune_and_serving_names_its_version(
    tiny_lm: str, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    # margin < 0: accept whatever the gate measures, to reach a serving version
    result = run_generator_job(_job("g-rt-1", "retrain", 8), _records(8), [], registry,
                               "generator", _config(tiny_lm, margin=-1e9), CHECK)  # fmt: skip
    assert result.status == "promoted", result.reason
    version = registry.get("generator", str(result.version))
    assert "adapter" not in version.manifest["artifacts"]
    stats = result.train_stats
    assert stats["trainable_params"] == stats["total_params"]
    serving = load_generator(registry, "generator", tiny_lm, max_new_tokens=4, device="cpu")
    assert serving.version == result.version == serving.generator.version
    assert isinstance(serving.generator.generate("What?", [Context("d", 0, 1.0, "x")]), str)
    base = load_generator(ModelRegistry(tmp_path / "empty"), "generator", tiny_lm, 4, "cpu")
    assert base.version == "base"


def test_a_bad_job_fails_cleanly(tiny_lm: str, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    bad = run_generator_job(_job("g-x", "distill", 4), _records(4), [], registry, "generator",
                            _config(tiny_lm), CHECK)  # fmt: skip
    assert bad.status == "failed" and "kind" in (bad.error or "")
    empty = run_generator_job(_job("g-y", "finetune", 0), [], [], registry, "generator",
                              _config(tiny_lm), CHECK)  # fmt: skip
    assert empty.status == "failed" and "no style examples" in (empty.error or "")
    assert registry.list("generator") == []
