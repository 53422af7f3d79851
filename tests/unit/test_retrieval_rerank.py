"""The cross-encoder reranker with a tiny BERT built from a config (no model hub here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.answering import QueryAnswerer
from retrieval.embedding import resolve_model_path
from retrieval.exceptions import ModelLoadError
from retrieval.rerank import CrossEncoderReranker
from retrieval.store import ChunkRow, Hit, VectorStore


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer BERT cross-encoder saved as a model folder, loaded back by path like any id."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=1,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-cross-encoder")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _hits(n: int) -> list[Hit]:
    return [Hit(f"d{i}#0", f"d{i}", 0, f"text number {i} " * (i + 1), 1.0 - i / n, "", "", {})
            for i in range(n)]  # fmt: skip


def test_rerank_orders_by_the_models_own_scores(tiny_path: Path) -> None:
    reranker = CrossEncoderReranker(str(tiny_path), device="cpu", batch_size=3)
    hits = _hits(7)
    scores = reranker.scores("which text?", [h.text for h in hits])
    assert scores.shape == (7,) and np.isfinite(scores).all()
    ranked = reranker.rerank("which text?", hits)
    assert [h.chunk_id for h in ranked] == [hits[i].chunk_id for i in np.argsort(-scores)]
    assert [h.score for h in ranked] == pytest.approx(sorted(scores.tolist(), reverse=True))
    assert reranker.rerank("which text?", hits, k=2) == ranked[:2]
    assert reranker.last_seconds > 0
    assert reranker.rerank("which text?", hits) == ranked  # deterministic (eval mode)


def test_a_two_class_model_scores_the_last_class(tiny_path: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    config = BertConfig.from_pretrained(tiny_path, num_labels=2)
    reranker = CrossEncoderReranker(
        (BertForSequenceClassification(config), tokenizer), device="cpu"
    )
    scores = reranker.scores("q", ["a", "b"])
    assert scores.shape == (2,) and (scores <= 0).all()  # log-probabilities


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not load cross-encoder"):
        CrossEncoderReranker(str(tmp_path / "nowhere"), device="cpu")


class Letters:
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.array([[t.count("a") + 1, t.count("e") + 1] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class Reverse:
    """A reranker that puts the first-stage order upside down: easy to see in the output."""

    def __init__(self) -> None:
        self.seen = 0

    def rerank(self, question: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        self.seen = len(hits)
        return list(reversed(hits))[:k]


def test_answerer_reranks_the_top_n_and_reports_latency(tmp_path: Path, tiny_path: Path) -> None:
    emb = Letters()
    texts = [f"doc {i} " + "a" * i + "e" * (30 - i) for i in range(30)]
    with VectorStore(str(tmp_path / "r.db"), dim=2, bm25=True) as store:
        store.upsert([ChunkRow(f"d{i}#0", f"d{i}", 0, t, emb.encode([t])[0])
                      for i, t in enumerate(texts)])  # fmt: skip
        plain = QueryAnswerer(emb, store, mode="hybrid")
        first = plain.search("aaaa doc", k=3)
        fake = Reverse()
        qa = QueryAnswerer(emb, store, mode="hybrid", reranker=fake, rerank_top_n=10)
        reranked = qa.search("aaaa doc", k=3)
        assert fake.seen == 10 and len(reranked) == 3
        top10 = plain.search("aaaa doc", k=10)
        assert [h.chunk_id for h in reranked] == [h.chunk_id for h in reversed(top10)][:3]
        assert [h.chunk_id for h in qa.search("aaaa doc", k=3, rerank=False)] == [
            h.chunk_id for h in first
        ]
        real: Any = QueryAnswerer(
            emb, store, reranker=CrossEncoderReranker(str(tiny_path), device="cpu")
        )
        hits = real.search("aaaa doc", k=5)
        assert len(hits) == 5 and real.timings.rerank_s > 0 and real.timings.retrieve_s > 0
        assert real.answer("aaaa doc", k=5).contexts[0].doc_id == hits[0].doc_id
