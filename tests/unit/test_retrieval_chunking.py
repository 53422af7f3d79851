"""TokenChunker: chunks are word-aligned slices of the text, bounded and overlapping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.chunking import Chunk, TokenChunker, WordTokenizer, plan_windows, token_spans
from retrieval.embedding import resolve_model_path
from retrieval.exceptions import InvalidArgumentError, RetrievalError

TEXT = (
    "Apache Kafka is a distributed event store and stream-processing platform. It aims to "
    "provide a unified, high-throughput, low-latency platform for handling real-time data "
    "feeds. Kafka can connect to external systems (for data import/export) via Kafka Connect, "
    "and provides the Kafka Streams libraries for stream processing applications. "
) * 6


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))


def _starts(text: str, chunks: list[Chunk]) -> list[int]:
    """Start offset of each chunk, found left to right (chunks are ordered slices)."""
    starts, pos = [], 0
    for c in chunks:
        pos = text.find(c.text, pos)
        assert pos >= 0, f"chunk {c.chunk_id} is not a slice of the text"
        starts.append(pos)
        pos += 1
    return starts


def _assert_word_aligned(text: str, chunks: list[Chunk]) -> None:
    for c, start in zip(chunks, _starts(text, chunks), strict=True):
        end = start + len(c.text)
        assert start == 0 or text[start - 1].isspace(), c
        assert end == len(text) or text[end].isspace(), c
        assert c.text == c.text.strip()


def test_word_tokenizer_overlap_and_ids() -> None:
    chunker = TokenChunker(None, chunk_tokens=5, overlap_tokens=2)
    text = " ".join(f"w{i}" for i in range(12))
    chunks = chunker.chunk("doc", text)
    assert [c.text for c in chunks] == [
        "w0 w1 w2 w3 w4",
        "w3 w4 w5 w6 w7",
        "w6 w7 w8 w9 w10",
        "w9 w10 w11",
    ]
    assert [c.chunk_id for c in chunks] == ["doc#0", "doc#1", "doc#2", "doc#3"]
    assert [c.n for c in chunks] == [0, 1, 2, 3]


def test_no_overlap() -> None:
    chunks = TokenChunker(None, 3, 0).chunk("d", "a b c d e f g")
    assert [c.text for c in chunks] == ["a b c", "d e f", "g"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty_text_gives_no_chunks(text: str) -> None:
    assert TokenChunker(None, 4, 1).chunk("d", text) == []


@pytest.mark.parametrize(("size", "overlap"), [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_invalid_sizes_raise_clear_error(size: int, overlap: int) -> None:
    with pytest.raises(InvalidArgumentError, match="must be"):
        TokenChunker(None, size, overlap)
    with pytest.raises(ValueError):  # also a ValueError, for callers that catch that
        TokenChunker(None, size, overlap)


def test_hf_tokenizer_offsets_bounds_and_overlap(hf_tokenizer: Any) -> None:
    chunker = TokenChunker(hf_tokenizer, chunk_tokens=40, overlap_tokens=10)
    chunks = chunker.chunk("kafka", TEXT)
    assert len(chunks) > 5
    _assert_word_aligned(TEXT, chunks)
    starts = _starts(TEXT, chunks)
    for c, start, nxt in zip(chunks, starts, starts[1:] + [len(TEXT)], strict=True):
        n_tokens = len(hf_tokenizer(c.text, add_special_tokens=False)["input_ids"])
        assert n_tokens <= 40
        end = start + len(c.text)
        if nxt < len(TEXT):
            assert nxt < end, "consecutive chunks overlap"
            shared = TEXT[nxt:end]
            assert len(hf_tokenizer(shared, add_special_tokens=False)["input_ids"]) <= 10
    assert chunks[0].text.startswith("Apache") and TEXT.rstrip().endswith(chunks[-1].text)


def test_unicode_text_is_sliced_exactly(hf_tokenizer: Any) -> None:
    text = "Crème brûlée façade naïve 東京は日本の首都です 😀 emoji ok Ωμέγα. " * 8
    chunks = TokenChunker(hf_tokenizer, 16, 4).chunk("u", text)
    assert len(chunks) > 3
    starts = _starts(text, chunks)
    covered = set()
    for c, start in zip(chunks, starts, strict=True):
        covered.update(range(start, start + len(c.text)))
    # Every non-space character the tokenizer sees is in some chunk.
    seen = {i for s, e in token_spans(hf_tokenizer, text) for i in range(s, e)}
    assert seen <= covered


def test_word_longer_than_budget_is_cut_at_tokens(hf_tokenizer: Any) -> None:
    text = "start " + "x" * 300 + " end"
    chunks = TokenChunker(hf_tokenizer, 20, 5).chunk("long", text)
    assert "".join(c.text for c in chunks if c.text not in ("start", "end")).count("x") >= 300
    for c in chunks:
        assert len(hf_tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 20


def test_shorter_update_keeps_prefix_ids(hf_tokenizer: Any) -> None:
    chunker = TokenChunker(hf_tokenizer, 30, 5)
    long = chunker.chunk("d", TEXT)
    short = chunker.chunk("d", TEXT[: len(TEXT) // 4])
    assert 0 < len(short) < len(long)
    assert [c.chunk_id for c in short] == [c.chunk_id for c in long[: len(short)]]
    assert short[0] == long[0]


def test_title_is_embedded_but_does_not_move_boundaries() -> None:
    chunker = TokenChunker(None, 4, 1)
    plain = chunker.chunk("d", "one two three four five six")
    titled = chunker.chunk("d", "one two three four five six", title="Numbers")
    assert [c.text for c in plain] == [c.text for c in titled]
    assert titled[0].embed_text == "Numbers\none two three four"
    assert plain[0].embed_text == "one two three four"


def test_slow_tokenizer_is_refused() -> None:
    class NoOffsets:
        is_fast = False

    with pytest.raises(RetrievalError, match="fast"):
        TokenChunker(NoOffsets(), 10, 2).chunk("d", "some text")


def test_word_tokenizer_spans() -> None:
    assert WordTokenizer().token_spans("don't stop.") == [(0, 3), (3, 4), (4, 5), (6, 10), (10, 11)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 6), max_size=60),
    st.integers(6, 20),
    st.data(),
)
def test_plan_windows_properties(tokens: list[int], size: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    windows = plan_windows(tokens, size, overlap)
    if not tokens:
        assert windows == []
        return
    assert windows[0][0] == 0 and windows[-1][1] == len(tokens)
    for (a, b), (c, d) in zip(windows, windows[1:], strict=False):
        assert a < c <= b < d  # progress, contiguous coverage
        assert sum(tokens[c:b]) <= overlap
    for a, b in windows:
        assert sum(tokens[a:b]) <= size


def test_chunking_is_not_cut_by_an_embedder_encoding_on_another_thread(
    hf_tokenizer: Any,
) -> None:
    """The embedder tokenizes with ``truncation=True`` (it sets the fast tokenizer's shared
    truncation state); a chunker sharing that tokenizer on another thread then saw a long
    document cut at ``max_length`` tokens: its tail chunks were lost (a worker's query path
    encodes while the indexer chunks). The chunker keeps a tokenizer of its own."""
    import threading

    chunker = TokenChunker(hf_tokenizer, chunk_tokens=64, overlap_tokens=16)
    text = " ".join(f"word{i} is a token-rich line of text." for i in range(120))
    want = [c.text for c in chunker.chunk("d", text)]
    stop = threading.Event()

    def encode_queries() -> None:
        while not stop.is_set():
            hf_tokenizer(["a query"] * 4, truncation=True, max_length=16)

    thread = threading.Thread(target=encode_queries, daemon=True)
    thread.start()
    try:
        got = [[c.text for c in chunker.chunk("d", text)] for _ in range(200)]
    finally:
        stop.set()
        thread.join(10)
    assert all(g == want for g in got), sorted({len(g) for g in got})
