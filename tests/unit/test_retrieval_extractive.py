"""The extractive answer: best-ranked contexts only, in rank order, prose only, bounded."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.answering import Context as Ctx
from retrieval.answering import ExtractiveGenerator, prose_passages
from retrieval.exceptions import InvalidArgumentError

QUESTION = "How do I sort an array of numbers in place?"

NUMPY_LIKE = """Sort an array in place, smallest numbers first.

Parameters
----------
a : array_like
    Array to be sorted in place, the numbers are compared.
kind : {'quicksort', 'mergesort'}, optional
    Sorting algorithm.

- sort numbers in place quickly
- another list item about sorting arrays

>>> a = np.array([3, 1, 2]); a.sort(); a  # sort numbers in place
array([1, 2, 3])
"""


def _contexts(k: int) -> list[Ctx]:
    good = [
        Ctx("numpy.sort", 0, 0.9, NUMPY_LIKE),
        Ctx("numpy.argsort", 0, 0.8, "Indices that would sort an array, not in place."),
        Ctx("numpy.lexsort", 0, 0.7, "Sort by several keys."),
    ]
    # Low-ranked contexts that share even more words with the question: they must not be quoted.
    noise = [
        Ctx(f"noise{i}", 0, 0.5 - i / 1000,
            "How do I sort an array of numbers in place? Sort an array of numbers in place.")
        for i in range(k - len(good))
    ]  # fmt: skip
    return good + noise


def _quotes(answer: str) -> list[tuple[str, int]]:
    body = answer.split("\nSources: ")[0]
    return [(q.strip(), int(n)) for q, n in re.findall(r"(.+?) \[(\d+)\]", body)]


def test_k50_is_as_clean_as_k5() -> None:
    gen = ExtractiveGenerator()
    at5 = gen.generate(QUESTION, _contexts(5))
    at50 = gen.generate(QUESTION, _contexts(50))
    assert at5 == at50
    cited = [n for _, n in _quotes(at50)]
    assert cited == sorted(cited) and max(cited) <= gen.max_contexts  # rank order, top only
    assert at50.startswith("Sort an array in place, smallest numbers first. [1]")
    assert "noise" not in at50


def test_no_list_lines_code_or_headings_are_quoted() -> None:
    answer = ExtractiveGenerator(max_sentences=5).generate(QUESTION, _contexts(3))
    for bad in (">>>", "----", "- sort", "array_like", "kind :", "{'quicksort'"):
        assert bad not in answer, bad


def test_only_lists_and_code_say_so_and_name_the_sources() -> None:
    only_code = [Ctx("x", 0, 0.9, ">>> sort(a)\n>>> a\n[1, 2]"), Ctx("y", 0, 0.8, "- a\n- b")]
    assert ExtractiveGenerator().generate(QUESTION, only_code) == (
        "The best-ranked sources hold no running text to quote.\nSources: [1] x, [2] y"
    )
    assert ExtractiveGenerator().generate(QUESTION, []) == (
        "No indexed document matches the question."
    )


def test_a_chunk_without_running_text_is_passed_over() -> None:
    """A parameter list ranked first does not hide the prose ranked after it (within the
    first ``max_scanned``), and the answer is the same at any k beyond that."""
    params = Ctx("svd", 4, 0.95, "Returns\n-------\nU : { (..., M, M) } array\n    Unitary.")
    prose = Ctx("svd", 0, 0.9, "Singular Value Decomposition of a matrix into unitary factors.")
    gen = ExtractiveGenerator()
    at5 = gen.generate("unitary factors of a matrix", [params, prose, *_contexts(3)])
    at50 = gen.generate("unitary factors of a matrix", [params, prose, *_contexts(48)])
    assert at5 == at50
    assert at5.startswith("Singular Value Decomposition of a matrix into unitary factors. [2]")
    assert "-------" not in at5 and "(..., M, M)" not in at5
    with pytest.raises(InvalidArgumentError):
        ExtractiveGenerator(max_contexts=3, max_scanned=2)


def test_prose_passages_joins_wrapped_lines() -> None:
    text = "Return the cumulative sum of the\nelements along an axis.\n\nNotes\n-----\nx"
    assert prose_passages(text) == ["Return the cumulative sum of the elements along an axis."]


words = st.text(alphabet="abcdefghij", min_size=1, max_size=14)
sentences = st.lists(words, min_size=3, max_size=60).map(lambda ws: " ".join(ws) + ".")


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.lists(sentences, min_size=1, max_size=6).map(" ".join), min_size=1,
                   max_size=60),
    question=st.lists(words, min_size=1, max_size=8).map(" ".join),
)  # fmt: skip
def test_answers_are_bounded_and_never_cut_mid_word(texts: list[str], question: str) -> None:
    gen = ExtractiveGenerator(max_chars=120, max_answer_chars=300)
    contexts = [Ctx(f"d{i}", 0, 1.0 - i / 100, t) for i, t in enumerate(texts)]
    answer = gen.generate(question, contexts)
    quotes = _quotes(answer)
    assert quotes and sum(len(q) for q, _ in quotes) <= gen.max_answer_chars
    vocabulary = {w for t in texts for w in re.findall(r"\w+", t)}
    for quote, n in quotes:
        assert 1 <= n <= gen.max_contexts
        for word in re.findall(r"\w+", quote):
            assert word in vocabulary, (word, quote)  # a cut word would be a new "word"
        assert quote.endswith((".", "...")), quote
