"""Soak: a steady load of events and docs on the embedded stack; memory, lag and latency must
stay flat.

Run (a fresh embedded stack in a temporary folder: real Kafka, a worker child process with
milvus-lite)::

    python -m bench soak                          # 30 minutes, 200 events/s, 5 docs/s
    python -m bench soak --quick                  # 1 minute: does it work at all
    python -m bench soak --minutes 120 --rate 500 --docs-rate 10

1. Starts Kafka (``LocalBroker``), creates the topics and runs ``livelearn worker`` as a
   child (``streams.supervisor.Child``), with its metrics port; waits until it has indexed
   and predicted a first record.
2. Produces ``--rate`` labelled events per second (river's Phishing rows, cycled, fresh ids)
   and ``--docs-rate`` docs per second (standard-library docstrings; after the first pass the
   same ids come back as updates, so the collection stays the same size and a growing process
   is a leak, not data) for ``--minutes``.
3. Every ``--sample-s`` seconds samples the worker's resident memory (RSS), the consumer lag of
   the docs group and of the learner (its checkpoint's offsets) and the worker's own
   ``livelearn_consumer_lag``.
4. Prints p50/p99 of the prediction latency (produce → prediction produced, from the
   predictions' Kafka timestamps) and of the freshness (produce → searchable, from the
   worker's ``livelearn_freshness_seconds`` histogram, interpolated in its buckets), the
   memory slope, and writes ``bench/results/soak.json`` (``--out``).

Exit status 1 when the memory grows: the mean RSS of the last third of the samples more than
20% above that of the middle third (the first third is left out: caches fill and milvus-lite
settles). A process whose state is bounded (a fixed set of docs, labelled events that wait for
nothing) holds a flat RSS once warm; Python's allocator and milvus-lite's segments make it wobble
by a few percent, and a leak of a few kB per record (200/s) adds 20% of a ~1 GB worker within
tens of minutes. Also 1 when the worker dies or leaves events unpredicted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/bench_soak.py`` from a plain checkout
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (psutil, else ``/proc/<pid>/status``)."""
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 1e6
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1e3  # kB
        raise RuntimeError(f"no VmRSS for pid {pid}") from None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text: str = resp.read().decode()
        return text


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all labels) in a Prometheus text scrape."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_quantile(text: str, name: str, q: float) -> float:
    """The ``q`` quantile of a Prometheus histogram, interpolated linearly in its bucket."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def memory_trend(samples: list[dict[str, float]]) -> tuple[float, float]:
    """(mean RSS of the last third / that of the middle third - 1, slope in MB/min over both).

    >>> memory_trend([{"t": 60.0 * i, "rss_mb": 100.0 + 10 * i} for i in range(9)])
    (0.2143, 10.0)
    """
    thirds = len(samples) // 3
    middle = [s["rss_mb"] for s in samples[thirds : 2 * thirds]]
    last = [s["rss_mb"] for s in samples[2 * thirds :]]
    if not middle or not last:
        return 0.0, 0.0
    growth = (sum(last) / len(last)) / (sum(middle) / len(middle)) - 1
    ts = [s["t"] / 60 for s in samples[thirds:]]
    ms = [s["rss_mb"] for s in samples[thirds:]]
    t_mean, m_mean = sum(ts) / len(ts), sum(ms) / len(ms)
    var = sum((t - t_mean) ** 2 for t in ts)
    slope = sum((t - t_mean) * (m - m_mean) for t, m in zip(ts, ms, strict=True)) / var
    return round(growth, 4), round(slope, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--rate", type=float, default=200.0, help="labelled events per second")
    parser.add_argument("--docs-rate", type=float, default=5.0, help="docs per second")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--quick", action="store_true", help="1 minute, a sample every 2 s")
    parser.add_argument(
        "--max-growth", type=float, default=0.20, help="allowed RSS rise, last vs middle third"
    )
    parser.add_argument("--out", type=Path, help="result file (default bench/results/soak.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.sample_s = 1.0, 2.0

    from river import datasets

    from retrieval.corpus import stdlib_corpus
    from streams.broker import LocalBroker, free_port
    from streams.kafka import admin_client
    from streams.sdk import LiveLearnClient
    from streams.settings import KafkaSettings, Settings
    from streams.status import group_lag
    from streams.supervisor import Child
    from streams.topics import ensure_topics, topic_specs

    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    broker = LocalBroker(tmp)
    bootstrap = broker.start()
    settings = Settings(data_dir=tmp, kafka=KafkaSettings(bootstrap_servers=bootstrap))
    ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    web, prom = free_port(), free_port()
    env = dict(
        os.environ,
        LIVELEARN_DATA_DIR=str(tmp),
        LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        LIVELEARN_WEB_PORT=str(web),
        LIVELEARN_METRICS_PORT=str(prom),
        LIVELEARN_LOG_LEVEL="WARNING",
        LIVELEARN_TRIGGER__VOLUME_THRESHOLD="0",  # no trainer runs here: ask for no jobs
    )
    worker = Child(["worker"], env, tmp / "worker.log")
    rows = list(datasets.Phishing())
    corpus = stdlib_corpus(400, min_chars=150)
    groups = {
        "docs": (f"{settings.kafka.group_prefix}-worker", settings.topics.docs),
        "events": (f"{settings.kafka.group_prefix}-learner-{settings.models.name}",
                   settings.topics.events),
    }  # fmt: skip
    samples: list[dict[str, float]] = []
    sent_events = sent_docs = 0
    failures: list[str] = []
    try:
        common.wait_ready(web, worker.alive, worker.log_path, 300, metrics_port=prom)
        client = LiveLearnClient(settings)
        clock = common.PredictionClock(settings, bootstrap, keep_values=False)
        print(
            f"worker ready (pid {worker.proc.pid}, log {worker.log_path}); load: "
            f"{args.rate:g} events/s, {args.docs_rate:g} docs/s for {args.minutes:g} min"
        )
        started = time.monotonic()
        duration = args.minutes * 60
        next_sample = started
        while (now := time.monotonic()) < started + duration:
            if not worker.alive():
                failures.append("the worker died")
                break
            elapsed = now - started
            while sent_events < elapsed * args.rate:
                x, y = rows[sent_events % len(rows)]
                event_id = f"e{sent_events}"
                clock.mark(event_id)
                client.send_event(event_id, features=x, label=y)
                sent_events += 1
            while sent_docs < elapsed * args.docs_rate:
                doc = dict(corpus[sent_docs % len(corpus)])
                revision = sent_docs // len(corpus)
                if revision:  # the same ids again: updates, the collection keeps its size
                    doc["text"] += f" (revision {revision})"
                client.upsert_doc(doc["id"], doc["text"], title=doc["title"], source=doc["source"])
                sent_docs += 1
            if now >= next_sample:
                next_sample += args.sample_s
                text = scrape(prom)
                sample = {
                    "t": round(elapsed, 1),
                    "rss_mb": round(rss_mb(worker.proc.pid), 1),
                    "worker_events_lag": metric_sum(text, "livelearn_consumer_lag"),
                }
                for name, (group, topic) in groups.items():
                    lag = group_lag(settings, bootstrap, group, topic).lag
                    sample[f"{name}_lag"] = -1 if lag is None else lag
                samples.append(sample)
                print(
                    f"  t={sample['t']:>7.1f}s rss {sample['rss_mb']:7.1f} MB  lag docs "
                    f"{sample['docs_lag']:>5} events {sample['events_lag']:>6} "
                    f"(worker {sample['worker_events_lag']:.0f})",
                    flush=True,
                )
            time.sleep(0.01)
        client.flush(60)
        unpredicted = clock.close(drain_s=0 if failures else 120)
        if unpredicted:
            failures.append(f"{unpredicted} of {sent_events} events never predicted")
        final = scrape(prom)
    finally:
        worker.stop()
        broker.stop()

    growth, slope = memory_trend(samples)
    if growth > args.max_growth:
        failures.append(f"memory grew {growth:.0%} (last third vs middle third)")
    lat = clock.latencies()
    result = {
        "minutes": args.minutes, "events_per_s": args.rate, "docs_per_s": args.docs_rate,
        "events_sent": sent_events, "docs_sent": sent_docs, "cpus": os.cpu_count(),
        "prediction_latency_p50_s": common.percentile(lat, 0.5),
        "prediction_latency_p99_s": common.percentile(lat, 0.99),
        "freshness_p50_s": histogram_quantile(final, "livelearn_freshness_seconds", 0.5),
        "freshness_p99_s": histogram_quantile(final, "livelearn_freshness_seconds", 0.99),
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_last_vs_middle_third": growth, "rss_slope_mb_per_min": slope,
        "max_docs_lag": max((s["docs_lag"] for s in samples), default=None),
        "max_events_lag": max((s["events_lag"] for s in samples), default=None),
        "dead_letters": metric_sum(final, "livelearn_dead_letters_total"),
        "retries": metric_sum(final, "livelearn_retries_total"),
        "failures": failures, "samples": samples,
    }  # fmt: skip
    path = common.write_result(result, args.out, "soak")
    print(
        f"prediction latency p50 {result['prediction_latency_p50_s'] * 1000:.1f} ms  "
        f"p99 {result['prediction_latency_p99_s'] * 1000:.1f} ms ({len(lat)} events)\n"
        f"freshness p50 {result['freshness_p50_s']:.2f} s  p99 {result['freshness_p99_s']:.2f} s"
        f" ({sent_docs} docs)\n"
        f"memory {result['rss_mb_first']} → {result['rss_mb_last']} MB, slope {slope:+.1f} MB/min, "
        f"last third vs middle third {growth:+.1%} (bound {args.max_growth:.0%})\n"
        f"max lag: docs {result['max_docs_lag']}, events {result['max_events_lag']}\n"
        f"wrote {path}"
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
