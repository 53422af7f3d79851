"""Style of generated answers, and the choice between RAG and fine-tune for each feedback.

Three pure pieces, no Kafka and no model:

* :class:`StyleCheck`: whether an answer follows the house style (a regular expression that
  must match, section headings that must appear in order, a length range);
* :class:`AdherenceWindow` and :class:`RetrievalWindow`: rolling signals over the answers a
  worker gives: style adherence falling below a threshold (*style*: asks for a fine-tune), and
  the best context's score too low for too many questions (*knowledge gap*: asks for
  documents, not training). Each returns a :class:`StyleSignal` for ``drift-alerts``;
* :func:`route_feedback`: for one ``feedback`` record on an answer already given, *knowledge*
  (the preferred answer brings facts that no retrieved context of that answer supports: a
  ``docs`` upsert, RAG), *style* (same facts, another form: a ``style-examples`` record,
  fine-tune) or *neither* (a rating alone: counted in the generator's quality metric).

>>> check = StyleCheck(sections=("Summary:", "Sources:"), pattern=r"\\[\\d+\\]")
>>> check.adheres("Summary: Kafka keeps the log [1].\\nSources: [1] kafka")
True
>>> check.failures("Kafka keeps the log.")
['missing section Summary:', 'missing section Sources:', 'no match for \\\\[\\\\d+\\\\]']
>>> answer = {"id": "q1", "question": "What keeps the log?", "answer": "Kafka. [1]",
...           "contexts": [{"doc_id": "kafka", "chunk": 0, "score": 0.9,
...                         "text": "Kafka keeps an ordered log of records."}]}
>>> route_feedback({"id": "f1", "answer_id": "q1",
...                 "preferred_answer": "Summary: Kafka keeps an ordered log. [1]"}, answer).route
'style'
>>> route_feedback({"id": "f2", "answer_id": "q1",
...                 "preferred_answer": "Kafka keeps the log; Redpanda 24.2 does too."},
...                answer).route
'knowledge'
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AdherenceWindow",
    "FeedbackRoute",
    "RetrievalWindow",
    "StyleCheck",
    "StyleSignal",
    "feedback_doc_id",
    "route_feedback",
]

Route = Literal["knowledge", "style", "neither"]

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_.'-]*[A-Za-z0-9]|[A-Za-z]|\d+(?:[.,:/-]\d+)*")
_NUMBER = re.compile(r"^\d")
# Words that carry form, not facts: what a restyled answer adds without saying anything new.
_FORM_WORDS = frozenset(
    """
    a about above according after again all also an and answer answers any are as at be
    because been being below both brief briefly but by can could detail details do does done
    each either etc example examples first following for from further given go has have here
    how however i if in indeed into is it its itself just key let like main may me more most
    much must my need no not note notes of on one only or other our out over overall per
    point points put really recommendation recommendations regards say see short should shown
    simply so some source sources state states stated such summary than that the their them
    then there these they this those thus to too two under up us use used uses using very
    via was we well were what when where whether which while who why will with within would
    yes you your conclusion conclusions background answer: context contexts cite cited cites
    please kindly dear team regards best sincerely thanks thank hope helps step steps
    """.split()
)


def _stem(word: str) -> str:
    """A crude stem so that inflections are not new facts ("stores" ~ "stored" ~ "store")."""
    w = word.lower().strip(".'-")
    for suffix in ("ies", "ied", "ing", "ed", "es", "s", "ly"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def _facts(text: str) -> set[str]:
    """Content words (stemmed) and numbers of ``text``: what a statement says, not its form.

    >>> sorted(_facts("Summary: Kafka stores 3 replicas. [1]"))
    ['3', 'kafka', 'replica', 'stor']
    """
    out = set()
    for tok in _TOKEN.findall(re.sub(r"\[\d+\]", " ", text)):
        low = tok.lower()
        if low in _FORM_WORDS or (len(low) < 3 and not _NUMBER.match(low)):
            continue
        out.add(low if _NUMBER.match(low) else _stem(low))
    return out


@dataclass(frozen=True)
class StyleCheck:
    """The house style of answers: a pattern, required sections in order, a length range.

    Parameters
    ----------
    pattern
        A regular expression that must match somewhere in the answer (``""``: none).
    sections
        Headings that must all appear, in this order (e.g. ``("Summary:", "Sources:")``).
    min_chars, max_chars
        Length range of the stripped answer (``max_chars=0``: no upper bound).

    Examples
    --------
    >>> StyleCheck(min_chars=10, max_chars=20).failures("short")
    ['5 characters, fewer than 10']
    >>> StyleCheck(sections=("A:", "B:")).adheres("B: x A: y")
    False
    >>> StyleCheck(sections=("A:", "B:")).score(["A: x B: y", "no"])
    0.5
    """

    pattern: str = ""
    sections: tuple[str, ...] = ()
    min_chars: int = 0
    max_chars: int = 0

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.max_chars < 0:
            raise ValueError("min_chars and max_chars must be >= 0")
        if self.max_chars and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars {self.max_chars} is below min_chars {self.min_chars}")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"style pattern {self.pattern!r} is not a regex: {exc}") from exc

    @property
    def active(self) -> bool:
        """Whether anything is checked at all."""
        return bool(self.pattern or self.sections or self.min_chars or self.max_chars)

    def failures(self, answer: str) -> list[str]:
        """What ``answer`` misses of the style (empty: it adheres)."""
        text = answer.strip()
        out = []
        at = 0
        for heading in self.sections:
            found = text.find(heading, at)
            if found < 0:
                out.append(f"missing section {heading}")
            else:
                at = found + len(heading)
        if self.pattern and re.search(self.pattern, text) is None:
            out.append(f"no match for {self.pattern}")
        if len(text) < self.min_chars:
            out.append(f"{len(text)} characters, fewer than {self.min_chars}")
        if self.max_chars and len(text) > self.max_chars:
            out.append(f"{len(text)} characters, more than {self.max_chars}")
        return out

    def adheres(self, answer: str) -> bool:
        """Whether ``answer`` follows the style."""
        return not self.failures(answer)

    def score(self, answers: Iterable[str]) -> float:
        """Share of ``answers`` that adhere (NaN for none)."""
        marks = [self.adheres(a) for a in answers]
        return sum(marks) / len(marks) if marks else float("nan")


@dataclass(frozen=True)
class StyleSignal:
    """A generator signal for ``drift-alerts``: ``style`` or ``knowledge-gap``."""

    signal: str
    value: float
    threshold: float
    severity: str
    action: str
    window: int
    detail: str

    def to_alert(self, model: str, version: str, ts: float) -> dict[str, Any]:
        """The ``drift-alerts`` contract value."""
        digest = hashlib.sha1(f"{model}|{version}|{self.signal}|{ts}".encode()).hexdigest()
        return {
            "alert_id": f"{self.signal}-{digest[:16]}",
            "ts": ts,
            "model": model,
            "model_version": version,
            "detector": "rolling-window",
            "signal": self.signal,
            "value": self.value,
            "threshold": self.threshold,
            "severity": self.severity,
            "action": self.action,
            "window": {"size": self.window},
            "detail": self.detail,
        }


@dataclass
class _Rolling:
    """A rolling window of 0/1 marks that fires once when its mean crosses a threshold and
    re-arms when it comes back (so one slump is one alert, not one per answer)."""

    size: int
    min_samples: int
    marks: deque[bool] = field(init=False)
    fired: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.size < 1 or self.min_samples < 1:
            raise ValueError("window size and min_samples must be >= 1")
        self.marks = deque(maxlen=self.size)

    def push(self, mark: bool) -> float | None:
        """Add a mark; the window's mean once ``min_samples`` marks are in, else None."""
        self.marks.append(mark)
        if len(self.marks) < self.min_samples:
            return None
        return sum(self.marks) / len(self.marks)


class AdherenceWindow:
    """Rolling style adherence of generated answers; a ``style`` signal when it falls.

    Parameters
    ----------
    check
        The house :class:`StyleCheck`.
    window, min_samples
        Answers in the window, and answers before any signal.
    threshold
        Adherence below this is a signal (action ``finetune``: the weights must learn it).

    Examples
    --------
    >>> w = AdherenceWindow(StyleCheck(sections=("Summary:",)), window=4, min_samples=4,
    ...                     threshold=0.5)
    >>> [w.update(a) for a in ["Summary: x", "y", "z"]]
    [None, None, None]
    >>> sig = w.update("w")
    >>> sig.signal, sig.value, sig.action
    ('style', 0.25, 'finetune')
    >>> w.update("v") is None  # one alert per slump
    True
    """

    def __init__(
        self, check: StyleCheck, window: int = 100, min_samples: int = 20, threshold: float = 0.8
    ) -> None:
        self.check = check
        self.threshold = threshold
        self._rolling = _Rolling(window, min(min_samples, window))

    @property
    def adherence(self) -> float:
        """Adherence over the window (NaN when empty)."""
        marks = self._rolling.marks
        return sum(marks) / len(marks) if marks else float("nan")

    def reset(self) -> None:
        """Forget the window (a new generator version starts its own)."""
        self._rolling = _Rolling(self._rolling.size, self._rolling.min_samples)

    def update(self, answer: str) -> StyleSignal | None:
        """Score one generated answer; a signal the first time the window falls below."""
        if not self.check.active:
            return None
        mean = self._rolling.push(self.check.adheres(answer))
        if mean is None:
            return None
        if mean >= self.threshold:
            self._rolling.fired = False
            return None
        if self._rolling.fired:
            return None
        self._rolling.fired = True
        return StyleSignal(
            "style",
            mean,
            self.threshold,
            "drift",
            "finetune",
            len(self._rolling.marks),
            f"{mean:.0%} of the last {len(self._rolling.marks)} answers follow the house style",
        )


class RetrievalWindow:
    """Share of questions whose best context scores below ``min_score``: a knowledge gap.

    The signal's action is ``none``: more documents are needed, not training.

    Examples
    --------
    >>> w = RetrievalWindow(min_score=0.5, max_share=0.5, window=4, min_samples=4)
    >>> [w.update(s) for s in (0.9, 0.2, 0.1)]
    [None, None, None]
    >>> sig = w.update(None)  # no context at all counts as weak
    >>> sig.signal, sig.value, sig.action
    ('knowledge-gap', 0.75, 'none')
    """

    def __init__(
        self,
        min_score: float = 0.3,
        max_share: float = 0.5,
        window: int = 100,
        min_samples: int = 20,
    ) -> None:
        self.min_score = min_score
        self.max_share = max_share
        self._rolling = _Rolling(window, min(min_samples, window))

    def update(self, best_score: float | None) -> StyleSignal | None:
        """Add one question's best context score (``None``: nothing retrieved)."""
        weak = best_score is None or best_score < self.min_score
        share = self._rolling.push(weak)
        if share is None:
            return None
        if share <= self.max_share:
            self._rolling.fired = False
            return None
        if self._rolling.fired:
            return None
        self._rolling.fired = True
        n = len(self._rolling.marks)
        return StyleSignal(
            "knowledge-gap",
            share,
            self.max_share,
            "warning",
            "none",
            n,
            f"{share:.0%} of the last {n} questions had no context scoring >= "
            f"{self.min_score}: documents are missing",
        )


@dataclass(frozen=True)
class FeedbackRoute:
    """Where one feedback goes, why, and the record it becomes (``None`` for *neither*)."""

    route: Route
    reason: str
    novel: tuple[str, ...] = ()
    topic: str | None = None  # contract of ``record``: "docs" or "style-examples"
    record: dict[str, Any] | None = None


def feedback_doc_id(feedback_id: str) -> str:
    """The ``docs`` id a knowledge feedback is upserted under: one per feedback id, so a
    replayed feedback rewrites the same document with the same text (nothing changes).

    >>> feedback_doc_id("f1") == feedback_doc_id("f1"), feedback_doc_id("f1")[:9]
    (True, 'feedback-')
    """
    return "feedback-" + hashlib.sha1(feedback_id.encode("utf-8")).hexdigest()[:16]


def _context_texts(contexts: Sequence[Any]) -> list[str]:
    return [c if isinstance(c, str) else str(c.get("text", "")) for c in contexts or ()]


def _context_objects(contexts: Sequence[Any]) -> list[Any]:
    """The contexts for a style example: ``{doc_id, text}`` where the document is known (so
    the fine-tune's prompt numbers them as serving does), else the text alone."""
    out: list[Any] = []
    for c in contexts or ():
        if isinstance(c, str) or not c.get("doc_id"):
            out.append(c if isinstance(c, str) else str(c.get("text", "")))
        else:
            out.append({"doc_id": str(c["doc_id"]), "text": str(c.get("text", ""))})
    return out


def route_feedback(
    feedback: Mapping[str, Any],
    answer: Mapping[str, Any] | None,
    max_novel_share: float = 0.2,
    min_novel: int = 2,
) -> FeedbackRoute:
    """Decide knowledge, style or neither for one ``feedback`` record.

    Parameters
    ----------
    feedback
        ``{"id", "answer_id", "rating"?, "preferred_answer"?, "comment"?}``.
    answer
        The ``answers`` record it is about (with ``question`` and ``contexts``), or ``None``
        when it is not known: then nothing supports any fact, and a preferred answer is
        knowledge.
    max_novel_share, min_novel
        A preferred answer is knowledge when more than ``max_novel_share`` of its facts
        (content words and numbers), and at least ``min_novel`` of them, appear neither in
        the answer's contexts, nor in its question, nor in the answer given.

    Returns
    -------
    FeedbackRoute
        With the ``docs`` upsert (knowledge) or ``style-examples`` record (style) to produce.
    """
    fid = str(feedback["id"])
    preferred = str(feedback.get("preferred_answer") or "").strip()
    if not preferred:
        rating = feedback.get("rating")
        why = f"rating {rating} only" if rating is not None else "no preferred answer"
        return FeedbackRoute("neither", f"{why}: counted in the generator's quality metric")
    question = str((answer or {}).get("question") or "")
    contexts = _context_texts((answer or {}).get("contexts") or [])
    supported = _facts(" ".join([question, str((answer or {}).get("answer") or ""), *contexts]))
    facts = _facts(preferred)
    novel = sorted(facts - supported)
    share = len(novel) / len(facts) if facts else 0.0
    meta = {"feedback_id": fid, "answer_id": str(feedback["answer_id"])}
    if len(novel) >= min_novel and share > max_novel_share:
        reason = (
            f"{len(novel)} of {len(facts)} facts of the preferred answer are in no retrieved "
            f"context ({', '.join(novel[:6])}): new knowledge for RAG"
        )
        doc = {
            "id": feedback_doc_id(fid),
            "op": "upsert",
            "text": preferred if not question else f"{question}\n{preferred}",
            "title": question[:200] or f"feedback {fid}"[:200],
            "source": "feedback",
            "meta": meta,
        }
        return FeedbackRoute("knowledge", reason, tuple(novel), "docs", doc)
    reason = (
        f"{len(facts) - len(novel)} of {len(facts)} facts are supported by the answer's "
        "contexts: same facts, another form: a style example for fine-tuning"
    )
    example: dict[str, Any] = {
        "id": f"feedback-{fid}"[:256],
        "question": question or preferred[:200],
        "answer": preferred,
        "contexts": _context_objects((answer or {}).get("contexts") or []),
        "source": "feedback",
    }
    return FeedbackRoute("style", reason, tuple(novel), "style-examples", example)
