"""A cross-encoder reranker: score (question, chunk) pairs jointly and reorder fused hits.

A bi-encoder (the embedder) compares a question and a chunk through two separate vectors; a
cross-encoder reads both together and is usually a better judge, at the price of one forward
pass per pair. It therefore reorders only the top ``N`` hits of the first-stage search. Any
Hugging Face sequence-classification model works (an id, available offline, or a folder), for
example an MS MARCO cross-encoder: one logit per pair (``num_labels=1``), or the last class
against the others when there are several.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from retrieval.exceptions import InvalidArgumentError, ModelLoadError
from retrieval.hub import torch_device
from retrieval.store import Hit

__all__ = ["CrossEncoderReranker"]


class CrossEncoderReranker:
    """Rescore hits with a cross-encoder and return them best first.

    Parameters
    ----------
    model
        A Hugging Face id or local folder, or a preloaded ``(model, tokenizer)`` pair.
    max_length
        Tokens per (question, chunk) pair; the chunk is truncated first.
    batch_size
        Pairs per forward pass.
    device
        ``None`` picks CUDA when available.

    Attributes
    ----------
    last_seconds
        Wall time of the latest :meth:`rerank` call (the reranker's latency).

    Examples
    --------
    A tiny, untrained BERT built from a config (real use loads a trained model by name):

    >>> import tempfile
    >>> from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    >>> from retrieval.hub import resolve_model_path
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    >>> config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
    ...                     num_attention_heads=2, intermediate_size=32, num_labels=1)
    >>> reranker = CrossEncoderReranker((BertForSequenceClassification(config), tokenizer),
    ...                                 device="cpu")
    >>> hits = [Hit("a#0", "a", 0, "Kafka keeps a log.", 0.9, "", "", {}),
    ...         Hit("b#0", "b", 0, "Milvus stores vectors.", 0.8, "", "", {})]
    >>> ranked = reranker.rerank("What keeps a log?", hits)
    >>> sorted(h.doc_id for h in ranked), ranked[0].score >= ranked[1].score
    (['a', 'b'], True)
    """

    def __init__(
        self,
        model: str | tuple[Any, Any],
        max_length: int = 256,
        batch_size: int = 32,
        device: str | None = None,
    ) -> None:

        if max_length < 8 or batch_size < 1:
            raise InvalidArgumentError(
                f"max_length must be >= 8 and batch_size >= 1, got {max_length}, {batch_size}"
            )
        self.max_length = max_length
        self.batch_size = batch_size
        self._device = torch_device(device)
        if isinstance(model, tuple):
            self._model, self._tokenizer = model
            self.model_name = type(self._model).__name__
        else:
            self.model_name = model
            self._model, self._tokenizer = self._load(model)
        self._model.to(self._device).eval()
        self.last_seconds = 0.0

    @staticmethod
    def _load(model: str) -> tuple[Any, Any]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from retrieval.hub import resolve_model_path

        path = resolve_model_path(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            encoder = AutoModelForSequenceClassification.from_pretrained(path)
        except (OSError, ValueError, ImportError) as exc:
            raise ModelLoadError(
                f"could not load cross-encoder {model!r}: {exc}; pass a local folder or a "
                "Hugging Face id available offline, or set no reranker"
            ) from exc
        return encoder, tokenizer

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.model_name!r}, max_length={self.max_length})"

    def scores(self, question: str, texts: Sequence[str]) -> np.ndarray:
        """One relevance score per text (higher is better)."""
        import torch

        out: list[np.ndarray] = []
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i : i + self.batch_size])
            enc = self._tokenizer(
                [question] * len(batch), batch, truncation="only_second",
                max_length=self.max_length, padding=True, return_tensors="pt",
            )  # fmt: skip
            enc = {k: v.to(self._device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = self._model(**enc).logits.float()
            if logits.shape[-1] == 1:
                score = logits[:, 0]
            else:  # the last class is "relevant": its log-probability
                score = torch.log_softmax(logits, dim=-1)[:, -1]
            out.append(score.cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def rerank(self, question: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        """``hits`` reordered by the cross-encoder (its score replaces theirs); the best ``k``."""
        started = time.perf_counter()
        scores = self.scores(question, [h.text for h in hits])
        order = sorted(range(len(hits)), key=lambda i: (-float(scores[i]), i))
        ranked = [replace(hits[i], score=float(scores[i])) for i in order]
        self.last_seconds = time.perf_counter() - started
        return ranked[:k] if k is not None else ranked
