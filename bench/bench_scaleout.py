"""Scale-out on one machine: predict-only replicas 1 → 2 → 3, indexers 1 → 2.

Run (starts its own embedded Kafka and a milvus-lite server in a temporary folder)::

    python -m bench scaleout --quick        # a few minutes on 2 CPU cores
    python -m bench scaleout                # more events and docs per step

1. **predict-only replicas** (``LIVELEARN_MODELS__PREDICT=replicas``) on a 6-partition
   ``events``: one worker, then a second, then a third join the predictors' group (each
   worker is a real ``livelearn worker`` child; the first also holds the learner's lease).
   At each size, a burst of unlabelled events is produced at once: ``events_per_s`` from the
   first produce to the last prediction; then a steady rate for a few seconds: ``p99_ms``
   from produce to the prediction's record.
2. **indexers** on a Milvus server (``--milvus standalone``, the default: the Milvus 2.3.5
   standalone server the ``milvus`` wheel ships, one process, not a Milvus cluster;
   ``--milvus lite``: milvus-lite's gRPC server): one worker, then two, index a burst of
   documents: ``docs_per_s`` from the first produce to the docs group's lag reaching 0.

Every process shares the machine's cores (``cpus_usable`` in the result): on two cores the
broker, the Milvus server, the producer and every worker compete for them, so a second or
third replica can add at most what the cores left idle; the figures show that ceiling, not
what the same replicas do on their own machines. Writes ``bench/results/scaleout.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import PredictionClock, machine_info, percentile, write_result  # noqa: E402


class Worker:
    """A ``livelearn worker`` child with its own web port and log."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        from streams.broker import free_port

        self.web = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "streams", "worker"],
            env={**env, "LIVELEARN_WEB_PORT": str(self.web)},
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_healthy(self, timeout_s: float = 300) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"a worker exited; see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web}/healthz", timeout=30):
                    return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"a worker was not healthy after {timeout_s:.0f} s; see {self.log}")

    def warm(self, timeout_s: float = 300) -> None:
        """One ``/search``: the worker loads its embedder on first use, which would otherwise
        fall inside the first measurement (the 1-replica step) and slow it."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.web}/search?q=warm+up&k=1"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as exc:  # 503: another worker holds the milvus-lite file
            if exc.code != 503:
                raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def milvus_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """milvus-lite as a Milvus server process (the Milvus gRPC protocol on a local port)."""
    from streams.broker import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the milvus-lite server did not start; see {log}")


def milvus_standalone(data_dir: Path) -> tuple[Any, str]:
    """A real Milvus standalone server (the ``milvus`` wheel: 2.3.5, embedded etcd, local
    storage, one process), as in tests/integration/test_milvus_server.py."""
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(data_dir))
    server.start()  # picks free ports for its proxy, etcd and metrics
    return server, f"http://127.0.0.1:{server.listen_port}"


def group_members(settings: Any, bootstrap: str, group: str) -> int:
    from streams.kafka import admin_client

    admin = admin_client(settings, bootstrap)
    described = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return sum(1 for m in described.members if m.assignment.topic_partitions)


def wait_members(settings: Any, bootstrap: str, group: str, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    got = 0
    while time.monotonic() < deadline:
        try:
            got = group_members(settings, bootstrap, group)
        except Exception:  # the group is being formed
            got = 0
        if got == n:
            return
        time.sleep(0.5)
    raise SystemExit(f"group {group} has {got} members with partitions, not {n}")


def burst(settings: Any, bootstrap: str, prod: Any, n_burst: int, tag: str) -> tuple[float, int]:
    """``n_burst`` events produced at once: events/s from the first produce to the last
    prediction, and how many were never predicted."""
    import orjson

    from streams.kafka import produce_or_wait

    topic = settings.topics.events
    clock = PredictionClock(settings, bootstrap, keep_values=False)
    started = time.time()
    for i in range(n_burst):
        eid = f"{tag}-b{i}"
        clock.mark(eid, started)
        value = {"id": eid, "features": {"x": float(i % 97), "y": float(i % 13)}}
        produce_or_wait(prod, topic, orjson.dumps(value), key=eid.encode())
    prod.flush(60)
    missing = clock.close(180)
    burst_s = max(c for _s, _p, c, _v in clock.seen) - started if clock.seen else float("nan")
    return n_burst / burst_s, missing


def predict_step(settings: Any, bootstrap: str, prod: Any, n_burst: int, rate: int,
                 steady_s: float, tag: str, repeats: int = 1) -> dict[str, Any]:  # fmt: skip
    """One size: ``repeats`` bursts (events/s: their median, and the range), then a steady
    rate (p50/p99 produce → prediction)."""
    import orjson

    from streams.kafka import produce_or_wait

    topic = settings.topics.events
    rates, missing = [], 0
    for r in range(repeats):
        got, lost = burst(settings, bootstrap, prod, n_burst, f"{tag}-{r}")
        rates.append(got)
        missing += lost
    clock = PredictionClock(settings, bootstrap, keep_values=False)
    n_steady = int(rate * steady_s)
    t0 = time.monotonic()
    for i in range(n_steady):
        eid = f"{tag}-s{i}"
        clock.mark(eid)
        value = {"id": eid, "features": {"x": float(i % 97), "y": float(i % 13)}}
        produce_or_wait(prod, topic, orjson.dumps(value), key=eid.encode())
        prod.poll(0)
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    prod.flush(60)
    missing += clock.close(60)
    lat = clock.latencies()
    return {
        "events_per_s": round(percentile(rates, 0.5), 1),
        "events_per_s_range": [round(min(rates), 1), round(max(rates), 1)],
        "bursts": repeats,
        "burst_events": n_burst,
        "steady_rate": rate,
        "p50_ms": round(percentile(lat, 0.5) * 1000, 1),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "never_predicted": missing,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scaleout",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fewer events and docs")
    parser.add_argument("--replicas", type=int, default=3, help="largest replica count")
    parser.add_argument("--repeats", type=int, default=3, help="bursts per size (median)")
    parser.add_argument("--milvus", choices=("standalone", "lite"), default="standalone",
                        help="the indexers' server: Milvus standalone 2.3.5 (the `milvus` "
                        "wheel) or milvus-lite's gRPC server")  # fmt: skip
    parser.add_argument("--out", default="", help="results file (default bench/results/)")
    args = parser.parse_args(argv)
    n_burst, rate, steady_s, n_docs = (3000, 200, 5.0, 120) if args.quick else (
        10000, 300, 15.0, 300)  # fmt: skip

    from retrieval.corpus import scientific_corpus
    from streams.broker import LocalBroker
    from streams.kafka import admin_client, producer
    from streams.sdk import LiveLearnClient
    from streams.settings import KafkaSettings, Settings, TopicSettings
    from streams.status import group_lag
    from streams.topics import ensure_topics, topic_specs

    machine = machine_info("faust", "river", "pymilvus", "milvus_lite")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    broker = LocalBroker(tmp)
    bootstrap = broker.start()
    workers: list[Worker] = []
    milvus: subprocess.Popen[bytes] | None = None
    standalone: Any = None
    result: dict[str, Any] = {
        "machine": machine,
        "predict": [],
        "index": [],
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        suffix = uuid.uuid4().hex[:8]
        fields = ("docs", "events", "queries", "predictions", "answers", "drift_alerts",
                  "training_jobs", "model_updates", "style_examples", "feedback")  # fmt: skip
        names = {f: f"so-{f.replace('_', '-')}-{suffix}" for f in fields}
        topics = TopicSettings(**names, partitions=6)
        kafka = KafkaSettings(bootstrap_servers=bootstrap, group_prefix=f"so-{suffix}",
                              session_timeout_ms=6000)  # fmt: skip
        settings = Settings(data_dir=tmp / "data", topics=topics, kafka=kafka)
        ensure_topics(admin_client(settings, bootstrap), topic_specs(topics))
        base_env = dict(
            os.environ, LIVELEARN_DATA_DIR=str(settings.data_dir),
            LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
            LIVELEARN_KAFKA__GROUP_PREFIX=kafka.group_prefix,
            LIVELEARN_KAFKA__SESSION_TIMEOUT_MS="6000", LIVELEARN_TOPICS__PARTITIONS="6",
            LIVELEARN_LOG_LEVEL="WARNING",
            **{f"LIVELEARN_TOPICS__{f.upper()}": v for f, v in names.items()},
        )  # fmt: skip
        prod = producer(settings, bootstrap)

        # 1. predict-only replicas 1 → 2 → 3
        env = {**base_env, "LIVELEARN_MODELS__PREDICT": "replicas"}
        group = f"{kafka.group_prefix}-predictors-{settings.models.name}"
        for size in range(1, args.replicas + 1):
            worker = Worker(env, tmp / f"predict-{size}.log")
            workers.append(worker)
            worker.wait_healthy()
            worker.warm()
            wait_members(settings, bootstrap, group, size, 180)
            predict_step(settings, bootstrap, prod, 1000, rate, 3.0, f"w{size}")  # settle
            got = predict_step(settings, bootstrap, prod, n_burst, rate, steady_s, f"r{size}",
                               args.repeats)  # fmt: skip
            step = {"replicas": size, **got}
            result["predict"].append(step)
            lo, hi = step["events_per_s_range"]
            print(f"replicas {size}: {step['events_per_s']:,.0f} events/s (median of "
                  f"{args.repeats} bursts of {n_burst}: {lo:,.0f}–{hi:,.0f}), p50 "
                  f"{step['p50_ms']} ms / p99 {step['p99_ms']} ms at {rate}/s",
                  flush=True)  # fmt: skip
        for worker in workers:
            worker.stop()
        workers.clear()

        # 2. indexers 1 → 2 on a Milvus server
        if args.milvus == "standalone":
            standalone, uri = milvus_standalone(tmp / "milvus")
        else:
            milvus, uri = milvus_server(tmp / "milvus", tmp / "milvus.log")
        result["milvus_server"] = args.milvus
        docs = scientific_corpus(2 * n_docs + 20, min_chars=150)  # numpy/SciPy docstrings
        assert len(docs) == 2 * n_docs + 20, len(docs)
        client = LiveLearnClient(settings)
        env = {**base_env, "LIVELEARN_MILVUS__URI": uri, "LIVELEARN_MODELS__LEARNER": "false"}
        wgroup = f"{kafka.group_prefix}-worker"
        for size in (1, 2):
            worker = Worker(env, tmp / f"index-{size}.log")
            workers.append(worker)
            worker.wait_healthy()
            worker.warm()
            wait_members(settings, bootstrap, wgroup, size, 180)
            for d in docs[-20 * size :][:10]:  # settle: the new member indexes something
                client.produce("docs", dict(d, id=f"warm{size}:{d['id']}"))
            client.flush()
            while group_lag(settings, bootstrap, wgroup, topics.docs).lag != 0:
                time.sleep(0.2)
            batch = docs[(size - 1) * n_docs : size * n_docs]
            started = time.perf_counter()
            for d in batch:
                client.produce("docs", d)
            client.flush()
            while group_lag(settings, bootstrap, wgroup, topics.docs).lag != 0:
                time.sleep(0.05)
            took = time.perf_counter() - started
            step = {"indexers": size, "docs": len(batch), "docs_per_s": round(len(batch) / took, 1)}
            result["index"].append(step)
            print(f"indexers {size}: {step['docs_per_s']} docs/s ({len(batch)} docs; committed)",
                  flush=True)  # fmt: skip
    finally:
        for worker in workers:
            worker.stop()
        if standalone is not None:
            standalone.stop()
        if milvus is not None and milvus.poll() is None:
            os.killpg(milvus.pid, signal.SIGINT)
            milvus.wait(30)
        broker.stop()
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    p, ix = result["predict"], result["index"]
    if len(p) > 1:
        result["predict_speedup"] = [round(s["events_per_s"] / p[0]["events_per_s"], 2) for s in p]
    if len(ix) > 1:
        result["index_speedup"] = round(ix[1]["docs_per_s"] / ix[0]["docs_per_s"], 2)
    print(f"speed-up: predict {result.get('predict_speedup')}, index "
          f"{result.get('index_speedup')} on {machine['cpus_usable']} usable cores")  # fmt: skip
    path = write_result(result, args.out or None, "scaleout")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
