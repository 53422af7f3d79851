"""Drift monitor and trigger policy, without a broker."""

from __future__ import annotations

import itertools
import random

import pytest
from river.datasets import synth

from trainers.drift.concept import DETECTORS, ConceptDriftMonitor
from trainers.drift.trigger import TriggerPolicy
from trainers.online.learner import OnlineLearner


def _signals(stream, n: int) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    learner, monitor, out = OnlineLearner("logreg"), ConceptDriftMonitor(), []
    for x, y in stream.take(n):
        pred = learner.predict_then_learn(x, y)
        signal = monitor.update(0.0 if pred.prediction == y else 1.0)
        if signal:
            out.append((signal.severity, signal.index))
    return out


def test_abrupt_sea_change_gives_one_drift_soon_after() -> None:
    for seed in (1, 2, 3):
        stream = synth.ConceptDriftStream(
            synth.SEA(seed=seed, variant=0), synth.SEA(seed=seed, variant=3),
            position=5000, width=50, seed=seed,
        )  # fmt: skip
        drifts = [i for sev, i in _signals(stream, 12_000) if sev == "drift"]
        assert len(drifts) == 1 and 5000 < drifts[0] < 5500, (seed, drifts)


def test_stationary_stream_gives_no_alert() -> None:
    assert _signals(synth.SEA(seed=7, variant=0), 20_000) == []


def test_falling_error_is_not_an_alert() -> None:
    rng, monitor = random.Random(0), ConceptDriftMonitor(min_samples=0)
    for i in range(6000):  # a model warming up: its error falls from 50 % to 5 %
        rate = 0.5 if i < 3000 else 0.05
        assert monitor.update(float(rng.random() < rate)) is None


def _policy(**kw: object) -> TriggerPolicy:
    policy = TriggerPolicy("m", "events", **kw)  # type: ignore[arg-type]
    for p in (0, 1):
        for off in range(500):
            policy.observe(p, off, labelled=True)
    return policy


def test_drift_retrain_covers_the_history_and_cooldown_debounces_a_burst() -> None:
    policy = _policy(volume_threshold=0, cooldown_seconds=600)
    policy.trained_offsets = {0: 200, 1: 300}
    job = policy.on_drift("drift", "d", now=1000.0)
    assert job is not None and job.kind == "retrain"
    assert job.data["offsets"] == {"0": [0, 500], "1": [0, 500]}
    policy.job_update(job.job_id, "promoted", "v1")
    assert [policy.on_drift("drift", "again", now=1000.0 + t) for t in (1, 5, 30)] == [None] * 3
    assert sum("cooldown" in d for d in policy.decisions) == 3
    assert policy.on_drift("drift", "later", now=1700.0) is not None


def test_retrain_supersedes_a_pending_finetune_but_not_a_running_one() -> None:
    policy = _policy(volume_threshold=0, cooldown_seconds=0)
    policy.serving_version = "v1"
    finetune = policy.on_drift("warning", "w", now=1.0)
    assert finetune is not None and finetune.kind == "finetune"
    retrain = policy.on_drift("drift", "d", now=2.0)
    assert retrain is not None and retrain.kind == "retrain"
    assert any("supersedes" in d for d in policy.decisions)
    policy.job_update(retrain.job_id, "started")
    assert policy.on_drift("drift", "d2", now=3.0) is None  # one job in flight


def test_volume_schedule_and_manual_jobs_have_the_right_kind_and_offsets() -> None:
    policy = _policy(volume_threshold=1000, cooldown_seconds=0)
    job = policy.tick(now=1.0)
    # Nothing serves yet: the volume trigger's fine-tune becomes the first retrain.
    assert job is not None and (job.kind, job.reason) == ("retrain", "volume")
    assert job.data["offsets"] == {"0": [0, 500], "1": [0, 500]}
    policy.job_update(job.job_id, "promoted", "v1")
    for off in range(500, 600):
        policy.observe(0, off, labelled=True)
    manual = policy.manual("finetune", now=2.0)
    assert manual is not None and manual.reason == "manual"
    assert manual.data["offsets"] == {"0": [500, 600], "1": [500, 500]}
    assert manual.base_version == "v1"
    policy.job_update(manual.job_id, "rejected")

    scheduled = TriggerPolicy("m", "events", volume_threshold=0, schedule_seconds=60,
                              cooldown_seconds=0, serving_version="v1")  # fmt: skip
    scheduled.observe(0, 9, labelled=True)
    assert scheduled.tick(now=100.0) is None  # the schedule starts now
    job = scheduled.tick(now=161.0)
    assert job is not None and (job.kind, job.reason) == ("finetune", "schedule")
    assert job.data["offsets"] == {"0": [0, 10]} and job.base_version == "v1"


def test_same_decision_same_job_id() -> None:
    a, b = _policy(volume_threshold=0), _policy(volume_threshold=0)
    job_a, job_b = a.on_drift("drift", "x", now=1.0), b.on_drift("drift", "y", now=5.0)
    assert job_a is not None and job_b is not None and job_a.job_id == job_b.job_id


def test_a_drift_job_waits_for_enough_new_data() -> None:
    policy = _policy(volume_threshold=0, cooldown_seconds=0, drift_min_records=200)
    policy.serving_version = "v1"
    policy.trained_offsets = {0: 500, 1: 500}
    assert policy.on_drift("warning", "w", now=1.0) is None  # asked for, not started yet
    assert policy.action_for("warning") == "finetune" and policy.pending_drift is not None
    for off in range(500, 650):
        policy.observe(0, off, labelled=True)
    assert policy.tick(now=2.0) is None  # 150 < 200
    assert policy.on_drift("drift", "d", now=2.5) is None  # a retrain supersedes the wait ...
    for off in range(650, 900):
        policy.observe(0, off, labelled=True)
    job = policy.tick(now=3.0)  # ... and waits its own 200 records
    assert job is not None and (job.kind, job.reason) == ("retrain", "drift")
    assert job.data["offsets"] == {"0": [0, 900], "1": [0, 500]}
    # Where the drift was signalled, so that the retrain learns what came after it.
    assert job.data["since"] == {"0": 650, "1": 500}
    assert policy.pending_drift is None and policy.tick(now=4.0) is None


def test_a_drift_during_a_job_or_the_cooldown_waits_for_its_turn() -> None:
    # The detector signals a change once; dropping it would leave the model on the old
    # concept, so its job starts as soon as the running job is done and the cooldown is over.
    policy = _policy(volume_threshold=500, cooldown_seconds=60, drift_action="finetune")
    volume = policy.tick(now=0.0)
    assert volume is not None and volume.reason == "volume"
    assert policy.on_drift("drift", "d", now=5.0) is None  # the volume job is in flight
    assert policy.tick(now=6.0) is None and policy.tick(now=7.0) is None
    assert sum("waits" in d or "deferred" in d for d in policy.decisions) == 1  # said once
    policy.job_update(volume.job_id, "promoted", "v1")
    for off in range(500, 600):
        policy.observe(0, off, labelled=True)
    assert policy.tick(now=30.0) is None  # cooldown: 60 s since the volume job started
    job = policy.tick(now=61.0)
    assert job is not None and (job.kind, job.reason) == ("finetune", "drift")
    assert job.data["offsets"] == {"0": [500, 600], "1": [500, 500]}
    assert policy.pending_drift is None


@pytest.mark.parametrize("detector", DETECTORS)
def test_every_detector_sees_an_abrupt_rise_of_the_error_and_not_a_flat_one(detector: str) -> None:
    rng = random.Random(7)
    flat = ConceptDriftMonitor(detector)
    assert [s for _ in range(6000) if (s := flat.update(float(rng.random() < 0.1)))] == []
    monitor = ConceptDriftMonitor(detector)
    signals = [
        (s.severity, i) for i in range(6000)
        if (s := monitor.update(float(rng.random() < (0.1 if i < 3000 else 0.5))))
    ]  # fmt: skip
    # Noticed soon after the change (KSWIN at the default drift sensitivity only warns here),
    # nothing before it; after a drift, quiet_records (2000) of silence.
    assert signals and 3000 < signals[0][1] < 3400, signals
    drifts = [i for severity, i in signals if severity == "drift"]
    assert all(b - a >= monitor.quiet_records for a, b in itertools.pairwise(drifts)), signals
    assert detector == "kswin" or (drifts and 3000 < drifts[0] < 3400), signals
