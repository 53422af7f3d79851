"""Retrieval quality and idle search latency per mode on a held-out corpus (``python -m bench
retrieval``).

The corpus is :func:`retrieval.corpus.scientific_corpus` (~2,500 docstrings of numpy, SciPy and
scikit-learn, installed with the project from PyPI; nobody here wrote them) and the questions
are :data:`retrieval.corpus.SCIENTIFIC_QUESTIONS` (170, hand-written, one target document
each). Everything runs in-process on a milvus-lite file, through the same
:class:`~retrieval.indexing.ChunkIndexer`, :class:`~retrieval.store.VectorStore` and
:class:`~retrieval.answering.QueryAnswerer` the worker uses::

    python -m bench retrieval                 # full corpus, every question (7k chunks to embed)
    python -m bench retrieval --quick         # the questions' documents + 400 others, 60 questions
    python -m bench retrieval --reranker PATH # also hybrid+rerank with that cross-encoder
    python -m bench retrieval --reranker tiny # an untrained tiny BERT: its latency only

For each mode (dense, sparse, hybrid with RRF, hybrid with weights, hybrid+rerank when a
reranker is given) it prints recall@1/5/10 and MRR@10 (a question is found at the rank of the
first chunk of its document) and the idle search p50/p99 (one query at a time, nothing
indexing, the collection flushed). Then the update and delete questions: some documents get
another document's text and title (update: the question about that text must now find the
updated document, with the new text), others are deleted (delete: they must appear in no mode's
results, and no chunk of theirs may remain). Results go to ``bench/results/retrieval.json``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine_info, percentile, write_result

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


def first_stage(answerer: Any, questions: dict[str, str], candidates: int) -> dict[str, Any]:
    """Each question's dense and BM25 top ``candidates``: what every fusion is computed from."""
    store = answerer.store
    lists: dict[str, Any] = {}
    for question in questions:
        vector = answerer.embedder.encode([question])[0]
        dense = store.search(vector, k=candidates, mode="dense")
        sparse = store.search(text=question, k=candidates, mode="sparse")
        # as a hybrid search ranks its BM25 side: with the store's collection-wide statistics
        # over both sides' candidates (retrieval.bm25), where it keeps them
        sparse = store.rescore_sparse([question], [dense], [sparse], candidates)[0]
        lists[question] = (dense, sparse)
    return lists


def score_fusions(
    lists: dict[str, Any], questions: dict[str, str], fusions: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Quality of each fusion (and of each side alone) over the same first-stage lists."""
    from retrieval.store import fuse

    out: dict[str, dict[str, Any]] = {}
    for name, how in {"dense": {}, "sparse": {}, **fusions}.items():
        ranks: list[int | None] = []
        misses = []
        for question, target in questions.items():
            dense, sparse = lists[question]
            if name == "dense":
                hits = dense[:10]
            elif name == "sparse":
                hits = sparse[:10]
            else:
                hits = fuse(dense, sparse, 10, **how)
            rank = rank_of(target, [h.doc_id for h in hits])
            ranks.append(rank)
            if rank is None or rank > 5:
                top = list(dict.fromkeys(h.doc_id for h in hits))[:5]
                misses.append({"question": question, "want": target, "rank": rank, "top5": top})
        out[name] = {**quality(ranks), "misses": misses, **how}
    return out


def rerank_quality(answerer: Any, questions: dict[str, str]) -> dict[str, Any]:
    """hybrid+rerank through the answerer itself (the reranker reads the fused top N)."""
    ranks: list[int | None] = []
    rerank_s: list[float] = []
    for question, target in questions.items():
        hits = answerer.search(question, k=10)
        rerank_s.append(answerer.timings.rerank_s)
        ranks.append(rank_of(target, [h.doc_id for h in hits]))
    return {**quality(ranks), "rerank_p50_ms": percentile(rerank_s, 0.5) * 1000,
            "rerank_p99_ms": percentile(rerank_s, 0.99) * 1000}  # fmt: skip


def idle_latency(
    answerer: Any, questions: Sequence[str], modes: Sequence[str], rounds: int = 1
) -> dict[str, dict[str, float]]:
    """Search p50/p99 per mode, one query at a time, the modes interleaved question by question
    (so that a busy moment of the machine falls on every mode alike)."""
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for i, question in enumerate(questions):
            order = list(modes[(i + r) % len(modes) :]) + list(modes[: (i + r) % len(modes)])
            for mode in order:
                started = time.perf_counter()
                rerank = mode == "hybrid+rerank"
                answerer.search(question, k=5, mode="hybrid" if rerank else mode, rerank=rerank)
                times[mode].append(time.perf_counter() - started)
    return {
        m: {"p50_ms": percentile(t, 0.5) * 1000, "p99_ms": percentile(t, 0.99) * 1000}
        for m, t in times.items()
    }


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


def pick_corpus(
    n_questions: int | None = None, n_others: int = 400, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The documents and questions of a run: everything, or ``n_questions`` of the questions
    with their documents and ``n_others`` other documents (a deterministic sample)."""
    from retrieval.corpus import SCIENTIFIC_QUESTIONS, scientific_corpus

    docs = scientific_corpus()
    questions = dict(SCIENTIFIC_QUESTIONS)
    if n_questions is None:
        return docs, questions
    rng = random.Random(seed)
    chosen = dict(rng.sample(sorted(questions.items()), n_questions))
    targets = set(chosen.values())
    others = [d for d in docs if d["id"] not in set(questions.values())]
    keep = targets | {d["id"] for d in rng.sample(others, n_others)}
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

    Update: document A (one no question is about) takes the text and title of B (a question's
    target), and B is deleted, so the question about B's text is now about A. It passes when A is in
    the top 10 of the default mode (a retrieval-quality part), every hit of A in every mode
    carries the new text, and a search for A's old text (its first 300 characters) returns no
    chunk of A with old text; ``update_fresh`` counts the last two alone (no stale text).
    ``update_found_before`` says for how many the default mode found B in its top 10 before the
    update, and ``update_score_found_before`` is the score over those alone: what the update
    itself loses, apart from the questions retrieval missed either way.
    Delete: ``n`` other targets are deleted: each passes when no chunk of it remains and it is
    in no mode's top 10, neither for its question nor for a search with its own text.
    """
    rng = random.Random(seed)
    by_id = {d["id"]: d for d in docs}
    targets = sorted(questions.items())
    rng.shuffle(targets)
    updates, deletes = targets[:n], targets[n : 2 * n]
    free = sorted(set(by_id) - set(questions.values()))
    hosts = rng.sample(free, n)
    before = [
        b in {h.doc_id for h in answerer.search(question, k=10, rerank=False)}
        for question, b in updates
    ]
    ops: list[dict[str, Any]] = []
    for (_, b), a in zip(updates, hosts, strict=True):
        # A is rewritten: B's text under B's title (each chunk embeds its title: kept, A's
        # old title would describe a text A no longer has, and rank it down on its own).
        ops.append({**by_id[a], "text": by_id[b]["text"], "title": by_id[b].get("title")})
        ops.append({"id": b, "op": "delete"})
    ops.extend({"id": d, "op": "delete"} for _, d in deletes)
    indexer.apply(ops)
    store = answerer.store
    update_ok: list[bool] = []
    update_fresh: list[bool] = []  # no hit of A, in any mode, carries its old text
    for (question, b), a in zip(updates, hosts, strict=True):
        new_text, old_text = by_id[b]["text"], by_id[a]["text"]
        found = a in {h.doc_id for h in answerer.search(question, k=10, rerank=False)}
        fresh = True
        for mode in modes:
            for query in (question, old_text[:300]):
                for hit in answerer.search(query, k=10, mode=mode, rerank=False):
                    if hit.doc_id == a:
                        fresh = fresh and hit.text in new_text
        update_ok.append(found and fresh)
        update_fresh.append(fresh)
    delete_ok: list[bool] = []
    for question, d in deletes:
        ok = not store.chunk_ids_for_doc(d)
        for mode in modes:
            for query in (question, by_id[d]["text"][:300]):
                hits = answerer.search(query, k=10, mode=mode, rerank=False)
                ok = ok and d not in {h.doc_id for h in hits}
        delete_ok.append(ok)
    return {
        "update_questions": len(updates),
        "delete_questions": len(deletes),
        "update_score": sum(update_ok) / max(len(update_ok), 1),
        "update_fresh": sum(update_fresh) / max(len(update_fresh), 1),
        "update_found_before": sum(before),
        "update_score_found_before": sum(ok for ok, b in zip(update_ok, before, strict=True) if b)
        / max(sum(before), 1),
        "delete_score": sum(delete_ok) / max(len(delete_ok), 1),
    }


WEIGHTS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench retrieval", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="460 documents, 60 questions")
    parser.add_argument("--smoke", action="store_true", help="42 documents, 12 questions (tests)")
    parser.add_argument("--reranker", default="", help="cross-encoder id/path, or 'tiny'")
    parser.add_argument("--rerank-top-n", type=int, default=20)
    parser.add_argument("--updates", type=int, default=10, help="update and delete questions")
    parser.add_argument("--latency-questions", type=int, default=60, help="questions timed")
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/retrieval.json"
    )
    args = parser.parse_args(argv)

    from retrieval.answering import QueryAnswerer
    from retrieval.chunking import TokenChunker
    from retrieval.embedding import TextEmbedder
    from retrieval.indexing import ChunkIndexer
    from retrieval.store import VectorStore
    from streams.settings import ModelSettings, RetrievalSettings

    defaults = RetrievalSettings()
    if args.smoke:
        docs, questions = pick_corpus(12, 30)
        args.updates = min(args.updates, 3)
    else:
        docs, questions = pick_corpus(60 if args.quick else None)
    embedder = TextEmbedder(device="cpu")
    folder = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    store = VectorStore(str(folder / "retrieval.db"), dim=embedder.dim, bm25=True)
    try:
        models = ModelSettings()  # the workers' chunking
        chunker = TokenChunker(embedder.tokenizer, models.chunk_tokens, models.chunk_overlap)
        indexer = ChunkIndexer(chunker, embedder, store)
        started = time.perf_counter()
        chunks = 0
        for i in range(0, len(docs), 256):
            chunks += indexer.apply(docs[i : i + 256]).chunks_written
        index_s = time.perf_counter() - started
        store.flush()  # as an idle worker does (retrieval.flush_idle_s): search a segment
        print(f"indexed {len(docs)} documents, {chunks} chunks in {index_s:.0f} s; "
              f"{len(questions)} questions")  # fmt: skip

        reranker = None
        if args.reranker:
            from retrieval.rerank import CrossEncoderReranker

            reranker = (
                tiny_reranker() if args.reranker == "tiny" else CrossEncoderReranker(args.reranker)
            )
        answerer = QueryAnswerer(
            embedder, store, mode=defaults.mode, fusion=defaults.fusion,
            dense_weight=defaults.dense_weight, reranker=reranker, rerank_top_n=args.rerank_top_n,
        )  # fmt: skip
        answerer.search("warm up the encoder and the collection", k=10, mode="hybrid")

        # Hybrid search of k=10 fuses each side's top 20 (VectorStore.search's default).
        lists = first_stage(answerer, questions, candidates=20)
        fusions = {"hybrid_rrf": {"fusion": "rrf"}} | {
            f"hybrid_w{w}": {"fusion": "weighted", "dense_weight": w} for w in WEIGHTS
        }
        results = score_fusions(lists, questions, fusions)
        default_name = (
            "hybrid_rrf" if defaults.fusion == "rrf" else f"hybrid_w{defaults.dense_weight}"
        )
        if defaults.mode != "hybrid":
            default_name = defaults.mode
        # The settings' default through the answerer itself is the offline fusion above.
        same = True
        if defaults.mode == "hybrid":
            from retrieval.store import fuse

            how = fusions[default_name]
            for question in list(questions)[:10]:
                live = [h.chunk_id for h in answerer.search(question, k=10, rerank=False)]
                offline = [h.chunk_id for h in fuse(*lists[question], 10, **how)]
                same = same and live == offline
        print(f"live default search = offline fusion: {same}")
        print(f"{'mode':<16} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR':>6}", flush=True)
        for name, r in results.items():
            print(f"{name:<16} {r['recall@1']:6.3f} {r['recall@5']:6.3f} {r['recall@10']:6.3f} "
                  f"{r['mrr']:6.3f}", flush=True)  # fmt: skip
        if reranker is not None and args.reranker != "tiny":  # the tiny one: latency only
            results["hybrid+rerank"] = rerank_quality(answerer, questions)

        timed = ["dense", "sparse", "hybrid"] + (["hybrid+rerank"] if reranker else [])
        latency = idle_latency(answerer, list(questions)[: args.latency_questions], timed)
        if reranker is not None:
            rerank_lat = latency["hybrid+rerank"]
            results.setdefault("hybrid+rerank", {}).update(
                reranker=args.reranker, latency_p50_ms=rerank_lat["p50_ms"]
            )
            if args.reranker == "tiny":
                results["hybrid+rerank"]["note"] = "untrained tiny model: latency only"
        print(
            "idle search (k=5, one at a time, modes interleaved; includes the query's embedding):"
        )
        for mode, lat in latency.items():
            print(f"  {mode:<14} p50 {lat['p50_ms']:7.1f} ms  p99 {lat['p99_ms']:7.1f} ms")

        checks = update_delete_checks(
            answerer, indexer, docs, questions, ["dense", "sparse", "hybrid"], args.updates
        )
        u, d = checks["update_score"], checks["delete_score"]
        print(f"update questions: {u:.2f} ({checks['update_questions']}; no stale text: "
              f"{checks['update_fresh']:.2f}; found before the update: "
              f"{checks['update_found_before']}, of those "
              f"{checks['update_score_found_before']:.2f}), "
              f"delete questions: {d:.2f} ({checks['delete_questions']})")  # fmt: skip
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)

    dense, default = results["dense"], results[default_name]
    summary = {
        "default": {"mode": defaults.mode, "fusion": defaults.fusion,
                    "dense_weight": defaults.dense_weight, "result": default_name},
        "default_recall@5": default["recall@5"],
        "dense_recall@5": dense["recall@5"],
        "gain_points": (default["recall@5"] - dense["recall@5"]) * 100,
        "p50_ratio_vs_dense": latency[defaults.mode]["p50_ms"] / latency["dense"]["p50_ms"],
    }  # fmt: skip
    print(f"default ({default_name}) recall@5 {summary['default_recall@5']:.3f} vs dense "
          f"{summary['dense_recall@5']:.3f}: {summary['gain_points']:+.1f} points; "
          f"p50 {summary['p50_ratio_vs_dense']:.2f}x dense")  # fmt: skip
    path = write_result(
        {
            "quick": args.quick,
            "smoke": args.smoke,
            "documents": len(docs),
            "chunks": chunks,
            "questions": len(questions),
            "index_seconds": index_s,
            "modes": results,
            "latency": latency,
            "live_equals_offline": same,
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
