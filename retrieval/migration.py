"""The pure parts of an embedder migration: names, replay progress, the probe set, the decision.

Changing the embedding model (``LIVELEARN_MODELS__EMBEDDING``) rebuilds the chunks in a new
collection, named after the alias and the model (:func:`collection_for`), by replaying the
compacted ``docs`` topic from its beginning; the worker keeps answering from the old
collection meanwhile. Once the replay has caught up, a probe set of known answers
(:class:`ProbeSet`: each sampled document's title, or its first sentence, should find that
document) is searched in both collections, and :func:`decide` refuses the switch when the new
model's recall@5 is worse than the old one's by more than a margin. The Kafka side is in
:mod:`streams.migration_worker`; no Kafka and no Milvus here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MigrationDecision",
    "ProbeSet",
    "ReplayProgress",
    "collection_for",
    "decide",
    "probe_query",
    "recall_at_k",
]

NAME_MAX = 255  # Milvus's limit on a collection name
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def collection_for(alias: str, model: str, dim: int) -> str:
    """The collection the chunks of ``model`` (``dim``-d vectors) live in behind ``alias``.

    Letters, digits and underscores only (Milvus's rule), the model's last path part for the
    reader, and a hash of the whole id so that two paths ending alike stay apart.

    Examples
    --------
    >>> collection_for("livelearn_chunks", "sentence-transformers/all-MiniLM-L6-v2", 384)
    'livelearn_chunks__all_minilm_l6_v2_384_d46f7701'
    >>> collection_for("c", "/tmp/x/tiny", 32) != collection_for("c", "/tmp/y/tiny", 32)
    True
    """
    tail = model.rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", tail).strip("_").lower()[:48] or "model"
    digest = hashlib.sha1(model.encode("utf-8")).hexdigest()[:8]
    name = f"{alias}__{slug}_{dim}_{digest}"
    return name[-NAME_MAX:] if len(name) > NAME_MAX else name


def probe_query(doc: Mapping[str, Any], max_chars: int = 200) -> str | None:
    """The question a probe asks for ``doc``: its title, else its first sentence (None: the
    document has neither).

    >>> probe_query({"id": "a", "title": "Kafka", "text": "A log."})
    'Kafka'
    >>> probe_query({"id": "b", "text": "Milvus stores vectors. It is fast."})
    'Milvus stores vectors.'
    """
    title = str(doc.get("title") or "").strip()
    if title:
        return title[:max_chars]
    text = " ".join(str(doc.get("text") or "").split())
    if not text:
        return None
    return _SENTENCE_END.split(text, maxsplit=1)[0][:max_chars]


class ProbeSet:
    """Known answers sampled from the replayed documents: ``(question, doc id)`` pairs.

    Holds at most ``capacity`` documents (the first ones seen that are still alive: a later
    delete removes a document, an update replaces its question), and hands out an even sample
    of ``size`` of them.

    Examples
    --------
    >>> probes = ProbeSet(size=2, capacity=10)
    >>> for d in [{"id": "a", "op": "upsert", "title": "Kafka"},
    ...           {"id": "b", "op": "upsert", "text": "Milvus stores vectors."},
    ...           {"id": "c", "op": "upsert", "title": "river"},
    ...           {"id": "b", "op": "delete"}]:
    ...     probes.observe(d)
    >>> probes.sample()
    [('Kafka', 'a'), ('river', 'c')]
    """

    def __init__(self, size: int = 50, capacity: int = 2000) -> None:
        self.size = size
        self.capacity = max(capacity, size)
        self._docs: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._docs)

    def observe(self, doc: Mapping[str, Any]) -> None:
        """Take one validated ``docs`` record into account."""
        doc_id = str(doc["id"])
        question = probe_query(doc) if doc.get("op", "upsert") != "delete" else None
        if question is None:
            self._docs.pop(doc_id, None)
        elif doc_id in self._docs or len(self._docs) < self.capacity:
            self._docs[doc_id] = question

    def sample(self) -> list[tuple[str, str]]:
        """Up to ``size`` pairs, spread evenly over the documents held."""
        items = list(self._docs.items())
        if len(items) <= self.size:
            return [(q, d) for d, q in items]
        step = len(items) / self.size
        return [(items[int(i * step)][1], items[int(i * step)][0]) for i in range(self.size)]


def recall_at_k(ranked: Sequence[Sequence[str]], expected: Sequence[str], k: int = 5) -> float:
    """Share of probes whose expected doc id is among the first ``k`` doc ids found.

    >>> recall_at_k([["a", "b"], ["c"], []], ["b", "a", "x"], k=5)
    0.3333333333333333
    >>> recall_at_k([], [])
    0.0
    """
    if len(ranked) != len(expected):
        raise ValueError(f"{len(ranked)} rankings for {len(expected)} probes")
    if not expected:
        return 0.0
    found = sum(1 for ids, want in zip(ranked, expected, strict=True) if want in list(ids)[:k])
    return found / len(expected)


@dataclass(frozen=True)
class MigrationDecision:
    """Whether the new collection may replace the old one, and why.

    >>> decide(0.80, 0.79, margin=0.02).switch
    True
    """

    switch: bool
    old_recall: float
    new_recall: float
    margin: float
    probes: int
    reason: str


def decide(
    old_recall: float, new_recall: float, margin: float, probes: int = 0
) -> MigrationDecision:
    """Switch unless the new model's recall is below the old one's by more than ``margin``.

    A collection with no probe at all (an empty topic) switches: there is nothing to lose.

    >>> decide(0.9, 0.8, margin=0.05).reason
    'recall@5 0.800 is 0.100 below the old 0.900 (allowed: 0.050)'
    >>> decide(0.9, 0.8, margin=0.05).switch, decide(0.9, 0.86, margin=0.05).switch
    (False, True)
    """
    drop = old_recall - new_recall
    if drop > margin + 1e-12:
        reason = (
            f"recall@5 {new_recall:.3f} is {drop:.3f} below the old {old_recall:.3f} "
            f"(allowed: {margin:.3f})"
        )
        return MigrationDecision(False, old_recall, new_recall, margin, probes, reason)
    reason = f"recall@5 {new_recall:.3f}, the old {old_recall:.3f} (allowed drop: {margin:.3f})"
    return MigrationDecision(True, old_recall, new_recall, margin, probes, reason)


@dataclass
class ReplayProgress:
    """How far a replay is, against the end offsets read when it started.

    Attributes
    ----------
    start
        Partition -> first offset of the topic (its low watermark) at the start.
    end
        Partition -> end offset (high watermark) at the start.
    position
        Partition -> next offset to read.

    Examples
    --------
    >>> p = ReplayProgress({0: 0, 1: 10}, {0: 100, 1: 110})
    >>> p.advance(0, 49); p.advance(1, 59); p.fraction, p.caught_up
    (0.5, False)
    >>> p.advance(0, 99); p.advance(1, 109); p.fraction, p.caught_up
    (1.0, True)
    """

    start: dict[int, int]
    end: dict[int, int]
    position: dict[int, int] = field(default_factory=dict)

    def advance(self, partition: int, offset: int) -> None:
        """Record that ``offset`` of ``partition`` has been applied."""
        self.position[partition] = max(self.position.get(partition, 0), offset + 1)

    def _done(self, p: int) -> int:
        pos = max(self.position.get(p, self.start.get(p, 0)), self.start.get(p, 0))
        return min(pos, self.end[p]) - self.start.get(p, 0)

    @property
    def total(self) -> int:
        return sum(self.end[p] - self.start.get(p, 0) for p in self.end)

    @property
    def done(self) -> int:
        return sum(self._done(p) for p in self.end)

    @property
    def fraction(self) -> float:
        """Share of the records present at the start that have been applied (1.0 if none)."""
        return 1.0 if self.total <= 0 else self.done / self.total

    @property
    def caught_up(self) -> bool:
        return self.done >= self.total
