"""The trigger policy through real Kafka: a burst in the cooldown, schedule, manual requests."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from river.datasets import synth

from streams.contracts import FINAL_JOB_STATUSES
from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import Settings, TriggerSettings
from streams.topics import ensure_topics, topic_specs
from streams.trainer_worker import TrainerWorker, topic_offsets
from tests.conftest import make_settings, settings_env
from tests.integration.worker import WorkerProcess
from trainers.online.state import load_checkpoint

ROWS = list(itertools.islice(synth.SEA(seed=1, variant=0), 9000))


def _settings(tmp_path: Path, bootstrap: str, trigger: TriggerSettings) -> Settings:
    s = make_settings(tmp_path, bootstrap, partitions=1, trigger=trigger)
    ensure_topics(admin_client(s, bootstrap), topic_specs(s.topics))
    return s


def _send(client: LiveLearnClient, lo: int, hi: int, flipped: range = range(0)) -> None:
    for i in range(lo, hi):
        x, y = ROWS[i]
        client.send_event(f"s{i}", features=x, label=bool(y) != (i in flipped))
    client.flush()


def _records(client: LiveLearnClient, stream: str) -> list[dict[str, Any]]:
    return list(client.subscribe(stream, from_beginning=True, timeout_s=3))


def _policy(s: Settings) -> Any:
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None
    return state["policy"]


def test_a_burst_of_drift_signals_in_the_cooldown_gives_one_job(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    # The labels flip at 3000 and flip back at 5500: two drifts (no quiet period between
    # alerts here), and a cooldown of an hour after the first job.
    trigger = TriggerSettings(volume_threshold=0, warning_action="none", quiet_records=0,
                              cooldown_s=3600, drift_min_records=200)  # fmt: skip
    s = _settings(tmp_path, kafka_bootstrap, trigger)
    client = LiveLearnClient(s)
    trainer = TrainerWorker(s, kafka_bootstrap, {"epochs": 2, "seed": 1})
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    flipped = range(3000, 5500)
    try:
        _send(client, 0, 5000, flipped)
        promoted = None
        for u in client.subscribe("model-updates", from_beginning=True, timeout_s=180):
            if u["status"] in FINAL_JOB_STATUSES:
                promoted = u
                break
        assert promoted is not None and promoted["status"] == "promoted", promoted
        _send(client, 5000, 9000, flipped)  # the second change comes in the cooldown
        for p in client.subscribe("predictions", from_beginning=True, timeout_s=120):
            if p["id"] == "s8999":
                break
    finally:
        worker.stop()
        trainer.stop()
        thread.join(30)
    drifts = [a for a in _records(client, "drift-alerts") if a["severity"] == "drift"]
    jobs = _records(client, "training-jobs")
    assert len(drifts) >= 2, drifts
    assert [(j["kind"], j["reason"]) for j in jobs] == [("retrain", "drift")]
    # The burst in the cooldown is held as one deferred job (a drift is signalled once; it
    # starts when the cooldown ends), not one job per signal and not dropped.
    policy = _policy(s)
    assert sum("waits, cooldown" in d for d in policy.decisions) == 1, policy.decisions
    assert policy.pending_drift is not None and policy.pending_drift[0] == "retrain"


def test_a_scheduled_job_covers_what_arrived(tmp_path: Path, kafka_bootstrap: str) -> None:
    trigger = TriggerSettings(volume_threshold=0, warning_action="none", drift_action="none",
                              schedule_s=3, cooldown_s=0)  # fmt: skip
    s = _settings(tmp_path, kafka_bootstrap, trigger)
    client = LiveLearnClient(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        _send(client, 0, 500)
        for p in client.subscribe("predictions", from_beginning=True, timeout_s=60):
            if p["id"] == "s499":  # the learner runs: the schedule started with it
                break
        _send(client, 500, 600)  # the interval passes, and the policy looks even when idle
        jobs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not jobs and time.monotonic() < deadline:
            jobs = _records(client, "training-jobs")
    finally:
        worker.stop()
    assert jobs and (jobs[0]["kind"], jobs[0]["reason"]) == ("retrain", "schedule")
    lo, hi = jobs[0]["data"]["offsets"]["0"]  # nothing serves yet: the whole history so far
    assert lo == 0 and 500 <= hi <= 600


def test_a_manual_request_from_the_cli(tmp_path: Path, kafka_bootstrap: str) -> None:
    s = _settings(tmp_path, kafka_bootstrap, TriggerSettings(volume_threshold=0))
    client = LiveLearnClient(s)
    _send(client, 0, 300)
    env = settings_env(s)
    cmd = [sys.executable, "-m", "streams", "train", "--kind"]
    refused = subprocess.run([*cmd, "finetune"], env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "nothing to fine-tune" in refused.stderr
    done = subprocess.run([*cmd, "retrain"], env=env, capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    printed = orjson.loads(done.stdout.strip().splitlines()[-1])
    [job] = _records(client, "training-jobs")
    assert job == printed and (job["kind"], job["reason"]) == ("retrain", "manual")
    low, high = topic_offsets(s, kafka_bootstrap, s.topics.events)[0]
    assert job["data"]["offsets"] == {"0": [low, high]} and high == 300
