"""QueryAnswerer and generators: citations, the answers contract, a tiny causal LM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.answering import (
    NO_CONTEXT_ANSWER,
    Answer,
    CausalLMGenerator,
    Context,
    ExtractiveGenerator,
    Generator,
    QueryAnswerer,
    build_prompt,
)
from retrieval.embedding import resolve_model_path
from retrieval.exceptions import InvalidArgumentError, ModelLoadError
from retrieval.store import ChunkRow, VectorStore

CONTEXTS = [
    Context(
        "kafka", 0, 0.91, "Kafka is a distributed log. Brokers store topic partitions on disk."
    ),
    Context("milvus", 2, 0.85, "Milvus is a vector database. It stores embeddings for search."),
    Context("river", 1, 0.60, "River learns from one record at a time."),
]


class KeywordEmbedder:
    """Three-word vocabulary: enough to steer a search deterministically."""

    WORDS = ("kafka", "milvus", "river")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.array(
            [[t.lower().count(w) + 0.01 for w in self.WORDS] for t in texts], dtype=np.float32
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    s = VectorStore(str(tmp_path / "a.db"), dim=3)
    emb = KeywordEmbedder()
    rows = [
        ChunkRow(
            f"{c.doc_id}#{c.chunk}",
            c.doc_id,
            c.chunk,
            c.text,
            emb.encode([c.text])[0],
            source="docs" if c.doc_id != "river" else "blog",
        )
        for c in CONTEXTS
    ]
    s.upsert(rows)
    yield s
    s.close()


def test_extractive_answer_quotes_and_cites() -> None:
    text = ExtractiveGenerator().generate("Where are topic partitions stored?", CONTEXTS)
    first_line, sources = text.split("\n")
    assert first_line.startswith("Brokers store topic partitions on disk. [1]")
    assert sources.startswith("Sources: [1] kafka")


def test_extractive_cites_the_right_context_numbers() -> None:
    text = ExtractiveGenerator(max_sentences=2).generate(
        "Which database stores embeddings, and how does river learn?", CONTEXTS
    )
    assert "stores embeddings for search. [2]" in text
    assert "[3]" in text and text.endswith("[2] milvus, [3] river")


def test_extractive_without_contexts_or_overlap() -> None:
    gen = ExtractiveGenerator()
    assert gen.generate("anything?", []) == NO_CONTEXT_ANSWER
    text = gen.generate("zzz qqq", CONTEXTS)  # no shared word: fall back to the best passage
    assert text.startswith("Kafka is a distributed log. [1]")
    assert isinstance(gen, Generator)
    with pytest.raises(InvalidArgumentError):
        ExtractiveGenerator(max_sentences=0)


def test_answer_record_matches_the_answers_contract() -> None:
    from streams.contracts import validate

    answer = Answer("Kafka keeps the log. [1]", CONTEXTS[:1])
    record = answer.to_record()
    assert record == {
        "answer": "Kafka keeps the log. [1]",
        "contexts": [{"doc_id": "kafka", "chunk": 0, "score": 0.91, "text": CONTEXTS[0].text}],
    }
    validate("answers", dict(record, id="q1", latency_ms=1.5))


def test_query_answerer_searches_filters_and_answers(store: VectorStore) -> None:
    qa = QueryAnswerer(KeywordEmbedder(), store, default_k=2)
    hits = qa.search("tell me about milvus")
    assert [h.doc_id for h in hits][0] == "milvus" and len(hits) == 2
    answer = qa.answer("What does Milvus store?", k=1)
    assert [c.doc_id for c in answer.contexts] == ["milvus"]
    assert "[1]" in answer.answer and "milvus" in answer.answer
    only_blog = qa.answer("milvus", k=3, filter=store.build_filter(source="blog"))
    assert [c.doc_id for c in only_blog.contexts] == ["river"]
    nothing = qa.answer("milvus", filter=store.build_filter(source="none"))
    assert nothing.contexts == [] and nothing.answer == NO_CONTEXT_ANSWER
    with pytest.raises(InvalidArgumentError, match="k must be"):
        qa.search("x", k=0)


def test_prompt_lists_numbered_sources() -> None:
    prompt = build_prompt("Where is the log?", CONTEXTS)
    assert "[1] (kafka) Kafka is a distributed log." in prompt
    assert "[3] (river)" in prompt and prompt.endswith("Question: Where is the log?\nAnswer:")


@pytest.fixture(scope="module")
def tiny_lm() -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tokenizer))
    return GPT2LMHeadModel(config), tokenizer


def test_causal_lm_generator_runs_a_tiny_model(tiny_lm: tuple[Any, Any]) -> None:
    gen = CausalLMGenerator(tiny_lm, max_new_tokens=8, device="cpu")
    text = gen.generate("Where is the log?", CONTEXTS)
    assert isinstance(text, str)
    assert gen.generate("Where is the log?", CONTEXTS) == text  # greedy: deterministic
    # Sources far longer than the 128-token window are cut from the front, not crash.
    long = [Context("big", 0, 0.5, "word " * 2000)]
    assert isinstance(gen.generate("Where is the log?", long), str)
    assert gen.generate("Where?", []) == NO_CONTEXT_ANSWER
    assert isinstance(gen, Generator)


def test_causal_lm_streams_the_answer_it_generates(tiny_lm: tuple[Any, Any]) -> None:
    gen = CausalLMGenerator(tiny_lm, max_new_tokens=8, device="cpu")
    pieces = list(gen.generate_stream("Where is the log?", CONTEXTS))
    assert "".join(pieces).strip() == gen.generate("Where is the log?", CONTEXTS)
    assert list(gen.generate_stream("Where?", [])) == [NO_CONTEXT_ANSWER]


def test_query_answerer_with_causal_lm(store: VectorStore, tiny_lm: tuple[Any, Any]) -> None:
    qa = QueryAnswerer(KeywordEmbedder(), store, CausalLMGenerator(tiny_lm, 4, "cpu"))
    answer = qa.answer("kafka?", k=2)
    assert len(answer.contexts) == 2 and isinstance(answer.answer, str)


def test_causal_lm_missing_model_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="extractive"):
        CausalLMGenerator(str(tmp_path), device="cpu")
