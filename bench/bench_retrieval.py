"""Retrieval quality and search latency per mode on a held-out corpus: ``python -m bench retrieval``.

The corpus is :func:`retrieval.corpus.scientific_corpus` (~2,500 docstrings of numpy, SciPy and
scikit-learn, installed with the project from PyPI; nobody here wrote them) and the questions
are :data:`retrieval.corpus.SCIENTIFIC_QUESTIONS` (170, hand-written, one target document
each). Everything runs in-process on a milvus-lite file, through the same
:class:`~retrieval.indexing.ChunkIndexer`, :class:`~retrieval.store.VectorStore` and
:class:`~retrieval.answering.QueryAnswerer` the worker uses::

    python -m bench retrieval                 # full corpus, every question (~5 min on 2 cores)
    python -m bench retrieval --quick         # the questions' documents + 400 others, 60 questions
    python -m bench retrieval --reranker PATH # also hybrid+rerank with that cross-encoder
    python -m bench retrieval --reranker tiny # an untrained tiny BERT: its latency only

For each mode (dense, sparse, hybrid with RRF, hybrid with weights, hybrid+rerank when a
reranker is given) it prints recall@1/5/10 and MRR@10 (a question is found at the rank of the
first chunk of its document) and the idle search p50/p99 (one query at a time, nothing
indexing). Then the update and delete questions: some documents get another document's text
(update: the question about that text must now find the updated document, with the new text),
others are deleted (delete: they must appear in no mode's results, and no chunk of theirs may
remain). Results go to ``bench/results/retrieval.json``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine_info, percentile, write_result

MODES: dict[str, dict[str, Any]] = {
    "dense": {"mode": "dense"},
    "sparse": {"mode": "sparse"},
    "hybrid": {"mode": "hybrid", "fusion": "rrf"},
    "hybrid_weighted": {"mode": "hybrid", "fusion": "weighted"},
}
KS = (1, 5, 10)


def rank_of(target: str, doc_ids: Sequence[str]) -> int | None:
    """1-based rank of ``target`` among the distinct documents of ``doc_ids`` (None: absent).

    >>> rank_of("b", ["a", "a", "b", "c"]), rank_of("z", ["a"])
    (2, None)
    """
    seen: list[str] = []
    for d in doc_ids:
        if d not in seen:
            seen.append(d)
        if d == target:
            return len(seen)
    return None


def quality(ranks: Sequence[int | None]) -> dict[str, float]:
    """recall@1/5/10 and MRR@10 of the ranks (None: not in the top 10).

    >>> quality([1, 3, None, 7])
    {'recall@1': 0.25, 'recall@5': 0.5, 'recall@10': 0.75, 'mrr': 0.3690...}
    """
    n = max(len(ranks), 1)
    out = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in KS}
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None and r <= 10) / n
    return out


def evaluate(
    answerer: Any, questions: dict[str, str], rerank: bool = False, **search: Any
) -> tuple[dict[str, float], list[float], list[dict[str, Any]]]:
    """Quality, per-query latencies (s) and misses of one search configuration."""
    ranks: list[int | None] = []
    latencies: list[float] = []
    misses: list[dict[str, Any]] = []
    saved = (answerer.fusion, answerer.reranker)
    answerer.fusion = search.get("fusion", answerer.fusion)
    reranker = answerer.reranker if rerank else None
    answerer.reranker = reranker
    try:
        for question, target in questions.items():
            started = time.perf_counter()
            hits = answerer.search(question, k=10, mode=search["mode"])
            latencies.append(time.perf_counter() - started)
            rank = rank_of(target, [h.doc_id for h in hits])
            ranks.append(rank)
            if rank is None or rank > 5:
                top = list(dict.fromkeys(h.doc_id for h in hits))[:5]
                misses.append({"question": question, "want": target, "rank": rank, "top5": top})
    finally:
        answerer.fusion, answerer.reranker = saved
    return quality(ranks), latencies, misses


def tiny_reranker() -> Any:
    """An untrained one-layer BERT cross-encoder (for latency only: its order is noise)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from retrieval.embedding import resolve_model_path
    from retrieval.rerank import CrossEncoderReranker

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, num_labels=1,
    )  # fmt: skip
    return CrossEncoderReranker((BertForSequenceClassification(config), tokenizer), device="cpu")


def pick_corpus(quick: bool, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The documents and questions of a run: everything, or (quick) a deterministic subset."""
    from retrieval.corpus import SCIENTIFIC_QUESTIONS, scientific_corpus

    docs = scientific_corpus()
    questions = dict(SCIENTIFIC_QUESTIONS)
    if not quick:
        return docs, questions
    rng = random.Random(seed)
    chosen = dict(rng.sample(sorted(questions.items()), 60))
    targets = set(chosen.values())
    others = [d for d in docs if d["id"] not in set(questions.values())]
    keep = targets | {d["id"] for d in rng.sample(others, 400)}
    return [d for d in docs if d["id"] in keep], chosen


def update_delete_checks(
    answerer: Any,
    indexer: Any,
    docs: list[dict[str, Any]],
    questions: dict[str, str],
    modes: Sequence[str],
    n: int,
    seed: int = 1,
) -> dict[str, Any]:
    """Rewrite ``n`` documents with other documents' text and delete ``n`` more; check both.

    Update: document A (one no question is about) takes the text of B (a question's target),
    and B is deleted, so the question about B's text must now find A, whose stored chunks must
    all be the new text. Delete: ``n`` other targets are deleted: they must appear in no
    mode's top 10 for their own question, and no chunk of theirs may remain.
    """
    rng = random.Random(seed)
    by_id = {d["id"]: d for d in docs}
    targets = sorted(questions.items())
    rng.shuffle(targets)
    updates, deletes = targets[:n], targets[n : 2 * n]
    free = sorted(set(by_id) - set(questions.values()))
    hosts = rng.sample(free, n)
    ops: list[dict[str, Any]] = []
    for (_, b), a in zip(updates, hosts, strict=True):
        ops.append({**by_id[a], "text": by_id[b]["text"]})
        ops.append({"id": b, "op": "delete"})
    ops.extend({"id": d, "op": "delete"} for _, d in deletes)
    indexer.apply(ops)
    store = answerer.store
    update_ok: list[bool] = []
    for (question, b), a in zip(updates, hosts, strict=True):
        new_text = by_id[b]["text"]
        stored = store.get(store.chunk_ids_for_doc(a))
        text_ok = bool(stored) and all(r["text"] in new_text for r in stored)
        for mode in modes:
            hits = answerer.search(question, k=5, mode=mode, rerank=False)
            found = [h for h in hits if h.doc_id == a]
            update_ok.append(text_ok and bool(found) and all(h.text in new_text for h in found))
    delete_ok: list[bool] = []
    for question, d in deletes:
        gone = not store.chunk_ids_for_doc(d)
        for mode in modes:
            hits = answerer.search(question, k=10, mode=mode, rerank=False)
            delete_ok.append(gone and d not in {h.doc_id for h in hits})
    return {
        "update_questions": len(updates),
        "delete_questions": len(deletes),
        "update_score": sum(update_ok) / max(len(update_ok), 1),
        "delete_score": sum(delete_ok) / max(len(delete_ok), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench retrieval", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="460 documents, 60 questions")
    parser.add_argument("--reranker", default="", help="cross-encoder id/path, or 'tiny'")
    parser.add_argument("--rerank-top-n", type=int, default=20)
    parser.add_argument("--updates", type=int, default=10, help="update and delete questions")
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/retrieval.json"
    )
    args = parser.parse_args(argv)

    from retrieval.answering import QueryAnswerer
    from retrieval.chunking import TokenChunker
    from retrieval.embedding import TextEmbedder
    from retrieval.indexing import ChunkIndexer
    from retrieval.store import VectorStore

    docs, questions = pick_corpus(args.quick)
    embedder = TextEmbedder(device="cpu")
    folder = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    store = VectorStore(str(folder / "retrieval.db"), dim=embedder.dim, bm25=True)
    indexer = ChunkIndexer(TokenChunker(embedder.tokenizer), embedder, store)
    started = time.perf_counter()
    chunks = 0
    for i in range(0, len(docs), 256):
        chunks += indexer.apply(docs[i : i + 256]).chunks_written
    index_s = time.perf_counter() - started
    print(f"indexed {len(docs)} documents, {chunks} chunks in {index_s:.0f} s; "
          f"{len(questions)} questions")  # fmt: skip

    reranker = None
    if args.reranker:
        from retrieval.rerank import CrossEncoderReranker

        reranker = (
            tiny_reranker() if args.reranker == "tiny" else CrossEncoderReranker(args.reranker)
        )
    answerer = QueryAnswerer(embedder, store, reranker=reranker, rerank_top_n=args.rerank_top_n)
    answerer.search("warm up the encoder and the collection", k=10, mode="hybrid")

    modes = dict(MODES)
    if reranker is not None:
        modes["hybrid_rerank"] = {"mode": "hybrid", "fusion": "rrf", "rerank": True}
    results: dict[str, Any] = {}
    print(f"{'mode':<16} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for name, search in modes.items():
        rerank = bool(search.get("rerank"))
        q, lat, misses = evaluate(answerer, questions, rerank=rerank, **search)
        results[name] = {
            **q,
            "p50_ms": percentile(lat, 0.5) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000,
            "misses": misses,
        }
        r = results[name]
        print(f"{name:<16} {r['recall@1']:6.3f} {r['recall@5']:6.3f} {r['recall@10']:6.3f} "
              f"{r['mrr']:6.3f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}")  # fmt: skip
    if reranker is not None:
        results["hybrid_rerank"]["reranker"] = args.reranker
        if args.reranker == "tiny":
            results["hybrid_rerank"]["note"] = "untrained tiny model: latency only"

    checks = update_delete_checks(
        answerer, indexer, docs, questions, ["dense", "sparse", "hybrid"], args.updates
    )
    print(f"update questions: {checks['update_score']:.2f} ({checks['update_questions']}), "
          f"delete questions: {checks['delete_score']:.2f} ({checks['delete_questions']})")  # fmt: skip
    store.close()

    dense, hybrid = results["dense"], results["hybrid"]
    summary = {
        "default_mode": "hybrid",
        "default_recall@5": hybrid["recall@5"],
        "dense_recall@5": dense["recall@5"],
        "gain_points": (hybrid["recall@5"] - dense["recall@5"]) * 100,
        "p50_ratio_vs_dense": hybrid["p50_ms"] / dense["p50_ms"],
    }
    print(f"default (hybrid, rrf) recall@5 {summary['default_recall@5']:.3f} vs dense "
          f"{summary['dense_recall@5']:.3f}: {summary['gain_points']:+.1f} points; "
          f"p50 {summary['p50_ratio_vs_dense']:.2f}x dense")  # fmt: skip
    path = write_result(
        {
            "quick": args.quick,
            "documents": len(docs),
            "chunks": chunks,
            "questions": len(questions),
            "index_seconds": index_s,
            "modes": results,
            **checks,
            **summary,
            "machine": machine_info("pymilvus", "milvus_lite", "torch", "numpy", "scipy"),
        },
        args.out,
        "retrieval",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
