"""docs → Milvus: ingest throughput against the bare encoder, and freshness at half capacity.

Run (starts its own embedded Kafka in a temporary folder, or uses ``--bootstrap``)::

    python -m bench ingest --quick          # under two minutes on 2 CPU cores
    python -m bench ingest                  # the full run: 250 + 60 docs

1. **encoder**: the embedder alone, in this process, on exactly the chunk texts the pipeline
   will embed, in the same batches (the worker's agent takes up to 256 docs per batch and
   embeds all their chunks in one ``encode`` call): ``encoder_docs_per_s``.
2. **pipeline**: the same docs produced to ``docs`` and indexed by a real ``livelearn
   worker`` child (consume → decode → validate → chunk → embed → upsert into milvus-lite →
   outputs acknowledged): ``docs_per_s``, from the first produce to the moment the worker's
   ``livelearn_records_in_total{outcome="ok"}`` counts every doc (it counts a batch only
   after Milvus has it). ``throughput_ratio`` = docs_per_s / encoder_docs_per_s, target
   ≥ 0.9. The time until the consumer group has *committed* everything is reported beside
   it (``committed_docs_per_s``): commits are asynchronous, every second.
3. **freshness**: new docs produced one at a time at half the measured capacity; each is
   searched for (``/search``) until found: p50/p99 of produce → searchable. The target is
   p99 ≤ 1 s beyond the encode time of one batch (``batch_encode_s``: the encoder on one
   doc's chunks, as a lone doc is a batch of one).

Prints the figures and writes ``bench/results/ingest.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, percentile, wait_ready, write_result  # noqa: E402
from retrieval.chunking import TokenChunker  # noqa: E402
from retrieval.corpus import stdlib_corpus  # noqa: E402
from retrieval.embedding import TextEmbedder  # noqa: E402
from streams.broker import LocalBroker, free_port  # noqa: E402
from streams.kafka import admin_client  # noqa: E402
from streams.sdk import LiveLearnClient  # noqa: E402
from streams.settings import KafkaSettings, Settings, TopicSettings  # noqa: E402
from streams.status import group_lag  # noqa: E402
from streams.topics import ensure_topics, topic_specs  # noqa: E402

BATCH_DOCS = 256  # the worker's docs agent: take_events(256, within=0.25)


def chunk_texts(docs: list[dict[str, Any]], embedder: TextEmbedder,
                settings: Settings) -> list[list[str]]:  # fmt: skip
    """Per doc, the texts the indexer embeds for it (its chunks with their titles)."""
    chunker = TokenChunker(embedder.tokenizer, settings.models.chunk_tokens,
                           settings.models.chunk_overlap)  # fmt: skip
    return [[c.embed_text for c in chunker.chunk(d["id"], d["text"], d["title"])] for d in docs]


def encoder_rate(per_doc: list[list[str]], embedder: TextEmbedder) -> float:
    """docs/s of the bare encoder, one ``encode`` call per batch of ``BATCH_DOCS`` docs."""
    embedder.encode([t for texts in per_doc[:8] for t in texts])  # warm-up, as the worker's
    started = time.perf_counter()
    for i in range(0, len(per_doc), BATCH_DOCS):
        embedder.encode([t for texts in per_doc[i : i + BATCH_DOCS] for t in texts])
    return len(per_doc) / (time.perf_counter() - started)


def one_doc_encode_s(per_doc: list[list[str]], embedder: TextEmbedder) -> float:
    """Median time to embed one doc's chunks: the encode time of a batch of one."""
    times = []
    for texts in per_doc:
        started = time.perf_counter()
        embedder.encode(texts)
        times.append(time.perf_counter() - started)
    return percentile(times, 0.5)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return orjson.loads(resp.read())


def indexed(metrics_url: str, topic: str) -> float:
    """Docs the worker has applied to Milvus (``livelearn_records_in_total``, outcome ok)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    want = f'livelearn_records_in_total{{outcome="ok",topic="{topic}"}}'
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench ingest", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="150 + 30 docs (under 2 min)")
    parser.add_argument("--docs", type=int, default=250, help="docs for the throughput run")
    parser.add_argument("--fresh", type=int, default=60, help="docs for the freshness run")
    parser.add_argument("--bootstrap", default="", help="use this Kafka (default: embedded)")
    parser.add_argument("--out", default="", help="results file (default bench/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.fresh = min(args.docs, 150), min(args.fresh, 30)
    wall = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker = LocalBroker(tmp)
        bootstrap = broker.start()
    try:
        return run(parser, args, tmp, bootstrap, wall)
    finally:
        if broker is not None:
            broker.stop()


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, tmp: Path, bootstrap: str,
        wall: float) -> int:  # fmt: skip
    suffix = f"{int(time.time())}-{os.getpid()}"
    topics = TopicSettings(docs=f"bench-docs-{suffix}", queries=f"bench-q-{suffix}",
                           answers=f"bench-a-{suffix}", partitions=1)  # fmt: skip
    settings = Settings(data_dir=tmp, topics=topics,
                        kafka=KafkaSettings(bootstrap_servers=bootstrap,
                                            group_prefix=f"bench-{suffix}"))  # fmt: skip
    ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    docs = stdlib_corpus(args.docs + args.fresh, min_chars=150)
    if len(docs) < args.docs + args.fresh:
        parser.error(f"the stdlib corpus has {len(docs)} docs here; ask for at most that many")
    bulk, fresh = docs[: args.docs], docs[args.docs :]

    embedder = TextEmbedder(settings.models.embedding)
    per_doc = chunk_texts(bulk, embedder, settings)
    encoder = encoder_rate(per_doc, embedder)
    batch_encode = one_doc_encode_s(chunk_texts(fresh, embedder, settings), embedder)
    chunks = sum(len(t) for t in per_doc)
    print(f"encoder: {encoder:.1f} docs/s ({chunks} chunks of {len(bulk)} docs); "
          f"one doc's chunks: {batch_encode * 1000:.0f} ms")  # fmt: skip
    del embedder  # the worker gets the CPU to itself

    web, prom = free_port(), free_port()
    env = dict(os.environ, LIVELEARN_DATA_DIR=str(tmp), LIVELEARN_WEB_PORT=str(web),
               LIVELEARN_METRICS_PORT=str(prom),
               LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
               LIVELEARN_KAFKA__GROUP_PREFIX=f"bench-{suffix}", LIVELEARN_LOG_LEVEL="WARNING",
               LIVELEARN_TOPICS__DOCS=topics.docs, LIVELEARN_TOPICS__QUERIES=topics.queries,
               LIVELEARN_TOPICS__ANSWERS=topics.answers, LIVELEARN_TOPICS__PARTITIONS="1",
               LIVELEARN_MODELS__LEARNER="false")  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker"],
        env=env,
        stdout=(tmp / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    metrics_url = f"http://127.0.0.1:{prom}/metrics"
    try:
        wait_ready(web, lambda: worker.poll() is None, tmp / "worker.log")
        client = LiveLearnClient(settings)
        started = time.perf_counter()
        for d in bulk:
            client.produce("docs", d)
        client.flush()
        while indexed(metrics_url, topics.docs) < len(bulk):
            time.sleep(0.02)
        pipeline_s = time.perf_counter() - started
        group = f"bench-{suffix}-worker"
        while group_lag(settings, bootstrap, group, topics.docs).lag != 0:
            time.sleep(0.05)
        committed_s = time.perf_counter() - started
        pipeline = len(bulk) / pipeline_s
        print(f"pipeline: {pipeline:.1f} docs/s, ratio {pipeline / encoder:.2f} (target ≥ 0.9); "
              f"all committed after {committed_s:.1f} s")  # fmt: skip

        gap = 2.0 / pipeline  # half capacity
        latencies = []
        for d in fresh:
            sent = time.perf_counter()
            client.produce("docs", d, wait=True)
            query = quote(d["text"][:200])
            while True:
                hits = get(f"http://127.0.0.1:{web}/search?q={query}&k=3")["hits"]
                if any(h["doc_id"] == d["id"] for h in hits):
                    break
                time.sleep(0.01)
            latencies.append(time.perf_counter() - sent)
            time.sleep(max(0.0, gap - latencies[-1]))
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        target_ms = (1 + batch_encode) * 1000
        print(f"freshness at half capacity: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
              f"(target ≤ {target_ms:.0f} ms: 1 s + one batch's encode)")  # fmt: skip
    finally:
        worker.terminate()
        worker.wait(60)
    result = {
        "docs_per_s": pipeline,
        "encoder_docs_per_s": encoder,
        "throughput_ratio": pipeline / encoder,
        "throughput_target": 0.9,
        "committed_docs_per_s": len(bulk) / committed_s,
        "freshness_p50_s": p50,
        "freshness_p99_s": p99,
        "batch_encode_s": batch_encode,
        "freshness_p99_excess_s": p99 - batch_encode,
        "freshness_target_s": 1.0,
        "docs": len(bulk),
        "chunks": chunks,
        "fresh_docs": len(fresh),
        "batch_docs": BATCH_DOCS,
        "embedding_model": settings.models.embedding,
        "quick": args.quick,
        "wall_s": time.perf_counter() - wall,
        "machine": machine_info("torch", "transformers", "pymilvus", "confluent_kafka"),
    }
    path = write_result(result, args.out, "ingest")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
