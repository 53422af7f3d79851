"""Drift benchmark: detection delay, false alarms and misses of the concept-drift monitor against
river's own detector used bare on the same stream, and accuracy recovery with and without the
reaction the trigger policy asks for.

    python -m bench drift --quick        # 4 generators x 2 seeds: < 2 min on 2 CPU cores
    python -m bench drift                # 4 generators x 5 seeds, longer streams
    python -m bench drift --detector page-hinkley --seeds 1 2 3

Writes ``bench/results/drift.json`` (``--out``) and prints a table.

**Streams** (river ``datasets.synth``; features as an ``events`` record would carry them): SEA
(variants 0>3, 1>2, 3>0 by seed), Agrawal (classification function 4>5), STAGGER (functions
0>1, 1>2, 2>0 by seed; size/colour/shape as strings) and Hyperplane (10 features; the new
concept is another random hyperplane). Each generator gives, per seed, an *abrupt* drift
(``ConceptDriftStream`` width 50), a *gradual* one (width 2000; 1000 with ``--quick``) and a
*stationary* stream (the first concept throughout: every alert there is a false alarm).
Streams are 14,000 records with the change at ``position`` 5,000 (``--quick``: 8,000 and 3,000).

**The production path, in process** (no Kafka, no GPU): the learner's service is built by
``streams.services.make_online_service`` from the default :class:`streams.settings.Settings` (online
model ``logreg``, serving ``best``, :class:`TriggerSettings` defaults: ADWIN, drift
sensitivity 0.002, warning 0.05, min_samples 300, quiet_records 2000, drift_min_records 200,
data-drift watch on) and is fed the stream in micro-batches of ``--batch-size`` records through
``OnlineProcessor.process``, exactly as ``LearnerLoop`` does after each ``consume``. Two trigger
knobs differ, because a benchmark replays a stream far faster than real time and both are
wall-clock or volume rules that would otherwise decide the outcome: ``cooldown_s = 0`` (with
300 s, the second job of a stream would wait longer than the whole replay) and
``volume_threshold = 0`` (volume fine-tunes off: only drift signals start jobs here).

**Batch size**: ``LearnerLoop`` takes up to ``batch_size = 500`` records per ``consume`` (and
runs the policy's ``tick`` after each batch); under load every batch is full, so a *batch* in
``delay_excess_batches`` is 500 records (``--batch-size``). At a lower event rate a poll returns
fewer records, and "one batch" is fewer records than this.

**Detection** (per stream): the monitor's *drift*-severity alerts, taken at the record they
fire on (``ConceptDriftMonitor.update`` is wrapped to record the 0/1 error it is fed and what it
returns). The change *starts* at ``position - width`` (river draws 1.8% of the records from the
new concept there, 50% at ``position``, 98.2% at ``position + width``). ``detection_delay`` =
first drift alert at or after the start, minus the start, in records; alerts before the start
are false alarms (``false_alarms_per_10k``: per 10,000 records monitored before the start, or in
the whole stationary stream; overall: pooled); no alert within ``detect_window`` records of the
start is ``missed``.

**River bare** (``river_*``): a fresh river detector of the same class with the same parameter
(``trainers.drift.concept._detector(detector, drift_sensitivity)``, e.g. ``ADWIN(delta=0.002)``)
fed the very same error sequence one at a time, every ``drift_detected`` an alert: no
min_samples, no degradation test, no quiet period. Bare ADWIN also fires when the error *falls*
(the model warming up, or recovering after a drift); such alerts before the start count as its
false alarms (the monitor ignores them by design), after the start its first alert of any kind
is its detection. ``delay_excess_batches = (detection_delay - river_detection_delay) /
batch_size`` where both detected (target <= 1). ``meets_target``: the largest excess is within
the target, and the monitor misses no more drifts than river bare does, where a bare detection
on a *falling* error (``river_detections_on_falling_error``) counts as no detection of a
degradation.

**Recovery**: the rolling accuracy over ``--window`` (500) records. The pre-drift level is the
accuracy over the last window before the start; ``recovery_records_*`` = records after the drift
is complete (``position + width``) until the rolling accuracy over a window lying wholly after
that point is back within ``--tolerance`` (2 points) of that level (so at least one window,
500); null when it never is within the stream (counted in ``not_recovered``).

* *without reaction*: the online model alone (its predictions, i.e. the error the monitor sees;
  ``drift_reaction = none`` by default, so nothing else changes it);
* *with reaction*: what the service actually served (its ``predictions`` records), with every
  job the policy asked for run for real: :func:`trainers.batch.jobs.run_job` with the default
  :class:`JobConfig` (a retrain is a fresh tabular MLP in torch, on CPU here, trained on the
  job's offsets, i.e. the whole history ``[0, next)``; a fine-tune gets the replay ranges
  ``streams.trainer_worker`` would read), registered in a temporary registry, fed back through
  ``OnlineProcessor.on_model_update`` (started, then promoted/rejected) and swapped in by the
  serving policy (``best``: served once it beats the online model on the same labels). The job
  is deemed instant: its result is fed back right after the micro-batch whose ``tick`` emitted
  it (``--job-lag-batches`` delays it), the best case for the reaction; each job's wall time is
  recorded. Kafka (the topic replay, ``model-updates``) is the only part not exercised.

**Event order** (``event_order``; abrupt streams): the stream as a fast burst into
``--partitions`` (6) partitions reaches a consumer: each event goes to a partition by its id's
hash, and the consumer gets the partitions interleaved in fetch-sized chunks (1 to
``--fetch-chunk``, 2,000, records of one partition at a time, seeded), ~1k records out of
order on average as on a real broker. It is fed to a fresh service (i) as it arrives and (ii)
through the learner's :class:`streams.ordering.EventTimeMerger` (default ``lateness_s``,
``ts`` = the record number), in ``--batch-size`` takes. Reported: prequential accuracy of each
against ``river.evaluate.progressive_val_score`` of the same model on the true order
(``accuracy_gap_points``, target within 0.5), late records, and the first drift alert (in
true-order records) against river's ADWIN on the true order (``delay_excess_batches``, target
<= 1) and alerts before the change (target 0). ``tests/integration/test_event_order.py`` does
the same through a real broker.

**Labels late** (``label_free``; abrupt streams, plus a ``shift`` stream whose change moves
the inputs): every event comes without its label, and the label comes as its own record
``--label-delay`` (5,000) events later. Reported: the first label-free alert
(``trainers.drift.label_free``: prediction shift, CBPE estimated accuracy) after the change, in
events, whether it came before the first label of the new concept, and label-free alerts
before the change (false alarms). A change of the concept alone (SEA, Agrawal, STAGGER,
Hyperplane: the same inputs, other labels) is invisible without labels by construction: the
figure is expected to be a miss there, and the concept monitor alerts once the labels come.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/bench_drift.py`` from a plain checkout
    sys.path.insert(0, str(ROOT))

from bench.common import machine_info, write_result  # noqa: E402
from streams.ordering import EventTimeMerger  # noqa: E402
from streams.processing import DecodedRecord  # noqa: E402
from trainers.drift.concept import DETECTORS, _detector  # noqa: E402

__all__ = [
    "Run",
    "StreamSpec",
    "aggregate",
    "detection",
    "main",
    "parse_args",
    "recovery",
    "river_bare_alerts",
    "score_stream",
]

TARGET_EXCESS_BATCHES = 1.0
GENERATORS = ("sea", "agrawal", "stagger", "hyperplane")
KINDS = ("abrupt", "gradual", "stationary")

_STAGGER_VALUES = {
    "size": ("small", "medium", "large"),
    "color": ("red", "green", "blue"),
    "shape": ("square", "circle", "triangle"),
}


# -----------------------------------------------------------------------------------------
# streams


@dataclass(frozen=True)
class StreamSpec:
    """One stream: a generator, a kind of change, a seed and where the change is."""

    generator: str
    kind: str
    seed: int
    length: int
    position: int | None = None  # None: stationary
    width: int | None = None

    @property
    def name(self) -> str:
        return f"{self.generator}:{self.concepts}"

    @property
    def concepts(self) -> str:
        before, after = _concept_pair(self.generator, self.seed)
        return before if self.kind == "stationary" else f"{before}>{after}"

    @property
    def start(self) -> int | None:
        """First record of the change (1.8% of records from the new concept)."""
        if self.position is None or self.width is None:
            return None
        return max(0, self.position - self.width)

    @property
    def end(self) -> int | None:
        """Where the change is complete (98.2% of records from the new concept)."""
        if self.position is None or self.width is None:
            return None
        return min(self.length, self.position + self.width)


def _concept_pair(generator: str, seed: int) -> tuple[str, str]:
    if generator == "sea":
        return (("0", "3"), ("1", "2"), ("3", "0"))[seed % 3]
    if generator == "agrawal":
        return ("4", "5")
    if generator == "stagger":
        return (("0", "1"), ("1", "2"), ("2", "0"))[seed % 3]
    if generator == "hyperplane":
        return (f"w{seed}", f"w{seed + 1000}")
    raise ValueError(f"unknown generator {generator!r}; use {', '.join(GENERATORS)}")


def _concept(generator: str, concept: str, seed: int) -> Any:
    from river.datasets import synth

    if generator == "sea":
        return synth.SEA(variant=int(concept), seed=seed)
    if generator == "agrawal":
        return synth.Agrawal(classification_function=int(concept), seed=seed)
    if generator == "stagger":
        return synth.STAGGER(classification_function=int(concept), seed=seed)
    if generator == "hyperplane":
        return synth.Hyperplane(seed=int(concept[1:]), n_features=10)
    raise ValueError(f"unknown generator {generator!r}")


def _features(generator: str, x: dict[Any, Any]) -> dict[str, float | str]:
    """An ``events`` record's features: STAGGER's categories as strings, the rest numbers."""
    if generator == "stagger":
        return {str(k): _STAGGER_VALUES[str(k)][int(v)] for k, v in x.items()}
    return {str(k): float(v) for k, v in x.items()}


def generate(spec: StreamSpec) -> Iterator[tuple[dict[str, float | str], Any]]:
    """``(features, label)`` of the stream, ``spec.length`` of them."""
    from river.datasets import synth

    before, after = _concept_pair(spec.generator, spec.seed)
    stream = _concept(spec.generator, before, spec.seed)
    if spec.kind != "stationary":
        assert spec.position is not None and spec.width is not None
        # river's sigmoid overflows (math range error) for a width tiny next to the position.
        assert 4.0 * spec.position / spec.width < 700, "width too small for this position"
        stream = synth.ConceptDriftStream(
            stream, _concept(spec.generator, after, spec.seed), position=spec.position,
            width=spec.width, seed=spec.seed,
        )  # fmt: skip
    for x, y in itertools.islice(stream, spec.length):
        yield _features(spec.generator, x), y


def events(spec: StreamSpec) -> list[DecodedRecord]:
    """The stream as ``events`` records of partition 0, offsets 0, 1, ..."""
    tag = f"{spec.generator}-{spec.kind}-{spec.seed}"
    return [
        DecodedRecord(0, i, {"id": f"{tag}-{i}", "ts": float(i), "features": x, "label": y})
        for i, (x, y) in enumerate(generate(spec))
    ]


def plan(args: argparse.Namespace) -> list[StreamSpec]:
    """The streams of this run."""
    specs = []
    for gen in args.generators:
        for seed in args.seeds:
            for kind in args.kinds:
                width = {"abrupt": args.abrupt_width, "gradual": args.gradual_width}.get(kind)
                position = args.position if width is not None else None
                specs.append(StreamSpec(gen, kind, seed, args.length, position, width))
    return specs


# -----------------------------------------------------------------------------------------
# running the service


class _Tap:
    """Wraps the service's concept monitor: records each error it is fed and what it says."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor
        self.errors: list[float] = []
        self.signals: list[Any] = []

    def update(self, error: float) -> Any:
        self.errors.append(error)
        signal = self.monitor.update(error)
        if signal is not None:
            self.signals.append(signal)
        return signal

    def __getattr__(self, name: str) -> Any:  # anything else the service reads
        return getattr(self.monitor, name)


@dataclass
class Run:
    """What one pass of the service over a stream produced."""

    errors: list[float]  # the online model's 0/1 errors (what the monitor saw), in order
    served_hits: list[float]  # 1.0 where what the service served was right
    served_batch: list[bool]  # True where the batch model served
    labels: list[Any]
    signals: list[Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    paired: dict[str, Any] | None = None  # serving's online/batch scores on the last labels


def _same(prediction: Any, label: Any) -> bool:
    return bool(prediction == label or str(prediction) == str(label))


def make_settings(args: argparse.Namespace, data_dir: Path) -> Any:
    """Production defaults, except the two wall-clock/volume knobs (see the docstring)."""
    from streams.settings import Settings

    return Settings(
        data_dir=data_dir,
        trigger={"detector": args.detector, "cooldown_s": 0.0, "volume_threshold": 0},
    )


def run_stream(spec: StreamSpec, args: argparse.Namespace) -> Run:
    """Feed ``spec`` through a fresh production ``OnlineProcessor``; run the jobs it asks for."""
    from streams.services import make_online_service

    records = events(spec)
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        settings = make_settings(args, Path(tmp))
        service: Any = make_online_service(settings)
        tap = _Tap(service.monitor)
        service.monitor = tap
        served: dict[str, tuple[Any, str]] = {}
        jobs: list[dict[str, Any]] = []
        due: list[tuple[int, list[dict[str, Any]]]] = []  # (batch number, model-updates)
        started = time.perf_counter()
        for number, lo in enumerate(range(0, len(records), args.batch_size)):
            for _at, updates in [d for d in due if d[0] <= number]:
                for update in updates:
                    service.on_model_update(update)
                service.serving.apply_pending(wait=120.0)  # loaded before this batch
            due = [d for d in due if d[0] > number]
            batch = records[lo : lo + args.batch_size]
            for contract, key, value in service.process(batch):
                if contract == "predictions":
                    served[key] = (value["prediction"], value.get("source", "online"))
                elif contract == "training-jobs":
                    info, updates = run_training_job(value, records, settings, args)
                    info["at_record"] = lo + len(batch)
                    jobs.append(info)
                    due.append((number + 1 + args.job_lag_batches, updates))
        seconds = time.perf_counter() - started
        paired = service.status()["paired"]
    labels = [r.value["label"] for r in records]
    hits, from_batch = [], []
    for r, y in zip(records, labels, strict=True):
        prediction, source = served[r.value["id"]]
        hits.append(1.0 if _same(prediction, y) else 0.0)
        from_batch.append(source == "batch")
    return Run(tap.errors, hits, from_batch, labels, tap.signals, jobs, seconds, paired)


def run_training_job(
    job: dict[str, Any], records: Sequence[DecodedRecord], settings: Any, args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a ``training-jobs`` record as the trainer worker would; its ``model-updates``."""
    from streams.trainer_worker import replay_sample_ranges
    from trainers.batch.jobs import JobConfig, run_job
    from trainers.batch.registry import ModelRegistry

    model = settings.models.name
    config = JobConfig.from_dict(
        {"progress": False, "task": settings.models.task, "device": args.device}
    )
    ranges = {int(p): (int(lo), int(hi)) for p, (lo, hi) in job["data"]["offsets"].items()}
    assert set(ranges) <= {0}, ranges
    lo, hi = ranges.get(0, (0, 0))
    train = [(0, r.offset, r.value) for r in records[lo:hi]]
    replay: list[tuple[int, int, dict[str, Any]]] = []
    if job["kind"] == "finetune":
        wanted = replay_sample_ranges(ranges, {}, int(len(train) * config.replay_ratio))
        for rlo, rhi in wanted.values():
            replay.extend((0, r.offset, r.value) for r in records[rlo:rhi])
    started = time.perf_counter()
    result = run_job(job, train, replay, ModelRegistry(settings.data_dir / "registry"), model,
                     config)  # fmt: skip
    wall = time.perf_counter() - started
    info = {
        "job_id": job["job_id"], "kind": job["kind"], "reason": job["reason"],
        "offsets": [lo, hi], "status": result.status, "version": result.version,
        "val_accuracy": (result.metrics or {}).get("accuracy"),
        "baseline_val_accuracy": (result.baseline_metrics or {}).get("accuracy"),
        "error": result.error, "wall_s": round(wall, 3), "detail": job.get("detail", ""),
    }  # fmt: skip
    started_update = {"job_id": job["job_id"], "model": model, "status": "started"}
    return info, [started_update, result.to_update(model)]


# -----------------------------------------------------------------------------------------
# scoring


def river_bare_alerts(errors: Sequence[float], detector: str, sensitivity: float) -> list[int]:
    """Record numbers (1-based) at which a bare river detector fires on ``errors``."""
    det = _detector(detector, sensitivity)
    alerts = []
    for i, e in enumerate(errors, start=1):
        det.update(e)
        if det.drift_detected:
            alerts.append(i)
    return alerts


def detection(
    alerts: Sequence[int], start: int | None, n: int, detect_window: int
) -> dict[str, Any]:
    """Delay, false alarms (per 10k records monitored before the change) and miss."""
    monitored = n if start is None else start
    before = [a for a in alerts if start is None or a <= start]
    out: dict[str, Any] = {
        "false_alarms": len(before),
        "monitored": monitored,
        "false_alarms_per_10k": 1e4 * len(before) / monitored if monitored else 0.0,
        "detection_delay": None,
        "missed": None,
    }
    if start is not None:
        after = [a - start for a in alerts if a > start]
        window = min(detect_window, n - start)
        delay = after[0] if after and after[0] <= window else None
        out.update(detection_delay=delay, missed=delay is None)
    return out


def rolling(hits: Sequence[float], lo: int, hi: int) -> float:
    return sum(hits[lo:hi]) / (hi - lo)


def recovery(
    hits: Sequence[float], start: int, end: int, window: int, tolerance: float
) -> dict[str, Any]:
    """Pre-drift level, and records after ``end`` until the accuracy over a window wholly
    after ``end`` is within ``tolerance`` of it (None when never)."""
    level = rolling(hits, max(0, start - window), start)
    sums = [0.0]
    for h in hits:
        sums.append(sums[-1] + h)
    records = None
    for t in range(end + window, len(hits) + 1):
        if (sums[t] - sums[t - window]) / window >= level - tolerance:
            records = t - end
            break
    worst = min(
        ((sums[t] - sums[t - window]) / window for t in range(start + window, len(hits) + 1)),
        default=None,
    )
    return {"level": level, "records": records, "lowest": worst}


def score_stream(spec: StreamSpec, run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """The per-stream row of ``drift.json``."""
    n = len(run.errors)
    start, end = spec.start, spec.end
    drifts = [s.index for s in run.signals if s.severity == "drift"]
    warns = [s.index for s in run.signals if s.severity == "warning"]
    ours = detection(drifts, start, n, args.detect_window)
    bare_alerts = river_bare_alerts(run.errors, args.detector, args.drift_sensitivity)
    bare = detection(bare_alerts, start, n, args.detect_window)
    row: dict[str, Any] = {
        "name": spec.name, "generator": spec.generator, "concepts": spec.concepts,
        "kind": spec.kind, "seed": spec.seed, "records": n, "position": spec.position,
        "width": spec.width, "change_start": start, "change_end": end,
        "detection_delay": ours["detection_delay"],
        "river_detection_delay": bare["detection_delay"],
        "delay_excess_records": None, "delay_excess_batches": None,
        "false_alarms": ours["false_alarms"],
        "false_alarms_per_10k": ours["false_alarms_per_10k"],
        "river_false_alarms": bare["false_alarms"],
        "river_false_alarms_per_10k": bare["false_alarms_per_10k"],
        "monitored_before_change": ours["monitored"],
        "missed": ours["missed"], "river_missed": bare["missed"],
        "river_detection_direction": None, "warning_delay": None,
        "alerts": drifts, "warnings": warns, "river_alerts": bare_alerts,
    }  # fmt: skip
    if ours["detection_delay"] is not None and bare["detection_delay"] is not None:
        excess = ours["detection_delay"] - bare["detection_delay"]
        row["delay_excess_records"] = excess
        row["delay_excess_batches"] = excess / args.batch_size
    if start is not None:
        later = [w - start for w in warns if w > start]
        row["warning_delay"] = later[0] if later else None
        if bare["detection_delay"] is not None:  # did river's first alert see a rise?
            at = start + bare["detection_delay"]
            pre = run.errors[max(0, start - args.window) : start]
            recent = run.errors[max(0, at - 200) : at]
            rise = sum(recent) / len(recent) > sum(pre) / max(1, len(pre))
            row["river_detection_direction"] = "rise" if rise else "fall"
    if start is not None and end is not None:
        online_hits = [1.0 - e for e in run.errors]
        without = recovery(online_hits, start, end, args.window, args.tolerance)
        with_ = recovery(run.served_hits, start, end, args.window, args.tolerance)
        row.update(
            pre_drift_accuracy=without["level"],
            pre_drift_accuracy_served=with_["level"],
            lowest_accuracy_without_reaction=without["lowest"],
            lowest_accuracy_with_reaction=with_["lowest"],
            recovery_records_without_reaction=without["records"],
            recovery_records_with_reaction=with_["records"],
            final_accuracy_without_reaction=rolling(online_hits, n - args.window, n),
            final_accuracy_with_reaction=rolling(run.served_hits, n - args.window, n),
            batch_served_after_change=sum(run.served_batch[start:]) / (n - start),
        )
    else:
        row.update(recovery_records_without_reaction=None, recovery_records_with_reaction=None)
    row["jobs"] = run.jobs
    row["serving_paired_at_end"] = run.paired
    row["service_s"] = round(run.seconds, 3)
    return row


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "max": None}
    return {
        "n": len(values), "mean": statistics.fmean(values),
        "median": statistics.median(values), "max": max(values),
    }  # fmt: skip


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Overall figures over ``rows``: delays, excess, pooled false alarms, misses, recovery."""
    drifting = [r for r in rows if r["kind"] != "stationary"]
    monitored = sum(r["monitored_before_change"] for r in rows)

    def values(key: str) -> list[float]:
        return [r[key] for r in drifting if r.get(key) is not None]

    out: dict[str, Any] = {
        "streams": len(rows), "drift_streams": len(drifting),
        "stationary_streams": len(rows) - len(drifting),
        "detection_delay": _stats(values("detection_delay")),
        "river_detection_delay": _stats(values("river_detection_delay")),
        "delay_excess_batches": _stats(values("delay_excess_batches")),
        "false_alarms": sum(r["false_alarms"] for r in rows),
        "river_false_alarms": sum(r["river_false_alarms"] for r in rows),
        "monitored_before_change": monitored,
        "false_alarms_per_10k": 1e4 * sum(r["false_alarms"] for r in rows) / monitored
        if monitored else 0.0,
        "river_false_alarms_per_10k":
            1e4 * sum(r["river_false_alarms"] for r in rows) / monitored if monitored else 0.0,
        "missed": sum(bool(r["missed"]) for r in drifting),
        "river_missed": sum(bool(r["river_missed"]) for r in drifting),
        "river_detections_on_falling_error":
            sum(r.get("river_detection_direction") == "fall" for r in drifting),
    }  # fmt: skip
    for variant in ("with_reaction", "without_reaction"):
        key = f"recovery_records_{variant}"
        stats = _stats(values(key))
        stats["not_recovered"] = sum(r.get(key) is None for r in drifting)
        out[key] = stats
    both = [r for r in drifting if r.get("recovery_records_with_reaction") is not None
            and r.get("recovery_records_without_reaction") is not None]  # fmt: skip
    out["recovery_paired"] = {
        "n": len(both),
        "with_reaction_mean": statistics.fmean(r["recovery_records_with_reaction"] for r in both)
        if both else None,
        "without_reaction_mean":
            statistics.fmean(r["recovery_records_without_reaction"] for r in both)
            if both else None,
        "faster_with_reaction": sum(r["recovery_records_with_reaction"]
                                    < r["recovery_records_without_reaction"] for r in both),
        "faster_without_reaction": sum(r["recovery_records_with_reaction"]
                                       > r["recovery_records_without_reaction"] for r in both),
    }  # fmt: skip
    excess_max = out["delay_excess_batches"]["max"]
    out["target_delay_excess_batches"] = TARGET_EXCESS_BATCHES
    out["meets_target"] = bool(
        drifting and excess_max is not None and excess_max <= TARGET_EXCESS_BATCHES
        and out["missed"] <= out["river_missed"] + out["river_detections_on_falling_error"]
    )  # fmt: skip
    out["jobs"] = sum(len(r["jobs"]) for r in rows)
    out["jobs_promoted"] = sum(j["status"] == "promoted" for r in rows for j in r["jobs"])
    return out


# -----------------------------------------------------------------------------------------
# event order and late labels


def burst_arrivals(records: Sequence[DecodedRecord], partitions: int, max_chunk: int,
                   seed: int) -> list[DecodedRecord]:  # fmt: skip
    """The stream as a consumer of ``partitions`` gets a fast burst: by id hash, then
    interleaved in chunks of one partition at a time."""
    import random
    import zlib

    rng = random.Random(seed)
    parts: dict[int, list[DecodedRecord]] = {p: [] for p in range(partitions)}
    for r in records:
        p = zlib.crc32(str(r.value["id"]).encode()) % partitions
        parts[p].append(DecodedRecord(p, len(parts[p]), r.value))
    cursor = {p: 0 for p in parts}
    out: list[DecodedRecord] = []
    while len(out) < len(records):
        p = rng.choice([q for q in parts if cursor[q] < len(parts[q])])
        n = rng.randint(1, max_chunk)
        out.extend(parts[p][cursor[p] : cursor[p] + n])
        cursor[p] += n
    return out


def _service(args: argparse.Namespace, tmp: str) -> Any:
    from streams.services import make_online_service

    return make_online_service(make_settings(args, Path(tmp)))


def _feed(
    service: Any, batches: Iterator[list[Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predictions by id, and the drift alerts, of a service fed ``batches``."""
    predicted: dict[str, Any] = {}
    alerts: list[dict[str, Any]] = []
    for batch in batches:
        for contract, key, value in service.process(batch):
            if contract == "predictions":
                predicted[key] = value["prediction"]
            elif contract == "drift-alerts":
                alerts.append(value)
    return predicted, alerts


def _merged(arrivals: Sequence[DecodedRecord], batch: int, lateness: float,
            partitions: int) -> Iterator[list[Any]]:  # fmt: skip
    merger = EventTimeMerger(lateness)
    merger.assign({p: 0 for p in range(partitions)})
    for lo in range(0, len(arrivals), batch):
        merger.push(arrivals[lo : lo + batch], now=0.0)
        yield merger.pop(now=0.0)
    yield merger.pop(ends={p: 0 for p in range(partitions)}, now=0.0)  # all read: the end


def run_event_order(spec: StreamSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy and first alert through the merge, in arrival order, and river's on the true
    order."""
    from river import evaluate, metrics

    from streams.settings import ModelSettings
    from trainers.online.learner import build_model, to_features

    # Event times as a producer on this host stamps a burst (``--produce-rate`` events/s).
    records = [DecodedRecord(0, r.offset, {**r.value, "ts": 1.8e9 + r.offset / args.produce_rate})
               for r in events(spec)]  # fmt: skip
    index = {r.value["id"]: i for i, r in enumerate(records)}
    labels = [r.value["label"] for r in records]
    data = [(to_features(r.value), r.value["label"]) for r in records]
    online = ModelSettings().online
    river_accuracy = evaluate.progressive_val_score(data, build_model(online), metrics.Accuracy())
    model, det, errors = build_model(online), _detector(args.detector, args.drift_sensitivity), []
    river_first = None
    for i, (x, y) in enumerate(data, start=1):
        errors.append(0.0 if _same(model.predict_one(x), y) else 1.0)
        det.update(errors[-1])
        model.learn_one(x, y)
        if river_first is None and spec.start is not None and i > spec.start \
                and det.drift_detected:  # fmt: skip
            river_first = i
    arrivals = burst_arrivals(records, args.partitions, args.fetch_chunk, spec.seed)
    disorder = [max(0, index[a.value["id"]] - k) for k, a in enumerate(arrivals)]
    row: dict[str, Any] = {
        "name": spec.name, "seed": spec.seed, "records": len(records),
        "change_start": spec.start, "partitions": args.partitions,
        "mean_disorder_records": statistics.fmean(disorder), "max_disorder_records": max(disorder),
        "river_accuracy": river_accuracy.get(), "river_first_alert": river_first,
    }  # fmt: skip
    lateness = ModelSettings().lateness_s
    for mode in ("merged", "arrival"):
        with tempfile.TemporaryDirectory(prefix="bench-order-") as tmp:
            service = _service(args, tmp)
            batches = (_merged(arrivals, args.batch_size, lateness, args.partitions)
                       if mode == "merged" else
                       (arrivals[lo : lo + args.batch_size]
                        for lo in range(0, len(arrivals), args.batch_size)))  # fmt: skip
            predicted, alerts = _feed(service, batches)
        hits = [_same(predicted[r.value["id"]], y) for r, y in zip(records, labels, strict=True)]
        accuracy = sum(hits) / len(hits)
        at = sorted(index[a["window"]["event_id"]] + 1 for a in alerts)
        drifts = sorted(index[a["window"]["event_id"]] + 1 for a in alerts
                        if a["severity"] == "drift" and a["signal"] == "concept")  # fmt: skip
        first = next((d for d in drifts if spec.start is None or d > spec.start), None)
        excess = None if first is None or river_first is None else \
            (first - river_first) / args.batch_size  # fmt: skip
        row[mode] = {
            "accuracy": accuracy,
            "accuracy_gap_points": 100 * (accuracy - river_accuracy.get()),
            "first_alert": first, "delay_excess_batches": excess,
            "alerts_before_change": sum(1 for a in at if spec.start is not None
                                        and a <= spec.start),
        }  # fmt: skip
    return row


def _shift_stream(length: int, position: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    """Two Gaussian classes; at ``position`` the inputs move to where the model is unsure and
    mostly says True, and the labels follow another rule (a covariate shift)."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(length):
        if i < position:
            y = rng.random() < 0.5
            m = 1.0 if y else -1.0
            out.append(({"x1": rng.gauss(m, 1.0), "x2": rng.gauss(m, 1.0)}, y))
        else:
            x = {"x1": rng.gauss(1.5, 1.0), "x2": rng.gauss(-0.8, 1.0)}
            out.append((x, x["x2"] > -0.8))
    return out


def run_late_labels(name: str, stream: Sequence[tuple[dict[str, Any], Any]], start: int,
                    seed: int, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Label-free alerts on a stream whose labels come ``label_delay`` events late."""
    from trainers.drift.label_free import LABEL_FREE_SIGNALS

    delay = args.label_delay
    records: list[DecodedRecord] = []
    first_new_label = start + delay  # events produced when the new concept's first label comes
    for i, (x, _y) in enumerate(stream):
        records.append(DecodedRecord(0, len(records), {"id": f"e{i}", "ts": float(len(records)),
                                                       "features": x}))  # fmt: skip
        j = i - delay
        if j >= 0:
            records.append(DecodedRecord(0, len(records), {"id": f"e{j}", "label": stream[j][1],
                                                           "ts": float(len(records))}))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-late-") as tmp:
        _pred, alerts = _feed(_service(args, tmp), (records[lo : lo + args.batch_size]
                              for lo in range(0, len(records), args.batch_size)))  # fmt: skip
    free = [a for a in alerts if a["signal"] in LABEL_FREE_SIGNALS]
    at = sorted(int(a["window"]["event_id"][1:]) + 1 for a in free)
    after = [a for a in at if a > start]
    first = after[0] if after else None
    return {
        "name": name, "seed": seed, "change_start": start, "label_delay": delay,
        "first_new_label_at": first_new_label,
        "label_free_delay": None if first is None else first - start,
        "before_new_labels": first is not None and first_new_label is not None
        and first < first_new_label,
        "false_alarms": sum(1 for a in at if a <= start),
        "signals": sorted({a["signal"] for a in free}),
    }  # fmt: skip


def run_extras(args: argparse.Namespace) -> dict[str, Any]:
    """The event-order and late-label figures over the abrupt streams of this run."""
    abrupt = [s for s in plan(args) if s.kind == "abrupt"]
    order = []
    for spec in abrupt:
        order.append(run_event_order(spec, args))
        r = order[-1]
        print(f"event order {spec.name} seed {spec.seed}: accuracy merged "
              f"{r['merged']['accuracy']:.4f}, arrival {r['arrival']['accuracy']:.4f}, river "
              f"{r['river_accuracy']:.4f}", file=sys.stderr)  # fmt: skip
    # The change comes once the model has learned from labels for a while, and the stream
    # goes on until the new concept's first labels have come.
    delay = args.label_delay
    position = max(args.position, delay + 7 * delay // 5)
    length = position + delay + delay // 5
    late = []
    for spec in abrupt:
        spec = replace(spec, position=position, length=length, width=100)
        assert spec.start is not None
        late.append(run_late_labels(spec.name, list(generate(spec)), spec.start, spec.seed, args))
    for seed in args.seeds:
        late.append(run_late_labels("shift:inputs", _shift_stream(length, position, seed),
                                    position, seed, args))  # fmt: skip
    gaps = [abs(r["merged"]["accuracy_gap_points"]) for r in order]
    excess = [r["merged"]["delay_excess_batches"] for r in order
              if r["merged"]["delay_excess_batches"] is not None]  # fmt: skip
    return {
        "event_order": {
            "streams": order,
            "overall": {
                "streams": len(order),
                "max_accuracy_gap_points_merged": max(gaps, default=None),
                "max_accuracy_gap_points_arrival": max(
                    (abs(r["arrival"]["accuracy_gap_points"]) for r in order), default=None),
                "max_delay_excess_batches_merged": max(excess, default=None),
                "missed_merged": sum(r["merged"]["first_alert"] is None for r in order),
                "alerts_before_change_merged":
                    sum(r["merged"]["alerts_before_change"] for r in order),
                "alerts_before_change_arrival":
                    sum(r["arrival"]["alerts_before_change"] for r in order),
                "meets_target": bool(order) and max(gaps) <= 0.5
                and all(e <= TARGET_EXCESS_BATCHES for e in excess)
                and len(excess) == len(order)
                and sum(r["merged"]["alerts_before_change"] for r in order) == 0,
            },
        },
        "label_free": {
            "streams": late,
            "overall": {
                "streams": len(late),
                "before_new_labels": sum(r["before_new_labels"] for r in late),
                "before_new_labels_input_shift": sum(
                    r["before_new_labels"] for r in late if r["name"] == "shift:inputs"),
                "input_shift_streams": sum(r["name"] == "shift:inputs" for r in late),
                "false_alarms": sum(r["false_alarms"] for r in late),
            },
        },
    }  # fmt: skip


# -----------------------------------------------------------------------------------------
# output


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a log or a pipe: no wrapping of the wide table
        console = Console(width=170)
    table = Table(title=f"concept drift: {result['detector']}, batch = {result['batch_size']}")
    for col in ("stream", "kind", "seed", "delay", "river", "excess (batches)", "FA/10k",
                "river FA/10k", "missed", "recovery w/ job", "w/o", "jobs"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("stream", "kind") else "right")
    for r in result["streams"]:
        jobs = ",".join(f"{j['kind'][0]}{'+' if j['status'] == 'promoted' else '-'}"
                        for j in r["jobs"])  # fmt: skip
        missed = "-" if r["missed"] is None else f"{_num(r['missed'])}/{_num(r['river_missed'])}"
        table.add_row(
            r["name"], r["kind"], str(r["seed"]), _num(r["detection_delay"]),
            _num(r["river_detection_delay"]), _num(r["delay_excess_batches"], 2),
            _num(r["false_alarms_per_10k"], 1), _num(r["river_false_alarms_per_10k"], 1),
            missed, _num(r["recovery_records_with_reaction"]),
            _num(r["recovery_records_without_reaction"]), jobs or "-",
        )  # fmt: skip
    console.print(table)
    o = result["overall"]
    summary = Table(title="overall (drift streams; false alarms pooled over all streams)")
    for col in ("figure", "livelearn", "river bare", "target"):
        summary.add_column(col, justify="left" if col == "figure" else "right")
    d, rd, ex = o["detection_delay"], o["river_detection_delay"], o["delay_excess_batches"]
    summary.add_row("detection delay, mean (records)", _num(d["mean"], 1), _num(rd["mean"], 1), "")
    summary.add_row("detection delay, median", _num(d["median"], 1), _num(rd["median"], 1), "")
    summary.add_row(
        "delay excess, mean / max (batches)", f"{_num(ex['mean'], 2)} / {_num(ex['max'], 2)}",
        "", f"<= {TARGET_EXCESS_BATCHES:g}: {'PASS' if o['meets_target'] else 'FAIL'}",
    )  # fmt: skip
    summary.add_row("false alarms per 10k records", _num(o["false_alarms_per_10k"], 2),
                    _num(o["river_false_alarms_per_10k"], 2), "")  # fmt: skip
    falls = o["river_detections_on_falling_error"]
    summary.add_row(f"missed (of {o['drift_streams']})", str(o["missed"]),
                    f"{o['river_missed']}" + (f" (+{falls} on a falling error)" if falls else ""),
                    "")  # fmt: skip
    w, wo, p = (o["recovery_records_with_reaction"], o["recovery_records_without_reaction"],
                o["recovery_paired"])  # fmt: skip
    summary.add_row(
        "recovery, median records (not recovered)",
        f"with job {_num(w['median'])} ({w['not_recovered']})",
        f"online alone {_num(wo['median'])} ({wo['not_recovered']})", "",
    )  # fmt: skip
    summary.add_row(
        f"recovery, paired mean over {p['n']}", _num(p["with_reaction_mean"], 0),
        _num(p["without_reaction_mean"], 0),
        f"faster with job {p['faster_with_reaction']}, without {p['faster_without_reaction']}",
    )  # fmt: skip
    summary.add_row("jobs run (promoted)", f"{o['jobs']} ({o['jobs_promoted']})", "", "")
    console.print(summary)
    if "event_order" in result:
        _print_extras(console, result)
    console.print(f"wall {result['wall_s']:.1f} s; wrote {result['out']}")


def _print_extras(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    order = result["event_order"]
    table = Table(
        title=f"event order: a burst over {result['params']['partitions']} partitions "
        "(prequential accuracy vs river on the true order; first drift alert)"
    )
    for col in (
        "stream",
        "seed",
        "disorder mean/max",
        "river",
        "merged",
        "arrival",
        "alert merged",
        "river alert",
        "excess (batches)",
        "before change m/a",
    ):
        table.add_column(col, justify="left" if col == "stream" else "right")
    for r in order["streams"]:
        m, a = r["merged"], r["arrival"]
        table.add_row(
            r["name"], str(r["seed"]),
            f"{r['mean_disorder_records']:.0f}/{r['max_disorder_records']}",
            f"{r['river_accuracy']:.4f}", f"{m['accuracy']:.4f} ({m['accuracy_gap_points']:+.2f})",
            f"{a['accuracy']:.4f} ({a['accuracy_gap_points']:+.2f})", _num(m["first_alert"]),
            _num(r["river_first_alert"]), _num(m["delay_excess_batches"], 2),
            f"{m['alerts_before_change']}/{a['alerts_before_change']}",
        )  # fmt: skip
    console.print(table)
    o = order["overall"]
    console.print(
        f"event order: max gap {_num(o['max_accuracy_gap_points_merged'], 2)} points merged "
        f"(arrival {_num(o['max_accuracy_gap_points_arrival'], 2)}; target <= 0.5), max excess "
        f"{_num(o['max_delay_excess_batches_merged'], 2)} batches (<= 1), alerts before the "
        f"change {o['alerts_before_change_merged']} merged / {o['alerts_before_change_arrival']}"
        f" arrival: {'PASS' if o['meets_target'] else 'FAIL'}"
    )
    late = result["label_free"]
    table = Table(title=f"labels {result['params']['label_delay']} events late: label-free alerts")
    for col in (
        "stream",
        "seed",
        "first new label at",
        "label-free delay",
        "before labels",
        "false alarms",
        "signals",
    ):
        table.add_column(col, justify="left" if col in ("stream", "signals") else "right")
    for r in late["streams"]:
        table.add_row(r["name"], str(r["seed"]), _num(r["first_new_label_at"]),
                      _num(r["label_free_delay"]), _num(r["before_new_labels"]),
                      str(r["false_alarms"]), ", ".join(r["signals"]) or "-")  # fmt: skip
    console.print(table)
    lo = late["overall"]
    console.print(
        f"labels late: alerted before the new labels on {lo['before_new_labels']} of "
        f"{lo['streams']} streams ({lo['before_new_labels_input_shift']} of "
        f"{lo['input_shift_streams']} with an input shift; a concept change alone is invisible "
        f"without labels), {lo['false_alarms']} false alarms"
    )


# -----------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench drift",
        description="Concept drift: detection delay, false alarms and misses against river's "
        "bare detector; accuracy recovery with and without the triggered job.",
    )
    ap.add_argument("--quick", action="store_true", help="2 seeds, shorter streams (< 2 min)")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/drift.json")
    ap.add_argument("--detector", choices=DETECTORS, default=None,
                    help="drift detector (default: TriggerSettings' default, adwin)")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS))
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--position", type=int, default=None, help="ConceptDriftStream position")
    ap.add_argument("--length", type=int, default=None, help="records per stream")
    ap.add_argument("--abrupt-width", type=int, default=50)
    ap.add_argument("--gradual-width", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=500, help="records per micro-batch")
    ap.add_argument("--window", type=int, default=500, help="rolling accuracy window")
    ap.add_argument("--tolerance", type=float, default=0.02, help="recovered: within this")
    ap.add_argument("--detect-window", type=int, default=5000,
                    help="no alert within this many records of the change: missed")  # fmt: skip
    ap.add_argument("--job-lag-batches", type=int, default=0,
                    help="micro-batches between a job's emission and its promotion")  # fmt: skip
    ap.add_argument("--device", default="auto", help="device of the jobs (JobConfig.device)")
    ap.add_argument("--partitions", type=int, default=6, help="event order: partitions")
    ap.add_argument("--fetch-chunk", type=int, default=2000,
                    help="event order: most records of one partition per fetch")  # fmt: skip
    ap.add_argument("--produce-rate", type=float, default=25_000.0,
                    help="event order: events/s of the burst (their ts)")  # fmt: skip
    ap.add_argument("--label-delay", type=int, default=None,
                    help="labels late: events between an event and its label")  # fmt: skip
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the event-order and late-label figures")  # fmt: skip
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.smoke:  # one short abrupt SEA stream and a stationary one
        args.quick = True
        args.generators = args.generators if args.generators != list(GENERATORS) else ["stagger"]
        args.kinds = args.kinds if args.kinds != list(KINDS) else ["abrupt", "stationary"]
        defaults = {"seeds": [1], "position": 1500, "length": 4000, "gradual_width": 500,
                    "label_delay": 1000}  # fmt: skip
    elif args.quick:
        defaults = {"seeds": [1, 2], "position": 3000, "length": 8000, "gradual_width": 1000,
                    "label_delay": 5000}  # fmt: skip
    else:
        defaults = {"seeds": [1, 2, 3, 4, 5], "position": 5000, "length": 14000,
                    "gradual_width": 2000, "label_delay": 5000}  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from streams.settings import TriggerSettings

    trigger = TriggerSettings()
    args.detector = args.detector or trigger.detector
    args.drift_sensitivity = trigger.drift_sensitivity
    widest = max(args.abrupt_width, args.gradual_width)
    if args.position + widest + args.window > args.length:
        ap.error("--length leaves no room after the change for one rolling window")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*ks_2samp.*")  # the data-drift KS test
    logging.getLogger("trainers").setLevel(logging.ERROR)  # each job logs its gate decision
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)  # the jobs' tiny MLP: threads only contend on a small box
    rows: list[dict[str, Any]] = []
    specs = plan(args)
    for i, spec in enumerate(specs, start=1):
        run = run_stream(spec, args)
        rows.append(score_stream(spec, run, args))
        r = rows[-1]
        print(
            f"[{i}/{len(specs)}] {spec.name} {spec.kind} seed {spec.seed}: delay "
            f"{_num(r['detection_delay'])} (river {_num(r['river_detection_delay'])}), "
            f"{len(run.jobs)} job(s), {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
    extras = {} if args.no_extras or "abrupt" not in args.kinds else run_extras(args)
    settings = make_settings(args, Path(tempfile.gettempdir()))
    result: dict[str, Any] = {
        **extras,
        "streams": rows,
        "overall": aggregate(rows),
        "by_kind": {k: aggregate([r for r in rows if r["kind"] == k]) for k in args.kinds},
        "by_generator": {
            g: aggregate([r for r in rows if r["generator"] == g]) for g in args.generators
        },
        "batch_size": args.batch_size,
        "detector": args.detector,
        "params": {
            "trigger": settings.trigger.model_dump(),
            "trigger_overrides": {"cooldown_s": 0.0, "volume_threshold": 0},
            "online_model": settings.models.online,
            "serving": settings.models.serving,
            "drift_reaction": settings.models.drift_reaction,
            "river_bare": f"{type(_detector(args.detector, args.drift_sensitivity)).__name__}"
            f" sensitivity={args.drift_sensitivity}",
            "seeds": args.seeds,
            "generators": args.generators,
            "kinds": args.kinds,
            "position": args.position,
            "length": args.length,
            "abrupt_width": args.abrupt_width,
            "gradual_width": args.gradual_width,
            "change_start": "position - width",
            "change_end": "position + width",
            "window": args.window,
            "tolerance": args.tolerance,
            "detect_window": args.detect_window,
            "job_lag_batches": args.job_lag_batches,
            "job_device": args.device,
            "partitions": args.partitions,
            "fetch_chunk": args.fetch_chunk,
            "label_delay": args.label_delay,
            "lateness_s": settings.models.lateness_s,
        },
        "quick": bool(args.quick),
        "smoke": bool(args.smoke),
        "machine": machine_info("river", "torch", "numpy"),
    }
    result["wall_s"] = time.perf_counter() - started
    out = write_result(result, args.out, "drift")
    result["out"] = str(out)
    print_report(result)
    if args.strict and not result["overall"]["meets_target"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
