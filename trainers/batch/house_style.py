"""A house style for answers, and style examples written in it from the shipped docstrings.

The data of ``python -m bench style``, of the demo's third act and of the style integration
test: questions about standard-library functions ("What does json.dumps do?") with the
function's docstring as the one context, answered in a format no one taught the base model::

    Summary: <the docstring's first words>. [1]
    Sources: [1] <doc id>

:data:`HOUSE_STYLE` is the check of that format (two sections in order, a ``[n]`` citation,
20-400 characters); :func:`style_records` writes ``style-examples`` records in it.

Examples
--------
>>> (_p, _o, record), = style_records(1)
>>> record["answer"].splitlines()[1].startswith("Sources: [1] ")
True
>>> HOUSE_STYLE.adheres(record["answer"]), HOUSE_STYLE.adheres("Shutil removes trees.")
(True, False)
"""

from __future__ import annotations

import re
from typing import Any

from retrieval.corpus import stdlib_corpus
from trainers.batch.style import StyleCheck

__all__ = ["HOUSE_STYLE", "QUESTIONS", "house_answer", "style_records"]

HOUSE_STYLE = StyleCheck(
    pattern=r"\[\d+\]", sections=("Summary:", "Sources:"), min_chars=20, max_chars=400
)
#: The phrasings of a question about one function (``--phrasings`` in the benchmark).
QUESTIONS = ("What does {} do?", "Explain {} briefly.", "What is {} for?")


def house_answer(doc: dict[str, Any], words: int = 10) -> str:
    """The house-format answer for a docs record (its docstring's first words, cited).

    >>> print(house_answer({"id": "m.f", "text": "Return the thing. More words."}))
    Summary: Return the thing. [1]
    Sources: [1] m.f
    """
    first = re.split(r"(?<=[.!?])\s", doc["text"].strip(), maxsplit=1)[0]
    summary = " ".join(first.split()[:words]).rstrip(".,;:")
    return f"Summary: {summary}. [1]\nSources: [1] {doc['id']}"


def style_records(
    n: int, context_chars: int = 300, phrasings: int = 1, source: str = "bench"
) -> list[tuple[int, int, dict[str, Any]]]:
    """``style-examples`` records in the house format for the first ``n`` shipped docstrings,
    ``phrasings`` questions each (:data:`QUESTIONS`), as ``(partition, offset, value)``; each
    record's one context is its docstring's first ``context_chars`` characters."""
    docs = stdlib_corpus(n)
    out: list[tuple[int, int, dict[str, Any]]] = []
    for doc in docs:
        for q in QUESTIONS[: max(1, phrasings)]:
            off = len(out)
            value = {
                "id": f"style-{doc['id']}-{off}",
                "question": q.format(doc["id"]),
                "answer": house_answer(doc),
                "contexts": [{"doc_id": doc["id"], "text": doc["text"][:context_chars]}],
                "ts": 1.7e9 + off,
                "source": source,
            }
            out.append((0, off, value))
    return out
