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
   the docs group and of the learner (its checkpoint's offsets), the worker's own
   ``livelearn_consumer_lag``, and its threads and open file descriptors (a client or thread
   made per loop shows there first).
4. Prints p50/p99 of the prediction latency (produce → prediction produced, from the
   predictions' Kafka timestamps) and of the freshness (produce → searchable, from the
   worker's ``livelearn_freshness_seconds`` histogram, interpolated in its buckets), the
   memory slope, and writes ``bench/results/soak.json`` (``--out``).

5. With ``--heap-profile-s`` (60 by default; 0 turns it off) the worker runs with
   ``LIVELEARN_MEMORY__HEAP_PROFILE_S`` set: ``tracemalloc`` snapshots at that interval
   (:mod:`streams.heap`); the allocation sites that grew most, the traced heap per package and
   glibc's heap counters over time go into the results under ``heap``. Also sampled: the RSS
   of the broker (when the soak started it). milvus-lite 3.x runs inside the worker (threads,
   no process of its own), so its memory is part of the worker's RSS; its share of the Python
   heap is the ``milvus_lite`` package in ``heap``.

Exit status 1 when the memory grows: the RSS slope (a least-squares line, MB/min) over the last
hour (the last third of the run for runs under two hours) above ``--max-slope`` (0.5 MB/min:
~0.7 GB a day), or the mean RSS of the last third more than ``--max-growth`` (20%) above that
of the middle third. A process whose state is bounded (a fixed set of docs, labelled events
that wait for nothing) holds a flat RSS once warm; a leak of a few dozen bytes per record at
200 records/s is 0.5 MB/min. Also 1 when the worker dies or leaves events unpredicted.

``--bootstrap HOST:PORT`` runs against a broker that is already up (the test suite's) instead
of starting one; ``--env KEY=VALUE`` (repeatable) passes settings to the worker, and
``MALLOC_ARENA_MAX`` or ``LD_PRELOAD`` from the soak's own environment reach it too.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/bench_soak.py`` from a plain checkout
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

#: The topic names a soak on a shared broker gives a suffix of its own.
TOPIC_FIELDS = ("docs", "events", "queries", "predictions", "answers", "drift_alerts",
                "training_jobs", "model_updates", "style_examples", "feedback")  # fmt: skip


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


def memory_trend(samples: list[dict[str, float]], key: str = "rss_mb") -> tuple[float, float]:
    """(mean RSS of the last third / that of the middle third - 1, slope in MB/min over both).

    >>> memory_trend([{"t": 60.0 * i, "rss_mb": 100.0 + 10 * i} for i in range(9)])
    (0.2143, 10.0)
    """
    thirds = len(samples) // 3
    middle = [s[key] for s in samples[thirds : 2 * thirds]]
    last = [s[key] for s in samples[2 * thirds :]]
    if not middle or not last:
        return 0.0, 0.0
    growth = (sum(last) / len(last)) / (sum(middle) / len(middle)) - 1
    return round(growth, 4), slope_mb_per_min(samples[thirds:], key)


def slope_mb_per_min(samples: list[dict[str, float]], key: str = "rss_mb") -> float:
    """Least-squares slope of ``key`` against ``t`` (seconds), in MB per minute.

    >>> slope_mb_per_min([{"t": 30.0 * i, "rss_mb": 500.0 + (i % 2)} for i in range(40)])
    0.0
    >>> slope_mb_per_min([{"t": 30.0 * i, "rss_mb": 500.0 + i / 4} for i in range(40)])
    0.5
    >>> slope_mb_per_min([{"t": 0.0, "rss_mb": 1.0}])
    0.0
    """
    if len(samples) < 2:
        return 0.0
    ts = [s["t"] / 60 for s in samples]
    ms = [s[key] for s in samples]
    t_mean, m_mean = sum(ts) / len(ts), sum(ms) / len(ms)
    var = sum((t - t_mean) ** 2 for t in ts)
    if var == 0:
        return 0.0
    slope = sum((t - t_mean) * (m - m_mean) for t, m in zip(ts, ms, strict=True)) / var
    return round(slope, 2)


def bound_window(samples: list[dict[str, float]], minutes: float) -> list[dict[str, float]]:
    """The samples the slope bound is judged on: the last hour of a run of two hours or more,
    else its last third.

    >>> run = [{"t": 60.0 * i} for i in range(150)]  # 150 minutes
    >>> w = bound_window(run, 150); (w[0]["t"], len(w))
    (5340.0, 61)
    >>> w = bound_window(run[:30], 30); (w[0]["t"], len(w))
    (1140.0, 11)
    """
    if not samples:
        return []
    end = samples[-1]["t"]
    span = 3600.0 if minutes >= 120 else minutes * 60 / 3
    return [s for s in samples if s["t"] >= end - span]


def kv_given(key: str, pairs: list[str]) -> bool:
    """Whether ``key`` is one of the ``KEY=VALUE`` pairs.

    >>> kv_given("A", ["A=1", "B=2"]), kv_given("C", ["A=1"])
    (True, False)
    """
    return any(p.split("=", 1)[0] == key for p in pairs)


def process_rss(pid: int | None) -> float:
    """RSS in MB of ``pid`` and its children (-1 when there is no such process)."""
    if pid is None:
        return -1.0
    try:
        import psutil

        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return round(total / 1e6, 1)
    except ImportError:
        return round(rss_mb(pid), 1)
    except Exception:  # gone
        return -1.0


def process_counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of ``pid`` from ``/proc``; -1 each where unknown.

    A worker that makes a Kafka client, a gRPC channel or a thread per batch or per loop shows
    here long before its RSS does: each librdkafka client adds several threads and sockets.

    >>> threads, fds = process_counts(os.getpid())
    >>> threads >= 1 and fds >= 3
    True
    >>> process_counts(-1)
    (-1, -1)
    """
    try:
        return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1, -1


def native_thread_kinds(pid: int) -> dict[str, int]:
    """Threads of ``pid`` counted by their kernel name (``/proc/<pid>/task/*/comm``), digits
    dropped: librdkafka's are ``rdk:broker``, ``rdk:main``...; Python's and OpenMP's carry
    the process's own name. Empty where unknown.

    >>> sum(native_thread_kinds(os.getpid()).values()) >= 1, native_thread_kinds(-1)
    (True, {})
    """
    kinds: dict[str, int] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kinds
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = re.sub(r"\d+$", "", f.read().strip())
        except OSError:  # ended meanwhile
            continue
        kinds[name] = kinds.get(name, 0) + 1
    return dict(sorted(kinds.items()))


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
    parser.add_argument(
        "--max-slope", type=float, default=0.5,
        help="allowed worker RSS slope in MB/min over the last hour (last third if shorter)",
    )  # fmt: skip
    parser.add_argument(
        "--heap-profile-s", type=float, default=60.0,
        help="seconds between the worker's tracemalloc snapshots; 0: no heap profile",
    )  # fmt: skip
    parser.add_argument(
        "--drain-s", type=float, default=120.0,
        help="after the load, how long to wait for the last predictions",
    )  # fmt: skip
    parser.add_argument("--bootstrap", help="an existing broker to use instead of starting one")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="a worker setting"
    )
    parser.add_argument("--out", type=Path, help="result file (default bench/results/soak.json)")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, a kill) ends the soak through its finally: the worker and the
    # broker it started are stopped, not left running.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) if main_thread else None
    try:
        return soak(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def soak(args: argparse.Namespace) -> int:
    """Run the soak that ``args`` (from :func:`main`'s parser) describes; 1 on a failure."""
    if args.quick:
        args.minutes, args.sample_s = 1.0, 2.0

    from river import datasets

    from retrieval.corpus import stdlib_corpus
    from streams.broker import LocalBroker, free_port
    from streams.kafka import admin_client
    from streams.sdk import LiveLearnClient
    from streams.settings import KafkaSettings, MemorySettings, Settings, TopicSettings
    from streams.status import group_lag
    from streams.supervisor import Child
    from streams.topics import ensure_topics, topic_specs

    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    broker = None if args.bootstrap else LocalBroker(tmp)
    bootstrap = args.bootstrap or broker.start()  # type: ignore[union-attr]
    # Topics and groups of their own when the broker is shared (the test suite's).
    names: dict[str, str] = {}
    group_prefix = "livelearn"
    if args.bootstrap:
        suffix = tmp.name.rsplit("-", 1)[-1].lower()
        names = {f: f"{getattr(TopicSettings(), f)}-{suffix}" for f in TOPIC_FIELDS}
        group_prefix = f"soak-{suffix}"
    settings = Settings(
        data_dir=tmp, topics=TopicSettings(**names),  # type: ignore[arg-type]
        kafka=KafkaSettings(bootstrap_servers=bootstrap, group_prefix=group_prefix),
    )  # fmt: skip
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
        LIVELEARN_MEMORY__HEAP_PROFILE_S=str(args.heap_profile_s),
    )
    env.update({f"LIVELEARN_TOPICS__{f.upper()}": name for f, name in names.items()})
    env["LIVELEARN_KAFKA__GROUP_PREFIX"] = group_prefix
    env.update(kv.split("=", 1) for kv in args.env)
    worker = Child(["worker"], env, tmp / "worker.log")
    broker_pid = broker.proc.pid if broker is not None and broker.proc is not None else None
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
                threads, fds = process_counts(worker.proc.pid)
                sample = {
                    "t": round(elapsed, 1),
                    "rss_mb": round(rss_mb(worker.proc.pid), 1),
                    "broker_rss_mb": process_rss(broker_pid),
                    "worker_events_lag": metric_sum(text, "livelearn_consumer_lag"),
                    "threads": threads,
                    "fds": fds,
                    "thread_kinds": native_thread_kinds(worker.proc.pid),
                }
                for name, (group, topic) in groups.items():
                    lag = group_lag(settings, bootstrap, group, topic).lag
                    sample[f"{name}_lag"] = -1 if lag is None else lag
                samples.append(sample)
                print(
                    f"  t={sample['t']:>7.1f}s rss {sample['rss_mb']:7.1f} MB "
                    f"(broker {sample['broker_rss_mb']:.0f})  lag docs "
                    f"{sample['docs_lag']:>5} events {sample['events_lag']:>6} "
                    f"(worker {sample['worker_events_lag']:.0f})  threads {threads} fds {fds}",
                    flush=True,
                )
            time.sleep(0.01)
        client.flush(60)
        unpredicted = clock.close(drain_s=0 if failures else args.drain_s)
        if unpredicted:
            failures.append(f"{unpredicted} of {sent_events} events never predicted")
        final = scrape(prom)
    finally:
        worker.stop()
        if broker is not None:
            broker.stop()

    growth, slope = memory_trend(samples)
    window = bound_window(samples, args.minutes)
    bound_slope = slope_mb_per_min(window)
    if bound_slope > args.max_slope:
        failures.append(
            f"worker RSS rose {bound_slope:+.2f} MB/min over the last "
            f"{(window[-1]['t'] - window[0]['t']) / 60:.0f} min (bound {args.max_slope} MB/min)"
        )
    if growth > args.max_growth:
        failures.append(f"memory grew {growth:.0%} (last third vs middle third)")
    heap_path = tmp / "heap-profile.json"
    heap = orjson.loads(heap_path.read_bytes()) if heap_path.exists() else None
    lat = clock.latencies()

    def per_process(key: str) -> dict[str, Any]:
        got = [s for s in samples if s[key] >= 0]
        return {
            "rss_mb_first": got[0][key] if got else None,
            "rss_mb_last": got[-1][key] if got else None,
            "rss_mb_max": max((s[key] for s in got), default=None),
            "slope_mb_per_min_bound_window": slope_mb_per_min(
                [s for s in window if s[key] >= 0], key),
            "slope_mb_per_min_last_two_thirds": memory_trend(got, key)[1] if got else None,
        }  # fmt: skip

    result = {
        "minutes": args.minutes, "events_per_s": args.rate, "docs_per_s": args.docs_rate,
        "events_sent": sent_events, "docs_sent": sent_docs, "cpus": os.cpu_count(),
        "memory_defaults": MemorySettings().model_dump(),
        "worker_env": {k: v for k, v in env.items() if k.startswith("LIVELEARN_MEMORY__")
                       or k in ("MALLOC_ARENA_MAX", "LD_PRELOAD") or kv_given(k, args.env)},
        "prediction_latency_p50_s": common.percentile(lat, 0.5),
        "prediction_latency_p99_s": common.percentile(lat, 0.99),
        "freshness_p50_s": histogram_quantile(final, "livelearn_freshness_seconds", 0.5),
        "freshness_p99_s": histogram_quantile(final, "livelearn_freshness_seconds", 0.99),
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_growth_last_vs_middle_third": growth, "rss_slope_mb_per_min": slope,
        "rss_slope_bound_window_mb_per_min": bound_slope,
        "bound_window_s": [window[0]["t"], window[-1]["t"]] if window else None,
        "processes": {
            "worker (with milvus-lite, in-process)": per_process("rss_mb"),
            "broker": per_process("broker_rss_mb") if broker_pid else "not started by the soak",
        },
        "worker_threads_min_max": [min((s["threads"] for s in samples), default=None),
                                   max((s["threads"] for s in samples), default=None)],
        "worker_fds_min_max": [min((s["fds"] for s in samples), default=None),
                               max((s["fds"] for s in samples), default=None)],
        "max_docs_lag": max((s["docs_lag"] for s in samples), default=None),
        "max_events_lag": max((s["events_lag"] for s in samples), default=None),
        "dead_letters": metric_sum(final, "livelearn_dead_letters_total"),
        "retries": metric_sum(final, "livelearn_retries_total"),
        "failures": failures, "heap": heap, "samples": samples,
    }  # fmt: skip
    path = common.write_result(result, args.out, "soak")
    print(
        f"prediction latency p50 {result['prediction_latency_p50_s'] * 1000:.1f} ms  "
        f"p99 {result['prediction_latency_p99_s'] * 1000:.1f} ms ({len(lat)} events)\n"
        f"freshness p50 {result['freshness_p50_s']:.2f} s  p99 {result['freshness_p99_s']:.2f} s"
        f" ({sent_docs} docs)\n"
        f"memory {result['rss_mb_first']} → {result['rss_mb_last']} MB, slope {slope:+.1f} MB/min "
        f"(last two thirds), {bound_slope:+.2f} MB/min in the bound's window "
        f"(bound {args.max_slope}), last third vs middle third {growth:+.1%}\n"
        f"max lag: docs {result['max_docs_lag']}, events {result['max_events_lag']}\n"
        f"wrote {path}"
    )
    if heap and heap.get("growth_since_middle"):
        print("heap sites still growing in the second half (KiB):")
        for site in heap["growth_since_middle"][:8]:
            print(f"  {site['size_kb']:>9.1f}  {site['site']}  {site['code']}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
