"""events → predictions: throughput through Kafka against bare river, and latency at 1,000/s.

Run (starts its own embedded Kafka in a temporary folder, or uses ``--bootstrap``)::

    python -m bench online --quick      # 10,000 events, 5 s of latency: < 2 min on 2 CPU cores
    python -m bench online              # 50,000 events, 30 s of latency
    python -m bench online --bootstrap 127.0.0.1:9092 --out /tmp/online.json

**Records**: river's bundled Phishing rows (1,250, nine numeric features, a boolean label)
cycled with fresh ids (``o0``, ``o1``, ...) to the volume asked for, in one fixed order. Both
sides see exactly these records in this order: a warm-up slice, then the measured slice, then
the latency slice.

1. **bare river**: the worker's own model (``trainers.online.learner.build_model`` of
   ``LIVELEARN_MODELS__ONLINE``, the default ``logreg``: numbers standardised, strings one-hot,
   logistic regression), ``predict_one`` then ``learn_one`` over every record, no Kafka, no
   JSON: ``river_events_per_s`` over the measured slice (median of ``--repeats`` runs, each a
   fresh model over the whole stream), ``river_accuracy`` over the measured and latency slices.
2. **through Kafka**: a real ``python -m streams worker`` child (its learner loop: consume
   ``events``, decode and validate, predict then learn, produce ``predictions``; every 1,000
   records or 10 s wait for Kafka's acknowledgement and checkpoint). It is warmed up first: the
   warm-up slice is predicted and the embedder (which every worker loads for the docs path) is
   loaded, so neither start-up nor model loading is timed. Then the measured slice, encoded and
   validated beforehand as the SDK does, is produced flat out, and ``events_per_s`` = records /
   (first produce → the ``predictions`` topic holding all of their predictions).
   ``throughput_ratio`` = ``events_per_s`` / ``river_events_per_s`` (target ≥ 0.5).
   ``accuracy`` is the prequential accuracy of the predictions read back (measured and latency
   slices) against the labels; with one partition the learner sees river's order, so it should
   equal ``river_accuracy``.
3. **latency at a fixed rate**: the latency slice sent through the SDK
   (``LiveLearnClient.send_event``) at ``--rate`` events/s (1,000) for ``--latency-s`` seconds
   while a consumer follows ``predictions``; per event, the time its prediction is consumed
   minus the time it was sent (one host, one clock): ``latency_p50_ms``, ``latency_p99_ms``
   (target p99 ≤ 20 ms). Split into stages with the prediction's fields: *send → learner*
   (producer linger, broker, the learner's fetch and batch wait; up to the ``ts`` its batch
   started processing), *in the learner* (up to the prediction record's timestamp, set when the
   learner produces it) and *learner → consumer* (acknowledgement, fetch). The worker's own
   per-record ``latency_ms`` (predict and learn of one record) is reported beside them.

Settings: production defaults except one partition per topic (one known order, so accuracy is
comparable with river's; one learner is single-writer whatever the partition count) and the
topic and consumer-group names (unique per run). The concept-drift and input-drift monitors,
the trigger policy and checkpoints stay on: they are on the learner's path in production. No
trainer runs, so a job the policy asks for is only a record on ``training-jobs``.

Also reported (diagnostics, no target): ``service_events_per_s``, the worker's domain object
(``streams.services.make_online_service``, checkpoints included) fed the same measured slice
in-process in the learner's batches of 500, no Kafka and no JSON (and
``service_events_per_s_without_data_drift``, the same with the input-drift monitor off): the
gap between it and ``river_events_per_s`` is the domain's cost, the gap between it and
``events_per_s`` is Kafka's and the codec's. How the learner batched the events in each run
(``*_learner_batch*``), and the load average of the machine before the run
(``machine.loadavg_1m_before``): the broker, the worker and this process share its cores.

``--env NAME=VALUE`` sets a setting for both sides (the bare model follows
``LIVELEARN_MODELS__ONLINE``), e.g. ``--env LIVELEARN_TRIGGER__DATA_DRIFT=false``.

Prints a summary and writes ``bench/results/online.json`` (``--out``). Exit status 1 when the
worker died or events went unpredicted; targets missed are reported, not failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/bench_online.py`` from a plain checkout
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

RESULTS = common.RESULTS / "online.json"
TARGET_RATIO = 0.5
TARGET_P99_MS = 20.0
BATCH = 500  # the learner loop's batch size (streams.learner_worker.LearnerLoop)
Record = tuple[str, dict[str, Any], Any]  # id, features, label

STAGES = {
    "send_to_learner_ms": "send → learner (producer linger, broker, the learner's fetch and "
    "batch wait)",
    "in_learner_ms": "in the learner (decode, predict+learn of the batch, produce)",
    "learner_to_consumer_ms": "learner → consumer (acknowledgement, fetch)",
}


def make_records(n: int) -> list[Record]:
    """Phishing rows, cycled, with fresh ids: the same list for both sides."""
    from river import datasets

    rows = list(datasets.Phishing())
    return [(f"o{i}", rows[i % len(rows)][0], rows[i % len(rows)][1]) for i in range(n)]


def bare_river(
    records: list[Record], spec: str, timed: slice, scored: slice
) -> tuple[float, float]:
    """(events/s over ``timed``, prequential accuracy over ``scored``) of a fresh model's
    ``predict_one`` then ``learn_one`` over every record."""
    from trainers.online.learner import build_model

    model = build_model(spec)
    hits = [False] * len(records)
    start, stop = timed.start or 0, timed.stop or len(records)
    for i, (_id, x, y) in enumerate(records[:start]):
        hits[i] = model.predict_one(x) == y
        model.learn_one(x, y)
    began = time.perf_counter()
    for i, (_id, x, y) in enumerate(records[start:stop], start):
        hits[i] = model.predict_one(x) == y
        model.learn_one(x, y)
    rate = (stop - start) / (time.perf_counter() - began)
    for i, (_id, x, y) in enumerate(records[stop:], stop):
        hits[i] = model.predict_one(x) == y
        model.learn_one(x, y)
    scored_hits = hits[scored]
    return rate, sum(scored_hits) / len(scored_hits)


def service_rate(settings: Any, records: list[Record], timed: slice) -> float:
    """The worker's domain object in-process over ``timed`` (after the records before it), in
    the learner loop's batches, checkpoints included: events/s."""
    from streams.processing import DecodedRecord
    from streams.services import make_online_service

    service = make_online_service(settings)
    decoded = [DecodedRecord(0, i, {"id": rid, "ts": 0.0, "features": x, "label": y}, 0.0)
               for i, (rid, x, y) in enumerate(records[: timed.stop])]  # fmt: skip

    def run(batch: list[DecodedRecord]) -> None:
        for i in range(0, len(batch), BATCH):
            service.process(batch[i : i + BATCH])
            service.maybe_checkpoint()

    start = timed.start or 0
    with warnings.catch_warnings():  # scipy's ks_2samp falls back to its asymptotic p-value
        warnings.filterwarnings("ignore", "ks_2samp: Exact", RuntimeWarning)
        run(decoded[:start])
        began = time.perf_counter()
        run(decoded[start:])
        return (len(decoded) - start) / (time.perf_counter() - began)


def end_offset(c: Any, topic: str) -> int:
    """Records in the one-partition ``topic`` (its high watermark)."""
    from confluent_kafka import TopicPartition

    high: int = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    return high


def wait_for_end(c: Any, topic: str, target: int, timeout_s: float, child: Any) -> float:
    """Poll ``topic``'s end offset (every 10 ms) until it reaches ``target``; the time (epoch)
    it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if end_offset(c, topic) >= target:
            return time.time()
        if not child.alive():
            raise SystemExit(f"the worker exited; see {child.log_path}")
        time.sleep(0.01)
    raise SystemExit(f"{topic} had not reached {target} records after {timeout_s:.0f} s")


def read_predictions(c: Any, topic: str, start: int, n: int) -> list[tuple[dict[str, Any], float]]:
    """``n`` predictions of the one-partition ``topic`` from ``start``, with their record
    timestamps (epoch s: when the learner produced them)."""
    import orjson
    from confluent_kafka import TopicPartition

    c.assign([TopicPartition(topic, 0, start)])
    out: list[tuple[dict[str, Any], float]] = []
    deadline = time.monotonic() + 120
    while len(out) < n and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error() is None:
                out.append((orjson.loads(m.value()), m.timestamp()[1] / 1000.0))
    c.unassign()
    return out[:n]


def batch_profile(preds: list[tuple[dict[str, Any], float]], wall_s: float) -> dict[str, Any]:
    """How the learner took the throughput run: its batches (a prediction's ``ts`` is when its
    batch started processing) and the share of the wall time spent from a batch's start to its
    last prediction produced (decode, predict+learn, produce; not the fetch, the wait for
    Kafka's acknowledgement or the checkpoint)."""
    spans: dict[float, float] = {}
    for value, produced in preds:
        spans[value["ts"]] = max(spans.get(value["ts"], 0.0), produced)
    busy = sum(max(0.0, end - start) for start, end in spans.items())
    return {"batches": len(spans), "batch_events_mean": len(preds) / max(1, len(spans)),
            "process_share": busy / wall_s}  # fmt: skip


def latency_stats(seen: list[tuple[float, float, float, Any]]) -> dict[str, Any]:
    """End-to-end p50/p99/max, the three stages, the worker's own ``latency_ms`` and how the
    learner batched the events (from each prediction's ``ts``: when its batch started)."""
    total = [(got - sent) * 1000 for sent, _ts, got, _v in seen]
    stages = {
        "send_to_learner_ms": [(v["ts"] - sent) * 1000 for sent, _ts, _got, v in seen],
        "in_learner_ms": [(ts - v["ts"]) * 1000 for _sent, ts, _got, v in seen],
        "learner_to_consumer_ms": [(got - ts) * 1000 for _sent, ts, got, _v in seen],
    }
    worker = [float(v["latency_ms"]) for *_, v in seen if "latency_ms" in v]
    starts = sorted({v["ts"] for *_, v in seen})
    gaps = [(b - a) * 1000 for a, b in zip(starts, starts[1:], strict=False)]
    return {
        "p50": common.percentile(total, 0.5), "p99": common.percentile(total, 0.99),
        "max": max(total, default=float("nan")),
        "stages": {k: {"p50": common.percentile(v, 0.5), "p99": common.percentile(v, 0.99)}
                   for k, v in stages.items()},
        "worker_latency_ms_p50": common.percentile(worker, 0.5),
        "worker_latency_ms_p99": common.percentile(worker, 0.99),
        "learner_batches": len(starts),
        "learner_batch_events_mean": len(seen) / max(1, len(starts)),
        "learner_batch_interval_ms_p50": common.percentile(gaps, 0.5),
    }  # fmt: skip


def machine_info() -> dict[str, Any]:
    import confluent_kafka

    info = common.machine_info("river", "confluent_kafka", "faust", "scipy")
    info["librdkafka"] = confluent_kafka.libversion()[0]
    # Other work on the machine shares its cores with the benchmark (the broker, the worker and
    # this process already need more than 2).
    info["loadavg_1m_before"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info


@contextlib.contextmanager
def environ(overrides: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``overrides`` for a while: settings read here and the worker's
    environment (copied from this one) both see them."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench online", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="10,000 events, 5 s of latency (< 2 min on 2 CPU cores)")  # fmt: skip
    ap.add_argument("--events", type=int, help="measured events (default 50,000; quick 10,000)")
    ap.add_argument("--warmup", type=int, help="warm-up events (default 1,250: one Phishing pass)")
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s of the latency run")
    ap.add_argument("--latency-s", type=float, help="seconds of the latency run (30; quick 5)")
    ap.add_argument("--repeats", type=int, help="bare river runs, median (default 3)")
    ap.add_argument("--bootstrap", default="", help="use this Kafka instead of starting one")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for both sides, e.g. LIVELEARN_MODELS__ONLINE=hoeffding "
                    "(repeatable; recorded in the results)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick = True
    args.events = args.events or (2000 if args.smoke else 10_000 if args.quick else 50_000)
    args.warmup = args.warmup if args.warmup is not None else 300 if args.smoke else 1250
    args.latency_s = args.latency_s or (2.0 if args.smoke else 5.0 if args.quick else 30.0)
    args.repeats = args.repeats or (1 if args.smoke else 3)
    if args.events < 1 or args.warmup < 1 or args.rate <= 0 or args.latency_s <= 0:
        ap.error("--events, --warmup, --rate and --latency-s must be positive")
    if any("=" not in e for e in args.env):
        ap.error("--env takes NAME=VALUE")
    args.env = dict(e.split("=", 1) for e in args.env)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with environ(args.env):
        return run(args)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from streams.broker import LocalBroker, free_port
    from streams.kafka import admin_client, consumer, produce_or_wait, producer
    from streams.sdk import LiveLearnClient
    from streams.settings import KafkaSettings, Settings, TopicSettings
    from streams.supervisor import Child
    from streams.topics import ensure_topics, topic_specs

    machine = machine_info()  # the load before anything of ours runs
    n_lat = max(1, round(args.rate * args.latency_s))
    records = make_records(args.warmup + args.events + n_lat)
    timed = slice(args.warmup, args.warmup + args.events)
    scored = slice(args.warmup, len(records))
    labels = {rid: y for rid, _x, y in records}

    tmp = Path(tempfile.mkdtemp(prefix="bench-online-"))
    suffix = uuid.uuid4().hex[:8]
    names = {f: f"bench-{f.replace('_', '-')}-{suffix}" for f in (
        "docs", "events", "queries", "predictions", "answers", "drift_alerts", "training_jobs",
        "model_updates")}  # fmt: skip
    topics = TopicSettings(**names, partitions=1)
    local = Settings(data_dir=tmp / "in-process", topics=topics)  # the environment's settings
    spec = local.models.online  # LIVELEARN_MODELS__ONLINE, as the worker reads it

    # 1. bare river, and the worker's domain object in-process (before anything else runs)
    runs = [bare_river(records, spec, timed, scored) for _ in range(args.repeats)]
    river_rate, river_acc = statistics.median(r[0] for r in runs), runs[0][1]
    print(f"bare river ({spec}): {river_rate:,.0f} events/s, accuracy {river_acc:.4f}", flush=True)
    service = service_rate(local, records, timed)
    service_no_dd = None
    if local.trigger.data_drift:
        no_dd = local.model_copy(update={
            "data_dir": tmp / "in-process-no-data-drift",
            "trigger": local.trigger.model_copy(update={"data_drift": False})})  # fmt: skip
        service_no_dd = service_rate(no_dd, records, timed)
    print(f"worker's online service in-process: {service:,.0f} events/s"
          + (f" ({service_no_dd:,.0f} without the input-drift monitor)" if service_no_dd else ""),
          flush=True)  # fmt: skip

    broker = None
    bootstrap = args.bootstrap
    worker = None
    prod: Any = None
    client: Any = None
    failures: list[str] = []
    try:
        if not bootstrap:
            broker = LocalBroker(tmp)
            bootstrap = broker.start()
        kafka = KafkaSettings(bootstrap_servers=bootstrap, group_prefix=f"bench-{suffix}")
        settings = Settings(data_dir=tmp, topics=topics, kafka=kafka)
        ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
        web = free_port()
        env = dict(os.environ, LIVELEARN_DATA_DIR=str(tmp), LIVELEARN_WEB_PORT=str(web),
                   LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
                   LIVELEARN_KAFKA__GROUP_PREFIX=kafka.group_prefix,
                   LIVELEARN_TOPICS__PARTITIONS="1", LIVELEARN_LOG_LEVEL="WARNING",
                   **{f"LIVELEARN_TOPICS__{f.upper()}": v for f, v in names.items()})  # fmt: skip
        started = time.perf_counter()
        worker = Child(["worker"], env, tmp / "worker.log")
        prod = producer(settings, bootstrap)
        watch = consumer(settings, bootstrap, None)
        out_topic = topics.predictions

        def produce_all(batch: list[Record]) -> None:
            """Encode and validate as the SDK does, then produce flat out and flush."""
            from streams.contracts import encode_checked

            payloads = [(rid.encode(), encode_checked("events", {
                "id": rid, "ts": time.time(), "features": x, "label": y}))
                for rid, x, y in batch]  # fmt: skip
            for key, payload in payloads:
                produce_or_wait(prod, topics.events, payload, key)
            prod.flush(60)

        produce_all(records[: args.warmup])
        client = LiveLearnClient(settings, bootstrap)  # for the latency run, connected by then
        client._producer.list_topics(topics.events, timeout=10)
        common.wait_ready(web, worker.alive, worker.log_path, 180)
        wait_for_end(watch, out_topic, args.warmup, 180, worker)
        warm_s = time.perf_counter() - started
        print(f"worker ready and warm in {warm_s:.1f} s (log {worker.log_path})", flush=True)

        # 2. throughput: the measured slice flat out, until all of its predictions are there
        base = end_offset(watch, out_topic)
        began = time.time()
        produce_all(records[timed])
        produced_s = time.time() - began
        done = wait_for_end(watch, out_topic, base + args.events, 300, worker)
        rate = args.events / (done - began)
        print(f"through Kafka: {rate:,.0f} events/s (producing took {produced_s:.2f} s)",
              flush=True)  # fmt: skip
        preds = read_predictions(watch, out_topic, base, args.events)
        profile = batch_profile(preds, done - began)
        watch.close()

        # 3. latency at a fixed rate, through the SDK. This process holds river, faust and
        # the rest too: its own collector pauses (a full one walks them all) would delay a
        # send after its timestamp was taken and count as the system's latency.
        gc.collect()
        gc.freeze()
        clock = common.PredictionClock(settings, bootstrap)
        time.sleep(1.0)  # its first fetch is out: the clock adds no connection time to the first
        paced = records[timed.stop :]
        began_mono = time.monotonic()
        for i, (rid, x, y) in enumerate(paced):
            wait = began_mono + i / args.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            at = time.time()
            clock.mark(rid, at)
            client.send_event(rid, features=x, label=y, ts=at)
        sent_s = time.monotonic() - began_mono
        client.flush(60)
        unpredicted = clock.close(drain_s=60)
        if unpredicted:
            failures.append(f"{unpredicted} of {len(paced)} paced events never predicted")
        if not worker.alive():
            failures.append("the worker died")
    finally:
        if worker is not None:
            code = worker.stop()
            if code not in (0, None):
                failures.append(f"the worker exited with status {code}")
        prod = client = None  # gone before their broker: no reconnection noise from librdkafka
        if broker is not None:
            broker.stop()

    lat = latency_stats(clock.seen)
    predicted = [v for v, _ in preds] + [v for *_, v in clock.seen if v is not None]
    ids = [p["id"] for p in predicted]
    if len(set(ids)) != len(ids) or len(preds) != args.events:
        failures.append(f"{len(preds)} predictions read for {args.events} events, "
                        f"{len(ids) - len(set(ids))} duplicates")  # fmt: skip
    accuracy = sum(p["prediction"] == labels[p["id"]] for p in predicted) / max(1, len(predicted))
    stage = max(lat["stages"], key=lambda k: lat["stages"][k]["p99"])
    result: dict[str, Any] = {
        "bench": "online",
        "events_per_s": rate,
        "river_events_per_s": river_rate,
        "throughput_ratio": rate / river_rate,
        "target_ratio": TARGET_RATIO,
        "latency_p50_ms": lat["p50"],
        "latency_p99_ms": lat["p99"],
        "latency_max_ms": lat["max"],
        "target_latency_p99_ms": TARGET_P99_MS,
        "accuracy": accuracy,
        "river_accuracy": river_acc,
        "accuracy_events": len(predicted),
        "latency_rate_per_s": args.rate,
        "latency_sent_per_s": len(paced) / sent_s,
        "latency_stages": lat["stages"],
        "latency_dominant_stage": stage,
        "worker_latency_ms_p50": lat["worker_latency_ms_p50"],
        "worker_latency_ms_p99": lat["worker_latency_ms_p99"],
        "latency_learner_batches": lat["learner_batches"],
        "latency_learner_batch_events_mean": lat["learner_batch_events_mean"],
        "latency_learner_batch_interval_ms_p50": lat["learner_batch_interval_ms_p50"],
        "throughput_learner_batches": profile["batches"],
        "throughput_learner_batch_events_mean": profile["batch_events_mean"],
        "throughput_learner_process_share": profile["process_share"],
        "service_events_per_s": service,
        "service_events_per_s_without_data_drift": service_no_dd,
        "produce_s": produced_s,
        "worker_warm_s": warm_s,
        "events": args.events,
        "warmup_events": args.warmup,
        "latency_events": len(paced),
        "latency_s": args.latency_s,
        "river_repeats": args.repeats,
        "model": spec,
        "dataset": "river.datasets.Phishing, cycled with fresh ids",
        "partitions": 1,
        "env": args.env,
        "broker": "given (--bootstrap)" if args.bootstrap else "embedded (LocalBroker)",
        "quick": bool(args.quick),
        "smoke": bool(args.smoke),
        "failures": failures,
        "machine": machine,
        "total_wall_s": time.perf_counter() - t0,
        "ts": time.time(),
    }
    path = common.write_result(result, args.out, "online")
    print(render(result))
    print(f"wrote {path}")
    for failure in failures:
        print(f"FAILED: {failure} (worker log: {tmp / 'worker.log'})")
    if not failures:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return 1 if failures else 0


def render(r: dict[str, Any]) -> str:
    """The human summary of an ``online.json``."""
    ratio_met = "met" if r["throughput_ratio"] >= r["target_ratio"] else "NOT met"
    p99_met = "met" if r["latency_p99_ms"] <= r["target_latency_p99_ms"] else "NOT met"
    river = r["river_events_per_s"]
    no_dd = r["service_events_per_s_without_data_drift"]
    lines = [
        f"online benchmark: {r['model']} on {r['dataset']}, {r['events']:,} events "
        f"(+{r['warmup_events']:,} warm-up), {r['total_wall_s']:.0f} s in all",
        f"  through Kafka          {r['events_per_s']:>8,.0f} events/s  accuracy "
        f"{r['accuracy']:.4f} (over {r['accuracy_events']:,} events)",
        f"  bare river             {river:>8,.0f} events/s  accuracy {r['river_accuracy']:.4f}",
        f"  service, in-process    {r['service_events_per_s']:>8,.0f} events/s  "
        f"({r['service_events_per_s'] / river:.2f} of bare river"
        + (f"; {no_dd:,.0f} events/s without the input-drift monitor)" if no_dd else ")"),
        f"throughput_ratio {r['throughput_ratio']:.3f}: target >= {r['target_ratio']} "
        f"{ratio_met} (the learner spent {r['throughput_learner_process_share']:.0%} of the run "
        f"in its batches of ~{r['throughput_learner_batch_events_mean']:.0f})",
        f"latency at {r['latency_sent_per_s']:,.0f} events/s for {r['latency_s']:g} s: "
        f"p50 {r['latency_p50_ms']:.1f} ms  p99 {r['latency_p99_ms']:.1f} ms  "
        f"(max {r['latency_max_ms']:.1f}): target p99 <= {r['target_latency_p99_ms']:g} ms "
        f"{p99_met}",
    ]
    for name, s in r["latency_stages"].items():
        lines.append(f"  {STAGES[name]:<84} p50 {s['p50']:6.1f}  p99 {s['p99']:6.1f} ms")
    lines.append(
        f"  the learner took {r['latency_learner_batches']} batches of "
        f"~{r['latency_learner_batch_events_mean']:.0f} events, one every "
        f"{r['latency_learner_batch_interval_ms_p50']:.0f} ms (p50); its own latency_ms per "
        f"record (predict+learn): p50 {r['worker_latency_ms_p50']:.2f}  p99 "
        f"{r['worker_latency_ms_p99']:.2f} ms"
    )
    if r["latency_p99_ms"] > r["target_latency_p99_ms"]:
        stage = r["latency_dominant_stage"]
        lines.append(
            f"p99 is dominated by {STAGES[stage]}: p99 {r['latency_stages'][stage]['p99']:.1f} ms"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
