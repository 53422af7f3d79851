"""docs → Milvus, live: bulk ingest against the bare encoder, freshness under a steady stream,
CPU per document, and ``/search`` latency while a backlog is indexed and when idle.

Run (starts its own embedded Kafka in a temporary folder, or uses ``--bootstrap``)::

    python -m bench ingest --quick          # about two minutes on 2 CPU cores
    python -m bench ingest                  # the full run: 2,000-doc loads, 20 s streams

The documents are short passages (12–40 words) cut from the docstrings of the standard
library, numpy, SciPy and scikit-learn, each with an id of its own. A real ``livelearn
worker`` child (learner off: retrieval only) indexes them into milvus-lite. One run measures,
in this order:

1. **encoder**: the embedder alone, in this process, on exactly the texts the pipeline embeds
   (the bulk docs' chunks with their titles), in one ``encode`` call, with the worker's pass
   size and with twice that: ``encoder_docs_per_s`` is the faster (``encoder_pass``).
2. **bulk**: ``--docs`` docs produced as fast as Kafka takes them. ``bulk_first_visible_s``:
   first produce → the first doc returned by a ``/search`` for its own text;
   ``bulk_last_visible_s``: first produce → every doc counted indexed by the worker
   (``livelearn_records_in_total``, counted after Milvus has the batch) *and* the last one
   returned by a search for its text. ``bulk_ratio`` = encoder time ÷ that time.
3. **freshness**: docs produced one at a time on a fixed schedule (open loop) at
   ``--rate`` (45 docs/s) and at ``--rate2``, for ``--seconds`` each. Every doc is probed by
   a ``/search`` for its own text (top 5), again every ``--probe-ms`` until it is returned,
   by a pool of probers that starts a doc's probing when it is sent, so the probing never
   falls behind the stream. The latency is produce → the response that returned it.
   p50/p99 per rate, and the docs never seen (``*_missing``). Each stream starts once the
   worker has indexed everything produced before it (``caught_up_s``: how long after the
   stream's end that took; ``cpu_s_per_doc_caught_up`` counts that catch-up's CPU too).
4. **CPU**: the worker's process tree (the worker and its milvus-lite server), user + system
   seconds over each stream ÷ its duration (``cores``) and ÷ its docs (``cpu_s_per_doc``);
   at the first rate it is measured twice: with every doc probed (``*_probed``), and with the
   probes off (the indexing alone). And the idle tree's cores over 5 s with no input.
5. **search under backlog**: ``--docs`` new docs produced at once; while the worker indexes
   them, ``/search`` queries (other docs' texts) are sent on a schedule at ``--qps``, each
   on its own thread (open loop: a slow answer delays no other query); p50/p99.
6. **idle search**: ``--idle-queries`` searches one after another on the idle worker, for
   texts not asked before (the worker caches the embeddings of recent queries); p50/p99.

Prints the figures and writes ``bench/results/ingest.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import os
import re
import subprocess
import sys
import tempfile
import threading
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
from retrieval.corpus import scientific_corpus, stdlib_corpus  # noqa: E402
from retrieval.embedding import TextEmbedder  # noqa: E402
from streams.broker import LocalBroker, free_port  # noqa: E402
from streams.kafka import admin_client  # noqa: E402
from streams.sdk import LiveLearnClient  # noqa: E402
from streams.settings import KafkaSettings, Settings, TopicSettings  # noqa: E402
from streams.topics import ensure_topics, topic_specs  # noqa: E402

GOALS = {
    "bulk_ratio": 0.95,
    "bulk_first_visible_s": 0.5,
    "freshness_p99_s": 0.30,
    "cores": 0.8,
    "backlog_search_p99_s": 0.10,
    "idle_search_p50_s": 0.03,
}


def passages(n: int, min_words: int = 12, max_words: int = 40) -> list[dict[str, Any]]:
    """``n`` distinct ``docs`` records of ``min_words``–``max_words`` words each, cut from
    docstrings at paragraph and sentence boundaries (deterministic).

    >>> docs = passages(3)
    >>> len(docs), all(12 <= len(d["text"].split()) <= 40 for d in docs)
    (3, True)
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    sources = [stdlib_corpus(100_000, min_chars=60)]
    for corpus in sources + [None]:
        if corpus is None:
            if len(out) >= n:
                break
            corpus = scientific_corpus()
        for doc in corpus:
            for p, para in enumerate(re.split(r"\n\s*\n", doc["text"])):
                words = para.split()
                if any(set(w) <= set("-=~^") for w in words):  # section rulers, tables
                    continue
                for start in range(0, len(words), max_words):
                    piece = words[start : start + max_words]
                    if len(piece) < min_words:
                        continue
                    text = " ".join(piece)
                    if text in seen:
                        continue
                    seen.add(text)
                    out.append({"id": f"{doc['id']}~{p}.{start}", "op": "upsert", "text": text,
                                "title": doc["title"], "source": doc["source"]})  # fmt: skip
                    if len(out) >= n:
                        return out
    return out


def chunk_texts(
    docs: list[dict[str, Any]], embedder: TextEmbedder, settings: Settings
) -> list[str]:
    """The texts the indexer embeds for ``docs`` (their chunks with their titles)."""
    chunker = TokenChunker(embedder.tokenizer, settings.models.chunk_tokens,
                           settings.models.chunk_overlap)  # fmt: skip
    return [c.embed_text for d in docs for c in chunker.chunk(d["id"], d["text"], d["title"])]


class Web:
    """``/search`` calls over one keep-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._local = threading.local()

    def search(self, text: str, k: int = 5) -> list[dict[str, Any]]:
        path = f"/search?q={quote(text[:300])}&k={k}"
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, 60)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"/search answered {resp.status}: {body[:200]!r}")
                hits: list[dict[str, Any]] = orjson.loads(body)["hits"]
                return hits
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        return []

    def returns(self, doc: dict[str, Any]) -> bool:
        return any(h["doc_id"] == doc["id"] for h in self.search(doc["text"]))


class Tree:
    """CPU seconds (user + system) of a process and its children."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self._gone = 0.0

    def cpu_s(self) -> float:
        import psutil

        total = 0.0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total


def indexed(metrics_url: str, topic: str) -> float:
    """Docs the worker has applied to Milvus (``livelearn_records_in_total``, outcome ok)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    want = f'livelearn_records_in_total{{outcome="ok",topic="{topic}"}}'
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_indexed(metrics_url: str, topic: str, count: float, timeout_s: float = 180.0) -> float:
    """Wait until the worker has indexed ``count`` docs in all (at most ``timeout_s``); returns
    the wait. Each measurement starts from a worker that has caught up, not with the backlog
    the one before left (a stream the worker could not keep up with ends with one)."""
    started = time.perf_counter()
    while indexed(metrics_url, topic) < count and time.perf_counter() - started < timeout_s:
        time.sleep(0.1)
    return time.perf_counter() - started


def histogram(metrics_url: str, name: str) -> tuple[float, float]:
    """``(sum, count)`` of a worker histogram (all its label sets together)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def worker_means(metrics_url: str, before: dict[str, tuple[float, float]] | None = None,
                 ) -> dict[str, tuple[float, float]]:  # fmt: skip
    """The worker's own freshness and search histograms; with ``before``, the mean of each
    since then (as ``(mean, count)``)."""
    now = {n: histogram(metrics_url, n)
           for n in ("livelearn_freshness_seconds", "livelearn_search_seconds")}  # fmt: skip
    if before is None:
        return now
    out = {}
    for n, (total, count) in now.items():
        t0, c0 = before[n]
        out[n] = ((total - t0) / (count - c0) if count > c0 else float("nan"), count - c0)
    return out


def stream(client: LiveLearnClient, web: Web, docs: list[dict[str, Any]], rate: float,
           probe_s: float | None, tree: Tree, metrics_url: str) -> dict[str, Any]:  # fmt: skip
    """Produce ``docs`` at ``rate`` on a fixed schedule; with ``probe_s``, probe each doc every
    ``probe_s`` from its send until a search returns it. Returns latencies and CPU."""
    latencies: list[float] = []
    missing: list[str] = []
    lock = threading.Lock()

    def probe(doc: dict[str, Any], sent: float) -> None:
        deadline = sent + 15.0
        while time.perf_counter() < deadline:
            asked = time.perf_counter()
            if web.returns(doc):
                with lock:
                    latencies.append(time.perf_counter() - sent)
                return
            time.sleep(max(0.0, asked + probe_s - time.perf_counter()))  # type: ignore[operator]
        with lock:
            missing.append(doc["id"])

    pool = concurrent.futures.ThreadPoolExecutor(64, "prober")
    means0 = worker_means(metrics_url)
    cpu0, started = tree.cpu_s(), time.perf_counter()
    futures = []
    for i, doc in enumerate(docs):
        time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        sent = time.perf_counter()
        client.produce("docs", doc)
        if probe_s is not None:
            futures.append(pool.submit(probe, doc, sent))
    client.flush()
    concurrent.futures.wait(futures)
    pool.shutdown()
    elapsed = time.perf_counter() - started
    cpu = tree.cpu_s() - cpu0
    means = worker_means(metrics_url, means0)
    result: dict[str, Any] = {"rate": rate, "docs": len(docs), "seconds": elapsed,
                              "cores": cpu / elapsed, "cpu_s_per_doc": cpu / len(docs),
                              "worker_freshness_mean_s": means["livelearn_freshness_seconds"][0],
                              "worker_search_mean_s": means["livelearn_search_seconds"][0],
                              "searches": means["livelearn_search_seconds"][1]}  # fmt: skip
    if probe_s is not None:
        result.update(p50_s=percentile(latencies, 0.5), p99_s=percentile(latencies, 0.99),
                      max_s=max(latencies, default=float("nan")), missing=len(missing))  # fmt: skip
    return result


def backlog_search(client: LiveLearnClient, web: Web, docs: list[dict[str, Any]],
                   queries: list[dict[str, Any]], qps: float, metrics_url: str,
                   topic: str) -> dict[str, Any]:  # fmt: skip
    """Produce ``docs`` at once; search on a schedule at ``qps`` until all are indexed."""
    before = indexed(metrics_url, topic)
    latencies: list[float] = []
    lock = threading.Lock()

    def ask(q: dict[str, Any]) -> None:
        asked = time.perf_counter()
        web.search(q["text"])
        with lock:
            latencies.append(time.perf_counter() - asked)

    started = time.perf_counter()
    for d in docs:
        client.produce("docs", d)
    client.flush()
    pool = concurrent.futures.ThreadPoolExecutor(32, "searcher")
    futures, i = [], 0
    while indexed(metrics_url, topic) < before + len(docs) or i < 10:
        time.sleep(max(0.0, started + i / qps - time.perf_counter()))
        futures.append(pool.submit(ask, queries[i % len(queries)]))
        i += 1
    indexed_s = time.perf_counter() - started
    concurrent.futures.wait(futures)
    pool.shutdown()
    return {"docs": len(docs), "qps": qps, "queries": len(latencies), "indexed_s": indexed_s,
            "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
            "max_s": max(latencies)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench ingest", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller loads, shorter streams")
    parser.add_argument("--docs", type=int, default=2000, help="docs per bulk load / backlog")
    parser.add_argument("--rate", type=float, default=45.0, help="steady stream, docs/s")
    parser.add_argument("--rate2", type=float, default=20.0, help="a second steady rate")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each stream")
    parser.add_argument("--probe-ms", type=float, default=50.0, help="probe interval per doc")
    parser.add_argument("--qps", type=float, default=5.0, help="searches/s during the backlog")
    parser.add_argument("--idle-queries", type=int, default=100)
    parser.add_argument("--bootstrap", default="", help="use this Kafka (default: embedded)")
    parser.add_argument("--out", default="", help="results file (default bench/results/)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the worker (settings to compare)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.seconds, args.idle_queries = min(args.docs, 600), 8.0, 40
    wall = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker = LocalBroker(tmp)
        bootstrap = broker.start()
    try:
        return run(args, tmp, bootstrap, wall)
    finally:
        if broker is not None:
            broker.stop()


def run(args: argparse.Namespace, tmp: Path, bootstrap: str, wall: float) -> int:
    suffix = f"{int(time.time())}-{os.getpid()}"
    topics = TopicSettings(docs=f"bench-docs-{suffix}", queries=f"bench-q-{suffix}",
                           answers=f"bench-a-{suffix}", partitions=1)  # fmt: skip
    settings = Settings(data_dir=tmp, topics=topics,
                        kafka=KafkaSettings(bootstrap_servers=bootstrap,
                                            group_prefix=f"bench-{suffix}"))  # fmt: skip
    ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    n_stream = int(args.rate * args.seconds)
    n_stream2 = int(args.rate2 * args.seconds)
    sizes = [args.docs, n_stream, n_stream, n_stream2, args.docs]
    docs = passages(sum(sizes))
    if len(docs) < sum(sizes):
        raise SystemExit(f"only {len(docs)} passages here; ask for fewer docs")
    parts, at = [], 0
    for size in sizes:
        parts.append(docs[at : at + size])
        at += size
    bulk, probed, unprobed, probed2, backlog = parts

    embedder = TextEmbedder(settings.models.embedding)
    texts = chunk_texts(bulk, embedder, settings)
    embedder.encode(texts[:64])  # warm-up, as the worker's
    # The bare encoder at the faster of its own pass size and twice that (on these sorted,
    # evenly long passes bigger ones can be faster, while the worker's are smaller for its
    # queries' sake), so the ratio is never flattered by a slow denominator.
    timings = {}
    for size in (embedder.batch_size, 2 * embedder.batch_size):
        embedder.batch_size = size
        t0 = time.perf_counter()
        embedder.encode(texts)
        timings[size] = time.perf_counter() - t0
    best = min(timings, key=lambda size: timings[size])
    encoder_s = timings[best]
    print(f"encoder: {len(bulk) / encoder_s:.1f} docs/s ({len(texts)} chunks of {len(bulk)} "
          f"docs; passes of {best}; " + ", ".join(f"{len(bulk) / t:.1f} with {n}"
                                                 for n, t in timings.items()) + ")")  # fmt: skip
    del embedder  # the worker gets the CPU to itself

    web_port, prom = free_port(), free_port()
    env = dict(os.environ, LIVELEARN_DATA_DIR=str(tmp), LIVELEARN_WEB_PORT=str(web_port),
               LIVELEARN_METRICS_PORT=str(prom),
               LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
               LIVELEARN_KAFKA__GROUP_PREFIX=f"bench-{suffix}", LIVELEARN_LOG_LEVEL="WARNING",
               LIVELEARN_TOPICS__DOCS=topics.docs, LIVELEARN_TOPICS__QUERIES=topics.queries,
               LIVELEARN_TOPICS__ANSWERS=topics.answers, LIVELEARN_TOPICS__PARTITIONS="1",
               LIVELEARN_MODELS__LEARNER="false")  # fmt: skip
    env.update(kv.split("=", 1) for kv in args.env)
    worker = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=env,
                              stdout=(tmp / "worker.log").open("wb"),
                              stderr=subprocess.STDOUT)  # fmt: skip
    metrics_url = f"http://127.0.0.1:{prom}/metrics"
    web = Web(web_port)
    result: dict[str, Any] = {}
    try:
        wait_ready(web_port, lambda: worker.poll() is None, tmp / "worker.log")
        tree = Tree(worker.pid)
        client = LiveLearnClient(settings)
        client.produce(
            "docs", {"id": "warm-up", "op": "upsert", "text": "warm-up"}, wait=True
        )  # first batch
        while indexed(metrics_url, topics.docs) < 1:
            time.sleep(0.05)
        time.sleep(3)
        cpu0 = tree.cpu_s()
        time.sleep(5)
        result["idle_cores"] = (tree.cpu_s() - cpu0) / 5

        # 2. bulk
        first: list[float] = []
        stop = threading.Event()

        def watch_first(started: float) -> None:
            while not stop.is_set():
                if web.returns(bulk[0]):
                    first.append(time.perf_counter() - started)
                    return
                time.sleep(0.01)

        before = indexed(metrics_url, topics.docs)
        started = time.perf_counter()
        watcher = threading.Thread(target=watch_first, args=(started,), daemon=True)
        watcher.start()
        for d in bulk:
            client.produce("docs", d)
        client.flush()
        while indexed(metrics_url, topics.docs) < before + len(bulk):
            time.sleep(0.05)  # each poll costs the worker a metrics page
        while not web.returns(bulk[-1]):
            time.sleep(0.05)
        last_s = time.perf_counter() - started
        stop.set()
        watcher.join()
        result.update(encoder_docs_per_s=len(bulk) / encoder_s, encoder_pass=best,
                      encoder_docs_per_s_by_pass={str(n): len(bulk) / t
                                                  for n, t in timings.items()},
                      bulk_docs=len(bulk),
                      bulk_chunks=len(texts), bulk_docs_per_s=len(bulk) / last_s,
                      bulk_ratio=encoder_s / last_s,
                      bulk_first_visible_s=first[0] if first else float("nan"),
                      bulk_last_visible_s=last_s)  # fmt: skip
        print(f"bulk: {len(bulk)} docs in {last_s:.1f} s ({len(bulk) / last_s:.0f} docs/s, "
              f"ratio {encoder_s / last_s:.2f}); first visible after "
              f"{result['bulk_first_visible_s']:.2f} s")  # fmt: skip
        time.sleep(3)

        # 3-4. steady streams
        probe_s = args.probe_ms / 1000
        streams_out = {}
        produced = indexed(metrics_url, topics.docs)
        for name, part, rate, probe in (("probed", probed, args.rate, probe_s),
                                        ("unprobed", unprobed, args.rate, None),
                                        ("probed2", probed2, args.rate2, probe_s)):  # fmt: skip
            cpu0 = tree.cpu_s()
            streams_out[name] = out = stream(client, web, part, rate, probe, tree, metrics_url)
            produced += len(part)
            out["caught_up_s"] = wait_indexed(metrics_url, topics.docs, produced)
            out["cpu_s_per_doc_caught_up"] = (tree.cpu_s() - cpu0) / len(part)
            fresh_ms, search_ms = (out[k] * 1000 for k in ("worker_freshness_mean_s",
                                                            "worker_search_mean_s"))  # fmt: skip
            figures = (f"cores {out['cores']:.2f}, {out['cpu_s_per_doc'] * 1000:.1f} ms CPU/doc; "
                       f"worker: freshness mean {fresh_ms:.0f} ms, {out['searches']:.0f} "
                       f"searches, mean {search_ms:.0f} ms; caught up "
                       f"{out['caught_up_s']:.1f} s after the stream")  # fmt: skip
            if probe is not None:
                p50, p99 = out["p50_s"] * 1000, out["p99_s"] * 1000
                figures = f"freshness p50 {p50:.0f} ms, p99 {p99:.0f} ms, " + (
                    f"missing {out['missing']}; {figures}"
                )
            print(f"stream at {rate:g} docs/s ({name}): {figures}")
            time.sleep(3)
        s1, s0, s2 = streams_out["probed"], streams_out["unprobed"], streams_out["probed2"]
        result.update(rate=args.rate, probe_ms=args.probe_ms,
                      freshness_p50_s=s1["p50_s"], freshness_p99_s=s1["p99_s"],
                      freshness_missing=s1["missing"], cores_probed=s1["cores"],
                      cpu_s_per_doc_probed=s1["cpu_s_per_doc"], cores=s0["cores"],
                      cpu_s_per_doc=s0["cpu_s_per_doc"], rate2=args.rate2,
                      freshness2_p50_s=s2["p50_s"], freshness2_p99_s=s2["p99_s"],
                      freshness2_missing=s2["missing"], cores2_probed=s2["cores"],
                      streams=streams_out)  # fmt: skip

        # 5. search while a backlog is indexed
        queries = bulk[:: max(1, len(bulk) // 200)]
        b = backlog_search(client, web, backlog, queries, args.qps, metrics_url, topics.docs)
        result.update(backlog_search_p50_s=b["p50_s"], backlog_search_p99_s=b["p99_s"],
                      backlog=b)  # fmt: skip
        print(f"/search during a {len(backlog)}-doc backlog ({b['indexed_s']:.1f} s, "
              f"{b['queries']} queries at {args.qps:g}/s): p50 {b['p50_s'] * 1000:.0f} ms, "
              f"p99 {b['p99_s'] * 1000:.0f} ms")  # fmt: skip
        time.sleep(4)  # the idle flush

        # 6. idle search
        idle = []
        for q in bulk[1 :: max(1, len(bulk) // args.idle_queries)][: args.idle_queries]:
            asked = time.perf_counter()
            web.search(q["text"])
            idle.append(time.perf_counter() - asked)
        result.update(idle_search_p50_s=percentile(idle, 0.5),
                      idle_search_p99_s=percentile(idle, 0.99))  # fmt: skip
        print(f"idle /search: p50 {result['idle_search_p50_s'] * 1000:.1f} ms, "
              f"p99 {result['idle_search_p99_s'] * 1000:.1f} ms")  # fmt: skip
    finally:
        worker.terminate()
        worker.wait(60)
    result["goals"] = GOALS
    result["met"] = {
        key: (result[key] >= goal if key == "bulk_ratio" else result[key] <= goal)
        for key, goal in GOALS.items()
    }
    machine = machine_info("torch", "transformers", "pymilvus", "confluent_kafka")
    result.update(embedding_model=settings.models.embedding, quick=args.quick,
                  worker_env=args.env, wall_s=time.perf_counter() - wall,
                  machine=machine)  # fmt: skip
    path = write_result(result, args.out, "ingest")
    print(orjson.dumps({k: v for k, v in result.items() if k not in ("streams", "machine")},
                       option=orjson.OPT_INDENT_2).decode())  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
