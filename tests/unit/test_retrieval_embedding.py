"""TextEmbedder on the offline all-MiniLM-L6-v2: shape, unit norm, order, meaning."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from retrieval.embedding import (
    DEFAULT_EMBEDDING_MODEL,
    TextEmbedder,
    length_batches,
    resolve_model_path,
)
from retrieval.exceptions import InvalidArgumentError, ModelLoadError

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue grew by ten percent.",
    "Kafka stores records in partitioned, replicated logs that consumers read at their own "
    "pace, and a consumer group spreads the partitions of a topic over its members.",
    "",
    "Ωμέγα 東京 😀",
]


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(device="cpu", batch_size=4, dtype="float32")


def test_shape_dtype_and_unit_norm(embedder: TextEmbedder) -> None:
    vectors = embedder.encode(SENTENCES)
    assert embedder.dim == 384
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.device == "cpu"


def test_order_is_preserved_across_length_sorted_batches(embedder: TextEmbedder) -> None:
    together = embedder.encode(SENTENCES)
    one_by_one = np.vstack([embedder.encode([s]) for s in SENTENCES])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_similar_sentences_are_closer(embedder: TextEmbedder) -> None:
    cat, kitten, revenue = embedder.encode(SENTENCES[:3])
    assert float(cat @ kitten) > float(cat @ revenue) + 0.2


def test_matches_sentence_transformers(embedder: TextEmbedder) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(resolve_model_path(DEFAULT_EMBEDDING_MODEL), device="cpu")
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(embedder.encode(SENTENCES), expected, atol=1e-5)


def test_empty_batch_and_bare_string(embedder: TextEmbedder) -> None:
    assert embedder.encode([]).shape == (0, 384)
    with pytest.raises(InvalidArgumentError, match="sequence of texts"):
        embedder.encode("not a list")


def test_tokenizer_is_fast(embedder: TextEmbedder) -> None:
    assert embedder.tokenizer.is_fast


def test_resolve_model_path(tmp_path: Path) -> None:
    offline = resolve_model_path(DEFAULT_EMBEDDING_MODEL)
    assert os.path.isfile(os.path.join(offline, "config.json"))
    assert resolve_model_path("all-MiniLM-L6-v2") == offline
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("someone/some-model") == "someone/some-model"


def test_unknown_model_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not load model"):
        TextEmbedder(str(tmp_path))  # an empty folder: no config.json


def test_invalid_batch_size() -> None:
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        TextEmbedder(batch_size=0)


def test_length_batches_cover_every_index_once() -> None:
    batches = length_batches([4, 1, 9, 9, 2], batch_size=2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [2, 3]


def test_bfloat16_vectors_stay_close_to_float32(embedder: TextEmbedder) -> None:
    # What "auto" picks on a CPU with native bfloat16 (and on CUDA): the index and the queries
    # run in it together, so only the vectors' agreement with float32's matters.
    half = TextEmbedder(device="cpu", batch_size=4, dtype="bfloat16")
    assert half.dtype == "bfloat16" and "bfloat16" in repr(half)
    full, low = embedder.encode(SENTENCES), half.encode(SENTENCES)
    assert low.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-4)
    assert float(np.min(np.sum(full * low, axis=1))) > 0.999


def test_between_runs_between_forward_passes(embedder: TextEmbedder) -> None:
    calls: list[int] = []
    embedder.encode(SENTENCES, between=lambda: calls.append(1))  # 6 texts, passes of 4
    assert len(calls) == 1
    embedder.encode(SENTENCES[:3], between=lambda: calls.append(1))  # one pass: none
    assert len(calls) == 1


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="dtype must be one of"):
        TextEmbedder(dtype="int4")
