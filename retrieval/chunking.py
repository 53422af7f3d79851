"""Split documents into overlapping, token-bounded chunks that are slices of the original text.

A chunk never ends inside a word: tokens are grouped into *words* (runs of tokens with no gap
between them, so ``"don't."`` is one word) and whole words are packed until the token budget
is reached. Only a single word longer than the budget is cut, at a token boundary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from retrieval.exceptions import InvalidArgumentError

__all__ = ["Chunk", "SpanTokenizer", "TokenChunker", "WordTokenizer", "token_spans"]


@dataclass(frozen=True)
class Chunk:
    """One piece of a document.

    Parameters
    ----------
    doc_id
        Id of the document the chunk belongs to.
    n
        Position of the chunk in the document, from 0.
    text
        The chunk's text, an exact slice of the document's text.
    title
        The document's title, if any; it is embedded with the chunk (see :attr:`embed_text`)
        but is not part of :attr:`text`.

    Examples
    --------
    >>> c = Chunk("guide", 2, "Kafka keeps the log.", title="Guide")
    >>> c.chunk_id
    'guide#2'
    >>> c.embed_text
    'Guide\\nKafka keeps the log.'
    """

    doc_id: str
    n: int
    text: str
    title: str = ""

    @property
    def chunk_id(self) -> str:
        """The id under which the chunk is stored: ``"<doc_id>#<n>"``."""
        return f"{self.doc_id}#{self.n}"

    @property
    def embed_text(self) -> str:
        """What is embedded: the title (when there is one) on its own line, then the text."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@runtime_checkable
class SpanTokenizer(Protocol):
    """A tokenizer that reports each token's ``(start, end)`` character span."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of ``text``, in order."""
        ...


class WordTokenizer:
    """Regex tokenizer: a token is a run of word characters or one punctuation mark.

    A dependency-free stand-in for a Hugging Face tokenizer, used when none is given.

    Examples
    --------
    >>> tok = WordTokenizer()
    >>> text = "Héllo, wörld!"
    >>> [text[s:e] for s, e in tok.token_spans(text)]
    ['Héllo', ',', 'wörld', '!']
    """

    _TOKEN = re.compile(r"\w+|[^\w\s]")

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of ``text``."""
        return [m.span() for m in self._TOKEN.finditer(text)]


def token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """Character spans of the tokens of ``text`` under ``tokenizer``.

    Parameters
    ----------
    tokenizer
        A :class:`SpanTokenizer`, or a *fast* Hugging Face tokenizer (one that returns an
        offset mapping).
    text
        The text to tokenize.

    Returns
    -------
    list of tuple of int
        ``(start, end)`` per token, special tokens excluded.

    Raises
    ------
    InvalidArgumentError
        If the tokenizer cannot report character offsets.

    Examples
    --------
    >>> token_spans(WordTokenizer(), "a bc")
    [(0, 1), (2, 4)]
    """
    if isinstance(tokenizer, SpanTokenizer):
        return tokenizer.token_spans(text)
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidArgumentError(
            f"{type(tokenizer).__name__} cannot report character offsets; pass a fast "
            "Hugging Face tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True)) "
            "or a WordTokenizer"
        )
    # verbose=False: a long document is expected here; it is chunked, not fed to the model.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [(int(s), int(e)) for s, e in enc["offset_mapping"] if e > s]


def _own_copy(tokenizer: Any) -> Any:
    """A private copy of a Hugging Face fast tokenizer (others are returned as they are).

    A fast tokenizer keeps its truncation setting on the shared Rust object: each call sets
    it, then encodes. The embedder calls with ``truncation=True``; a chunker sharing the
    object on another thread (a worker's query path encodes while its indexer chunks) could
    encode between the two steps and get a long document's offsets cut at ``max_length``
    tokens, losing its tail chunks without an error.
    """
    if getattr(tokenizer, "is_fast", False) and hasattr(tokenizer, "backend_tokenizer"):
        import copy

        return copy.deepcopy(tokenizer)
    return tokenizer


def _words(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Group token spans into words: ``(start_char, end_char, n_tokens)``."""
    words: list[tuple[int, int, int]] = []
    for start, end in spans:
        if words and start <= words[-1][1]:  # touches the previous token: same word
            w_start, w_end, count = words[-1]
            words[-1] = (w_start, max(w_end, end), count + 1)
        else:
            words.append((start, end, 1))
    return words


def _split_long_words(
    words: list[tuple[int, int, int]], spans: Sequence[tuple[int, int]], limit: int
) -> list[tuple[int, int, int]]:
    """Cut any word of more than ``limit`` tokens into pieces of at most ``limit`` tokens."""
    if all(count <= limit for _, _, count in words):
        return words
    out: list[tuple[int, int, int]] = []
    i = 0  # index of the word's first token in ``spans``
    for start, end, count in words:
        if count <= limit:
            out.append((start, end, count))
        else:
            for j in range(i, i + count, limit):
                piece = spans[j : min(j + limit, i + count)]
                out.append((piece[0][0], piece[-1][1], len(piece)))
        i += count
    return out


def plan_windows(
    word_tokens: Sequence[int], chunk_tokens: int, overlap_tokens: int
) -> list[tuple[int, int]]:
    """Word windows ``[first, last)`` of at most ``chunk_tokens`` tokens, overlapping.

    Consecutive windows share the longest run of trailing words that holds at most
    ``overlap_tokens`` tokens; every window starts at least one word after the previous one.

    Examples
    --------
    >>> plan_windows([1, 1, 1, 1, 1], chunk_tokens=3, overlap_tokens=1)
    [(0, 3), (2, 5)]
    >>> plan_windows([], 3, 1)
    []
    """
    windows: list[tuple[int, int]] = []
    first, total = 0, len(word_tokens)
    while first < total:
        last, used = first, 0
        while last < total and used + word_tokens[last] <= chunk_tokens:
            used += word_tokens[last]
            last += 1
        last = max(last, first + 1)  # callers split longer words; never loop forever
        windows.append((first, last))
        if last >= total:
            break
        nxt, shared = last, 0
        while nxt - 1 > first and shared + word_tokens[nxt - 1] <= overlap_tokens:
            nxt -= 1
            shared += word_tokens[nxt]
        # Drop overlap that would leave no room for the next new word (a wasted window).
        while nxt < last and shared + word_tokens[last] > chunk_tokens:
            shared -= word_tokens[nxt]
            nxt += 1
        first = nxt
    return windows


class TokenChunker:
    """Token-aware chunker: windows of whole words, ``chunk_tokens`` long, overlapping.

    Parameters
    ----------
    tokenizer
        A fast Hugging Face tokenizer (use the embedder's, so the budget matches the model)
        or any :class:`SpanTokenizer`; ``None`` means :class:`WordTokenizer`.
    chunk_tokens
        Most tokens per chunk (> 0).
    overlap_tokens
        Most tokens shared by consecutive chunks (0 <= overlap < chunk_tokens).

    Examples
    --------
    >>> chunker = TokenChunker(None, chunk_tokens=4, overlap_tokens=1)
    >>> [c.text for c in chunker.chunk("d", "one two three four five six seven")]
    ['one two three four', 'four five six seven']
    >>> [c.chunk_id for c in chunker.chunk("d", "one two three four five six seven")]
    ['d#0', 'd#1']
    >>> chunker.chunk("d", "   ")
    []
    """

    def __init__(
        self, tokenizer: Any = None, chunk_tokens: int = 128, overlap_tokens: int = 32
    ) -> None:
        if chunk_tokens < 1:
            raise InvalidArgumentError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        if not 0 <= overlap_tokens < chunk_tokens:
            raise InvalidArgumentError(
                f"overlap_tokens must be >= 0 and smaller than chunk_tokens ({chunk_tokens}), "
                f"got {overlap_tokens}; lower the overlap or raise the chunk size"
            )
        self.tokenizer = _own_copy(tokenizer) if tokenizer is not None else WordTokenizer()
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def __repr__(self) -> str:
        return (
            f"TokenChunker({type(self.tokenizer).__name__}, chunk_tokens={self.chunk_tokens}, "
            f"overlap_tokens={self.overlap_tokens})"
        )

    def chunk(self, doc_id: str, text: str, title: str | None = None) -> list[Chunk]:
        """Chunks of ``text``, numbered from 0.

        Parameters
        ----------
        doc_id
            The document id; chunk ids are ``"<doc_id>#<n>"``.
        text
            The document text; empty or whitespace-only text gives no chunks.
        title
            Optional title carried on each chunk for embedding; it does not move chunk
            boundaries, so a title change never renumbers chunks.

        Returns
        -------
        list of Chunk
            Chunks whose ``text`` are slices of ``text`` that start and end at word
            boundaries.
        """
        if not text or text.isspace():
            return []
        spans = token_spans(self.tokenizer, text)
        words = _split_long_words(_words(spans), spans, self.chunk_tokens)
        windows = plan_windows([c for _, _, c in words], self.chunk_tokens, self.overlap_tokens)
        return [
            Chunk(doc_id, n, text[words[first][0] : words[last - 1][1]], title or "")
            for n, (first, last) in enumerate(windows)
        ]
