"""Answer a question from the indexed chunks: retrieve, then generate with citations.

The generator is pluggable (:class:`Generator`): :class:`ExtractiveGenerator` quotes the
best-matching sentences and needs no model; :class:`CausalLMGenerator` prompts a causal
language model with numbered sources and asks it to cite them.

One module on purpose: the query → contexts → answer path (the prompt, the extractive and
the causal-LM generators, the answerer) reads top to bottom.
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from retrieval.exceptions import InvalidArgumentError, ModelLoadError
from retrieval.hub import torch_device
from retrieval.store import Hit

__all__ = [
    "Answer",
    "CausalLMGenerator",
    "Context",
    "ExtractiveGenerator",
    "Generator",
    "NO_CONTEXT_ANSWER",
    "NO_PROSE_ANSWER",
    "QueryAnswerer",
    "SearchTimings",
    "build_prompt",
    "ngram_bans",
    "prose_passages",
    "split_sentences",
]

NO_CONTEXT_ANSWER = "No indexed document matches the question."
#: The answer when documents were found but their best-ranked passages are all lists, code,
#: headings or tables (the sources line follows it).
NO_PROSE_ANSWER = "The best-ranked sources hold no running text to quote."

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_WORD = re.compile(r"\w+")
# Words too common to say whether a sentence answers a question.
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it its of on or that the "
    "this to was what when where which who why will with you your".split()
)


@dataclass(frozen=True)
class Context:
    """A retrieved chunk given to the generator, as it appears in an ``answers`` record.

    Examples
    --------
    >>> Context("guide", 0, 0.87, "Kafka keeps the log.").chunk
    0
    """

    doc_id: str
    chunk: int
    score: float
    text: str

    @classmethod
    def from_hit(cls, hit: Hit) -> Context:
        """The context for a search hit."""
        return cls(hit.doc_id, hit.n, hit.score, hit.text)


@dataclass(frozen=True)
class Answer:
    """An answer and the contexts it was generated from.

    Examples
    --------
    >>> Answer("Kafka keeps the log. [1]", [Context("guide", 0, 0.9, "...")]).to_record()
    {'answer': 'Kafka keeps the log. [1]',
     'contexts': [{'doc_id': 'guide', 'chunk': 0, 'score': 0.9, 'text': '...'}]}
    """

    answer: str
    contexts: list[Context] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        """The ``answers`` contract fields ``answer`` and ``contexts``."""
        return {"answer": self.answer, "contexts": [asdict(c) for c in self.contexts]}


@runtime_checkable
class Generator(Protocol):
    """Turns a question and numbered contexts (``[1]`` is ``contexts[0]``) into an answer."""

    def generate(self, question: str, contexts: Sequence[Context]) -> str:
        """The answer text, citing contexts as ``[1]``, ``[2]``..."""
        ...


def split_sentences(text: str) -> list[str]:
    """Sentences (or paragraphs) of ``text``, stripped, empty ones dropped.

    Examples
    --------
    >>> split_sentences("One. Two?  Three\\n\\nFour")
    ['One.', 'Two?', 'Three', 'Four']
    """
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _content_words(text: str) -> set[str]:
    """Lower-cased words minus stopwords, plural/3rd-person "s" dropped ("learns" ~ "learn")."""
    words = (w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS)
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words}


_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]\s|\d+[.)]\s|[a-z][.)]\s)")
_UNDERLINE = re.compile(r"^\s*(?:-{3,}|={3,}|~{3,})\s*$")
_CODE_CHARS = frozenset("()[]{}=<>;`|\\$@#^~")


def _is_prose(line: str) -> bool:
    """Whether a line reads as running text: not a list item, code, a heading or a table."""
    stripped = line.strip()
    if not stripped or _LIST_ITEM.match(line) or _UNDERLINE.match(line):
        return False
    if stripped.startswith((">>>", "...", "```", "$ ", "#", "|", ":", ".. ")):
        return False
    if line[:4] == "    " or line[:1] == "\t":  # indented: code, a definition list, a quote
        return False
    symbols = sum(ch in _CODE_CHARS for ch in stripped)
    return symbols <= max(2, len(stripped) // 25)


def prose_passages(text: str) -> list[str]:
    """The paragraphs of ``text`` that are running text, each joined onto one line.

    A paragraph that holds a list item, code, a heading underline or a table is dropped whole,
    so that an answer never quotes half a list or a cut piece of code.

    Examples
    --------
    >>> prose_passages("Sort the items.\\nStable.\\n\\nParameters\\n----------\\n- a\\n- b")
    ['Sort the items. Stable.']
    >>> prose_passages(">>> x = f(1)\\n\\nReturns the sum.")
    ['Returns the sum.']
    """
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.split("\n") if line.strip()]
        if lines and all(_is_prose(line) for line in lines):
            out.append(" ".join(line.strip() for line in lines))
    return out


def _cut_at_word(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` at a word boundary, with an ellipsis.

    >>> _cut_at_word("alpha beta gamma", 13)
    'alpha beta...'
    """
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars - 2)
    return text[: cut if cut > 0 else max_chars - 3].rstrip(" ,;:") + "..."


class ExtractiveGenerator:
    """Quote the sentences of the best-ranked contexts that share most words with the question.

    Only the best-ranked contexts are read, and only their running text
    (:func:`prose_passages`: no list lines, code or headings): the first ``max_contexts`` of
    the first ``max_scanned`` that have any (a chunk that is all parameter list or code is
    passed over, so a high ``k`` reads exactly what a low one does). Sentences are
    scored by the share of the question's content words they contain, ties going to the
    better-ranked context; the chosen ones are quoted in rank order (context, then position),
    each followed by ``[i]``, then the cited sources with their doc ids. The quoted text is at
    most ``max_answer_chars`` long, cut at word boundaries.

    Parameters
    ----------
    max_sentences
        Most sentences quoted.
    max_chars
        Sentences longer than this are cut at a word boundary (with ``...``).
    max_contexts
        Contexts the quotes may come from: the best-ranked ones, however many were retrieved.
    max_scanned
        Contexts looked at for running text (>= ``max_contexts``).
    max_answer_chars
        Bound on the quoted text (citations and the sources line come on top).

    Examples
    --------
    >>> gen = ExtractiveGenerator(max_sentences=1)
    >>> ctx = [Context("kafka", 0, 0.9, "Kafka is a log. Brokers store partitions."),
    ...        Context("milvus", 0, 0.8, "Milvus stores vectors.")]
    >>> print(gen.generate("Where are partitions stored?", ctx))
    Brokers store partitions. [1]
    Sources: [1] kafka
    """

    def __init__(
        self,
        max_sentences: int = 2,
        max_chars: int = 400,
        max_contexts: int = 3,
        max_answer_chars: int = 600,
        max_scanned: int = 5,
    ) -> None:
        if max_sentences < 1:
            raise InvalidArgumentError(f"max_sentences must be >= 1, got {max_sentences}")
        if max_contexts < 1:
            raise InvalidArgumentError(f"max_contexts must be >= 1, got {max_contexts}")
        if max_scanned < max_contexts:
            raise InvalidArgumentError(
                f"max_scanned must be >= max_contexts ({max_contexts}), got {max_scanned}"
            )
        if max_chars < 20 or max_answer_chars < max_chars:
            raise InvalidArgumentError(
                f"need 20 <= max_chars <= max_answer_chars, got {max_chars}, {max_answer_chars}"
            )
        self.max_sentences = max_sentences
        self.max_chars = max_chars
        self.max_contexts = max_contexts
        self.max_answer_chars = max_answer_chars
        self.max_scanned = max_scanned

    def generate(self, question: str, contexts: Sequence[Context]) -> str:
        """The quoted sentences with citations, or a fixed line when there is no context."""
        if not contexts:
            return NO_CONTEXT_ANSWER
        wanted = _content_words(question)
        scored: list[tuple[float, int, int, str]] = []
        read = 0
        for i, ctx in enumerate(contexts[: self.max_scanned]):
            sentences = [s for p in prose_passages(ctx.text) for s in split_sentences(p)]
            for j, sentence in enumerate(sentences):
                overlap = len(wanted & _content_words(sentence)) / max(len(wanted), 1)
                scored.append((-overlap, i, j, sentence))
            read += bool(sentences)
            if read == self.max_contexts:
                break
        if not scored:
            shown = contexts[: self.max_contexts]
            names = ", ".join(f"[{i + 1}] {c.doc_id}" for i, c in enumerate(shown))
            return f"{NO_PROSE_ANSWER}\nSources: {names}"
        scored.sort()
        best = [s for s in scored if s[0] < 0][: self.max_sentences] or scored[:1]
        parts: list[str] = []
        cited: list[int] = []
        room = self.max_answer_chars
        for _, i, _, sentence in sorted(best, key=lambda s: (s[1], s[2])):  # rank order
            if room < 20 and parts:
                break
            quote = _cut_at_word(sentence, min(self.max_chars, max(room, 20)))
            room -= len(quote) + 1
            parts.append(f"{quote} [{i + 1}]")
            if i not in cited:
                cited.append(i)
        sources = ", ".join(f"[{i + 1}] {contexts[i].doc_id}" for i in sorted(cited))
        return " ".join(parts) + f"\nSources: {sources}"


def build_prompt(question: str, contexts: Sequence[Context], max_context_chars: int = 1200) -> str:
    """A prompt listing numbered sources and asking for a cited answer.

    Examples
    --------
    >>> print(build_prompt("What keeps the log?", [Context("kafka", 0, 0.9, "Kafka does.")]))
    Answer the question using only the numbered sources below. Cite the sources you use
    as [1], [2], ... If the sources do not contain the answer, say so.
    <BLANKLINE>
    Sources:
    [1] (kafka) Kafka does.
    <BLANKLINE>
    Question: What keeps the log?
    Answer:
    """
    sources = "\n".join(
        f"[{i + 1}] ({c.doc_id}) {c.text[:max_context_chars].strip()}"
        for i, c in enumerate(contexts)
    )
    return (
        "Answer the question using only the numbered sources below. Cite the sources you use\n"
        "as [1], [2], ... If the sources do not contain the answer, say so.\n\n"
        f"Sources:\n{sources}\n\nQuestion: {question.strip()}\nAnswer:"
    )


def ngram_bans(generated: Sequence[int], n: int) -> set[int]:
    """Tokens that, written next, would repeat an ``n``-gram already in ``generated``.

    What :class:`CausalLMGenerator` bans at each step, over the answer written so far only
    (not the prompt: an answer may quote its sources), so that greedy decoding cannot loop.

    Examples
    --------
    >>> sorted(ngram_bans([5, 6, 7, 5, 6], 3))
    [7]
    >>> ngram_bans([5, 6, 7, 5, 6], 0), ngram_bans([5], 3)
    (set(), set())
    """
    if n < 1 or len(generated) < n - 1:
        return set()
    tail = tuple(generated[len(generated) - n + 1 :]) if n > 1 else ()
    return {
        generated[i + n - 1]
        for i in range(len(generated) - n + 1)
        if tuple(generated[i : i + n - 1]) == tail
    }


def _answer_no_repeat(prompt_len: int, n: int) -> Any:
    """A transformers ``LogitsProcessorList`` applying :func:`ngram_bans` to the tokens
    after the first ``prompt_len`` (empty for ``n < 1``)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class AnswerNoRepeatNGram(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for row in range(input_ids.shape[0]):
                banned = ngram_bans(input_ids[row, prompt_len:].tolist(), n)
                if banned:
                    scores[row, list(banned)] = -torch.inf
            return scores

    return LogitsProcessorList([AnswerNoRepeatNGram()] if n >= 1 else [])


class CausalLMGenerator:
    """Generate a cited answer with a Hugging Face causal language model (greedy decoding).

    Parameters
    ----------
    model
        A Hugging Face id or local folder, or a preloaded ``(model, tokenizer)`` pair.
    max_new_tokens
        Most tokens generated.
    device
        ``None`` picks CUDA when available (the model then runs in bfloat16 where supported,
        else float16).
    version, name
        What ``answers`` records name as the generator and its version (a registry version
        after a fine-tune; ``base`` for the configured weights). ``name`` defaults to the id.
    no_repeat_ngram_size
        No ``n``-gram of tokens twice in one answer (:func:`ngram_bans`; ``0``: off). Greedy
        decoding of a small or freshly tuned model otherwise loops on a heading or a
        citation until ``max_new_tokens``. The prompt is not counted: quoting a source is
        allowed.

    Examples
    --------
    Loading a model takes time, so this is not run as a doctest::

        gen = CausalLMGenerator("Qwen/Qwen2.5-0.5B-Instruct", max_new_tokens=64)
        gen.generate("What keeps the log?", [Context("kafka", 0, 0.9, "Kafka does.")])

    Instruction-tuned models get the prompt through their chat template:

    >>> "Question: What keeps the log?" in build_prompt("What keeps the log?", [])
    True
    """

    def __init__(
        self,
        model: str | tuple[Any, Any],
        max_new_tokens: int = 64,
        device: str | None = None,
        version: str = "base",
        name: str | None = None,
        no_repeat_ngram_size: int = 4,
    ) -> None:

        if max_new_tokens < 1:
            raise InvalidArgumentError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if no_repeat_ngram_size < 0:
            raise InvalidArgumentError(
                f"no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}"
            )
        self.max_new_tokens = max_new_tokens
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self._device = torch_device(device)
        if isinstance(model, tuple):
            self._model, self._tokenizer = model
            self.model_name = type(self._model).__name__
        else:
            self.model_name = model
            self._model, self._tokenizer = self._load(model)
        self._model.to(self._device).eval()
        self.version = version
        if name is not None:
            self.model_name = name

    def _load(self, model: str) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from retrieval.hub import resolve_model_path

        path = resolve_model_path(model)
        dtype = torch.float32
        if self._device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError, ImportError) as exc:
            raise ModelLoadError(
                f"could not load causal LM {model!r}: {exc}; pass a local folder or a Hugging "
                "Face id available offline, or use the 'extractive' generator"
            ) from exc
        return lm, tokenizer

    def __repr__(self) -> str:
        return (
            f"CausalLMGenerator({self.model_name!r}, max_new_tokens={self.max_new_tokens}, "
            f"version={self.version!r})"
        )

    @staticmethod
    def prompt_ids_for(tokenizer: Any, prompt: str) -> list[int]:
        """Token ids of ``prompt`` as the model is asked it (through the chat template of an
        instruction-tuned tokenizer); training on style examples uses the same ids."""
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if not isinstance(ids, list):  # newer transformers return a BatchEncoding
                ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        return list(ids)

    def _input_ids(self, prompt: str) -> Any:
        ids = self.prompt_ids_for(self._tokenizer, prompt)
        # Keep the end (the question and "Answer:") when the sources overflow the window.
        config = self._model.config
        window = int(
            getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 2048)
        )
        room = max(1, window - self.max_new_tokens)
        return ids[-room:]

    def generate(self, question: str, contexts: Sequence[Context]) -> str:
        """The model's answer to ``question`` given the numbered ``contexts``."""
        import torch

        if not contexts:
            return NO_CONTEXT_ANSWER
        ids = self._input_ids(build_prompt(question, contexts))
        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                logits_processor=_answer_no_repeat(len(ids), self.no_repeat_ngram_size),
            )
        text: str = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        return text.strip()

    def generate_stream(self, question: str, contexts: Sequence[Context]) -> Iterator[str]:
        """The answer in pieces as the model generates them (greedy, as :meth:`generate`;
        joined and stripped, the same text). Generation runs on a thread of its own that feeds
        a ``TextIteratorStreamer``; an error there is raised here."""
        import threading

        import torch
        from transformers import TextIteratorStreamer

        if not contexts:
            yield NO_CONTEXT_ANSWER
            return
        ids = self._input_ids(build_prompt(question, contexts))
        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self._model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad,
                        streamer=streamer,
                        logits_processor=_answer_no_repeat(len(ids), self.no_repeat_ngram_size),
                    )  # fmt: skip
            except BaseException as exc:  # handed to the reader, who raises it
                failed.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="lm-stream", daemon=True)
        thread.start()
        started = False
        for piece in streamer:
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece
        thread.join()
        if failed:
            raise failed[0]


@dataclass
class SearchTimings:
    """Where the latest search's time went, in seconds (retrieve: embed + Milvus)."""

    retrieve_s: float = 0.0
    rerank_s: float = 0.0


class QueryAnswerer:
    """Retrieve the chunks that best match a question and generate a cited answer.

    Parameters
    ----------
    embedder
        Anything with ``encode(texts) -> ndarray`` (the one the index was built with).
    store
        The :class:`~retrieval.store.VectorStore` (or anything with its ``search``).
    generator
        A :class:`Generator`; ``None`` means :class:`ExtractiveGenerator`.
    default_k
        Contexts retrieved when the query does not say.
    mode
        Search mode when the query does not say: ``dense``, ``sparse`` or ``hybrid``.
    fusion, dense_weight
        Hybrid fusion (``rrf`` or ``weighted``) and the dense side's weight for ``weighted``.
    reranker
        An optional :class:`~retrieval.rerank.CrossEncoderReranker` (anything with
        ``rerank(question, hits, k)``): it reorders the best ``rerank_top_n`` hits of the
        search, and the best ``k`` of its order are returned.
    rerank_top_n
        Hits the reranker reads (at least ``k``).
    query_cache
        An optional :class:`~retrieval.cache.VectorCache`: a repeated question is not
        embedded again (the cache empties itself when the embedder is swapped).
    result_cache
        An optional :class:`~retrieval.cache.ResultCache`: a question asked again before
        the index changed gets the hits it got (not searched again); it empties itself when
        the store or the embedder is swapped.

    Attributes
    ----------
    timings
        :class:`SearchTimings` of the latest search (one thread searches at a time).

    Examples
    --------
    >>> import numpy as np
    >>> class OneDim:
    ...     def encode(self, texts):
    ...         return np.ones((len(texts), 1), "f4")
    >>> class Fixed:
    ...     def search(self, vector, k=5, filter=None):
    ...         return [Hit("kafka#0", "kafka", 0, "Kafka keeps the log.", 0.9, "", "", {})][:k]
    >>> answer = QueryAnswerer(OneDim(), Fixed()).answer("What keeps the log?")
    >>> answer.answer
    'Kafka keeps the log. [1]\\nSources: [1] kafka'
    >>> answer.contexts
    [Context(doc_id='kafka', chunk=0, score=0.9, text='Kafka keeps the log.')]
    """

    def __init__(
        self,
        embedder: Any,
        store: Any,
        generator: Generator | None = None,
        default_k: int = 5,
        mode: str = "dense",
        fusion: str = "rrf",
        dense_weight: float = 0.5,
        reranker: Any = None,
        rerank_top_n: int = 20,
        query_cache: Any = None,
        result_cache: Any = None,
    ) -> None:
        from retrieval.store import FUSIONS, SEARCH_MODES

        if default_k < 1:
            raise InvalidArgumentError(f"default_k must be >= 1, got {default_k}")
        if mode not in SEARCH_MODES:
            raise InvalidArgumentError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
        if fusion not in FUSIONS:
            raise InvalidArgumentError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if rerank_top_n < 1:
            raise InvalidArgumentError(f"rerank_top_n must be >= 1, got {rerank_top_n}")
        self.embedder = embedder
        self.store = store
        self.generator: Generator = generator if generator is not None else ExtractiveGenerator()
        self.default_k = default_k
        self.mode = mode
        self.fusion = fusion
        self.dense_weight = dense_weight
        self.reranker = reranker
        self.rerank_top_n = rerank_top_n
        self.query_cache = query_cache
        self.result_cache = result_cache
        self.timings = SearchTimings()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def search(
        self,
        question: str,
        k: int | None = None,
        filter: str | None = None,
        mode: str | None = None,
        rerank: bool = True,
    ) -> list[Hit]:
        """The ``k`` (default ``default_k``) best chunks for ``question``, best first.

        ``mode`` overrides the answerer's mode for this query; ``rerank=False`` skips the
        reranker (when there is one).
        """
        k = self.default_k if k is None else int(k)
        if k < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        mode = mode or self.mode
        use_reranker = self.reranker is not None and rerank
        cache = self.result_cache
        key = (question, k, filter or None, mode, use_reranker)
        if cache is not None:
            found = cache.lookup(key, self.store, self.embedder)
            if found is not None:
                self.timings = SearchTimings()
                return found[:k]
            cache.misses += 1
        generation = getattr(self.store, "generation", None)
        wanted = max(k, self.rerank_top_n) if use_reranker else k
        started = time.perf_counter()
        hits = self._retrieve(question, wanted, filter or None, mode)
        retrieved = time.perf_counter()
        if use_reranker and hits:
            hits = self.reranker.rerank(question, hits, k)
        self.timings = SearchTimings(retrieved - started, time.perf_counter() - retrieved)
        if cache is not None:
            cache.store(key, self.store, self.embedder, generation, hits[:k])
        return hits[:k]

    def cached(
        self,
        question: str,
        k: int | None = None,
        filter: str | None = None,
        mode: str | None = None,
        rerank: bool = True,
    ) -> list[Hit] | None:
        """What :meth:`search` with these arguments would return, if the result cache holds
        it for the index as it is now; ``None`` otherwise (nothing is searched). Cheap and
        safe from any thread: the worker answers repeated queries with it on the event loop,
        without queueing them behind the query thread or pausing indexing.

        >>> import numpy as np
        >>> from retrieval.cache import ResultCache
        >>> class OneDim:
        ...     def encode(self, texts):
        ...         return np.ones((len(texts), 1), "f4")
        >>> class Fixed:
        ...     generation = 0
        ...     def search(self, vector, k=5, filter=None):
        ...         return [Hit("kafka#0", "kafka", 0, "Kafka keeps the log.", 0.9, "", "", {})]
        >>> answerer = QueryAnswerer(OneDim(), Fixed(), result_cache=ResultCache())
        >>> answerer.cached("What keeps the log?") is None
        True
        >>> _ = answerer.search("What keeps the log?")
        >>> [h.doc_id for h in answerer.cached("What keeps the log?")]
        ['kafka']
        """
        cache = self.result_cache
        if cache is None:
            return None
        k = self.default_k if k is None else int(k)
        use_reranker = self.reranker is not None and rerank
        key = (question, k, filter or None, mode or self.mode, use_reranker)
        found: list[Hit] | None = cache.lookup(key, self.store, self.embedder)
        return None if found is None else found[:k]

    def search_many(
        self,
        questions: Sequence[str],
        k: int | None = None,
        filter: str | None = None,
        mode: str | None = None,
    ) -> list[list[Hit]]:
        """:meth:`search` for several questions at once (same ``k``, filter and mode): their
        embeddings in one forward pass and one Milvus search per side, so queries that
        arrive together cost little more than one. Falls back to one :meth:`search` per
        question for a store without ``search_many``.

        >>> import numpy as np
        >>> class OneDim:
        ...     def encode(self, texts):
        ...         return np.ones((len(texts), 1), "f4")
        >>> class Fixed:
        ...     def search(self, vector, k=5, filter=None):
        ...         return [Hit("kafka#0", "kafka", 0, "Kafka keeps the log.", 0.9, "", "", {})]
        >>> [[h.doc_id for h in hits] for hits in QueryAnswerer(OneDim(), Fixed()).search_many(
        ...     ["What keeps the log?", "Where?"])]
        [['kafka'], ['kafka']]
        """
        k = self.default_k if k is None else int(k)
        if k < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        mode = mode or self.mode
        store_many = getattr(self.store, "search_many", None)
        if store_many is None or self.reranker is not None or not questions:
            return [self.search(q, k, filter, mode) for q in questions]
        cache = self.result_cache
        if cache is None:
            return self._search_many(store_many, questions, k, filter, mode)
        store, embedder = self.store, self.embedder
        found: dict[str, list[Hit]] = {}
        for q in questions:
            hits = cache.lookup((q, k, filter or None, mode, False), store, embedder)
            if hits is not None:
                found[q] = hits
        missing = list(dict.fromkeys(q for q in questions if q not in found))
        if missing:
            cache.misses += len(missing)
            generation = getattr(store, "generation", None)
            for q, hits in zip(
                missing, self._search_many(store_many, missing, k, filter, mode), strict=True
            ):
                found[q] = hits
                cache.store((q, k, filter or None, mode, False), store, embedder, generation, hits)
        return [list(found[q]) for q in questions]

    def _search_many(
        self,
        store_many: Callable[..., list[list[Hit]]],
        questions: Sequence[str],
        k: int,
        filter: str | None,
        mode: str,
    ) -> list[list[Hit]]:
        from retrieval.store import fuse, hybrid_candidates

        actual = self.store.search_mode(mode)
        limit = hybrid_candidates(k)
        if actual == "sparse":
            found = store_many(None, questions, limit, filter, "sparse")
            return [h[:k] for h in self._rescored(questions, None, found, k)]
        if actual == "dense":
            return [h[:k] for h in store_many(self._vectors(questions), None, k, filter, "dense")]
        sparse = self._pool().submit(store_many, None, questions, limit, filter, "sparse")
        dense = store_many(self._vectors(questions), None, limit, filter, "dense")
        rescored = self._rescored(questions, dense, sparse.result(), limit)
        return [
            fuse(d, s, k, self.fusion, self.dense_weight)
            for d, s in zip(dense, rescored, strict=True)
        ]

    def _rescored(
        self,
        questions: Sequence[str],
        dense: Sequence[Sequence[Hit]] | None,
        sparse: Sequence[Sequence[Hit]],
        limit: int,
    ) -> list[list[Hit]]:
        """The BM25 lists ranked with the store's collection-wide statistics, where it keeps
        them (:meth:`~retrieval.store.VectorStore.rescore_sparse`)."""
        rescore = getattr(self.store, "rescore_sparse", None)
        if rescore is None:
            return [list(hits) for hits in sparse]
        ranked: list[list[Hit]] = rescore(list(questions), dense, sparse, limit)
        return ranked

    def _vectors(self, questions: Sequence[str]) -> list[np.ndarray]:
        embedder = self.embedder
        if self.query_cache is None:
            return list(np.asarray(embedder.encode(list(questions))))
        vectors: list[np.ndarray] = self.query_cache.get_many(
            questions, embedder, lambda texts: np.asarray(embedder.encode(texts))
        )
        return vectors

    def _retrieve(self, question: str, k: int, filter: str | None, mode: str) -> list[Hit]:
        if mode == "dense":  # the plain call: any store with ``search(vector, k, filter)``
            hits: list[Hit] = self.store.search(self._vector(question), k=k, filter=filter)
            return hits
        actual = self.store.search_mode(mode)  # dense when the collection has no BM25
        if actual != "hybrid":
            vector = self._vector(question) if actual == "dense" else None
            hits = self.store.search(vector, k=k, filter=filter, text=question, mode=actual)
            return hits
        # The BM25 side needs no embedding: it runs while the question is embedded (torch
        # releases the GIL), so a hybrid search costs little more than a dense one.
        from retrieval.store import fuse, hybrid_candidates

        limit = hybrid_candidates(k)
        sparse = self._pool().submit(
            self.store.search, None, k=limit, filter=filter, text=question, mode="sparse"
        )
        dense = self.store.search(self._vector(question), k=limit, filter=filter)
        rescored = self._rescored([question], [dense], [sparse.result()], limit)[0]
        return fuse(dense, rescored, k, self.fusion, self.dense_weight)

    def warm(self) -> None:
        """Start the thread the BM25 side of a hybrid search runs on (before the first
        query, rather than at it)."""
        self._pool().submit(lambda: None).result()

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "bm25-search")
        return self._executor

    def _vector(self, question: str) -> np.ndarray:
        embedder = self.embedder
        if self.query_cache is None:
            return np.asarray(embedder.encode([question]))[0]
        vector: np.ndarray = self.query_cache.get(
            question, embedder, lambda text: np.asarray(embedder.encode([text]))[0]
        )
        return vector

    def answer(
        self,
        question: str,
        k: int | None = None,
        filter: str | None = None,
        mode: str | None = None,
    ) -> Answer:
        """Retrieve contexts for ``question`` and generate the answer from them."""
        contexts = [Context.from_hit(h) for h in self.search(question, k, filter, mode)]
        return Answer(self.generator.generate(question, contexts), contexts)
