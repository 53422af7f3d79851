"""docs → Milvus: indexing throughput against the bare encoder, and freshness at half capacity.

Run (starts its own embedded Kafka in a temporary folder, or uses --bootstrap)::

    python -m bench index --docs 400        # or: python bench/bench_indexing.py --docs 400

1. **bare**: the encoder alone on exactly the chunks the pipeline will embed (same batch
   size, same threads): docs/s.
2. **pipeline**: the same docs produced to ``docs``, indexed by a real ``livelearn worker``
   (decode → chunk → embed → upsert into milvus-lite → commit): docs/s from the first
   produce to the moment the consumer group has committed everything. Ratio = 2 / 1
   (target ≥ 0.9).
3. **freshness**: docs produced one at a time at half the pipeline's capacity; each is
   searched for until found; p50/p99 of produce → searchable (target p99 ≤ 1 s + encode).

Prints the figures and writes ``bench/results/indexing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.chunking import TokenChunker  # noqa: E402
from retrieval.corpus import stdlib_corpus  # noqa: E402
from retrieval.embedding import TextEmbedder  # noqa: E402
from streams.broker import LocalBroker, free_port  # noqa: E402
from streams.kafka import admin_client  # noqa: E402
from streams.sdk import LiveLearnClient  # noqa: E402
from streams.settings import KafkaSettings, Settings, TopicSettings  # noqa: E402
from streams.topics import ensure_topics, topic_specs  # noqa: E402
from tests.integration.helpers import group_lag  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_encoder(docs: list[dict[str, Any]], settings: Settings) -> float:
    embedder = TextEmbedder(settings.models.embedding)
    chunker = TokenChunker(embedder.tokenizer, settings.models.chunk_tokens,
                           settings.models.chunk_overlap)  # fmt: skip
    texts = [c.embed_text for d in docs for c in chunker.chunk(d["id"], d["text"], d["title"])]
    embedder.encode(texts[:32])  # warm-up, as the worker warms up before its first batch
    started = time.perf_counter()
    for i in range(0, len(texts), 256):  # the worker's batch size
        embedder.encode(texts[i : i + 256])
    return len(docs) / (time.perf_counter() - started)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench index", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--fresh", type=int, default=60, help="docs for the freshness run")
    parser.add_argument("--bootstrap", default="")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-idx-"))
    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker = LocalBroker(tmp)
        bootstrap = broker.start()
    suffix = str(int(time.time()))
    topics = TopicSettings(docs=f"bench-docs-{suffix}", queries=f"bench-q-{suffix}",
                           answers=f"bench-a-{suffix}", partitions=1)  # fmt: skip
    settings = Settings(data_dir=tmp, topics=topics,
                        kafka=KafkaSettings(bootstrap_servers=bootstrap,
                                            group_prefix=f"bench-{suffix}"))  # fmt: skip
    ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    docs = stdlib_corpus(args.docs + args.fresh, min_chars=150)
    bulk, fresh = docs[: args.docs], docs[args.docs :]

    bare = bare_encoder(bulk, settings)
    print(f"bare encoder: {bare:.1f} docs/s")

    web = free_port()
    env = dict(os.environ, LIVELEARN_DATA_DIR=str(tmp), LIVELEARN_WEB_PORT=str(web),
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
    try:
        while True:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited; see {tmp / 'worker.log'}")
            try:
                get(f"http://127.0.0.1:{web}/search?q=warm&k=1")  # models loaded, store open
                break
            except OSError:
                time.sleep(0.5)
        client = LiveLearnClient(settings)
        started = time.perf_counter()
        for d in bulk:
            client.produce("docs", d)
        client.flush()
        group = f"bench-{suffix}-worker"
        while group_lag(settings, group, topics.docs) != 0:
            time.sleep(0.05)
        pipeline = len(bulk) / (time.perf_counter() - started)
        print(f"pipeline: {pipeline:.1f} docs/s  ratio {pipeline / bare:.2f} (target ≥ 0.9)")

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
        print(f"freshness at half capacity: p50 {p50 * 1000:.0f} ms  p99 {p99 * 1000:.0f} ms")
    finally:
        worker.terminate()
        worker.wait(60)
        if broker is not None:
            broker.stop()
    result = {"bare_docs_per_s": bare, "pipeline_docs_per_s": pipeline,
              "ratio": pipeline / bare, "freshness_p50_s": p50, "freshness_p99_s": p99,
              "docs": len(bulk), "fresh_docs": len(fresh), "cpus": os.cpu_count()}  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "indexing.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
