"""Online learning through real Kafka: prequential accuracy, late labels, crash recovery."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings
from streams.topics import ensure_topics, topic_specs
from tests.conftest import make_settings
from tests.integration.worker import WorkerProcess
from trainers.online.learner import OnlineLearner
from trainers.online.processor import load_checkpoint


@pytest.fixture
def one_partition(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    # One partition: a single, known order, so results can be compared with river's own loop.
    s = make_settings(
        tmp_path,
        kafka_bootstrap,
        partitions=1,
        models=ModelSettings(checkpoint_every_records=100, label_ttl_s=3),
    )
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    return s


def _predictions(client: LiveLearnClient, n: int, timeout_s: float = 180) -> list[dict[str, Any]]:
    out = []
    for p in client.subscribe("predictions", from_beginning=True, timeout_s=timeout_s):
        out.append(p)
        if len({q["id"] for q in out}) >= n:
            break
    return out


def _checkpoint(settings: Settings) -> dict[str, Any]:
    state = load_checkpoint(settings.data_dir / "online" / f"{settings.models.name}.ckpt")
    assert state is not None
    return state


def _send_phishing(s: Settings) -> tuple[list[tuple[dict[str, Any], bool]], LiveLearnClient]:
    """Every Phishing record as a labelled event (predict, then learn), ids p0..p1249."""
    rows = list(datasets.Phishing())
    client = LiveLearnClient(s)
    for i, (x, y) in enumerate(rows):
        client.send_event(f"p{i}", features=x, label=y)
    client.flush()
    return rows, client


def test_phishing_prequential_matches_river(one_partition: Settings, tmp_path: Path) -> None:
    s = one_partition
    rows, client = _send_phishing(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        preds = _predictions(client, len(rows))
    finally:
        worker.stop()
    ids = [p["id"] for p in preds]
    assert len(ids) == len(set(ids)) == len(rows)  # exactly one prediction per event
    labels = {f"p{i}": y for i, (_, y) in enumerate(rows)}
    ours = sum(p["prediction"] == labels[p["id"]] for p in preds) / len(preds)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    theirs = evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy()).get()
    assert abs(ours - theirs) <= 0.005, (ours, theirs)
    assert _checkpoint(s)["offsets"] == {0: len(rows)}


def test_late_labels_learned_once_and_expired_ones_counted(
    one_partition: Settings, tmp_path: Path
) -> None:
    s = one_partition
    client = LiveLearnClient(s)
    rows = list(datasets.Phishing())[:300]
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        for i, (x, _y) in enumerate(rows):
            client.send_event(f"e{i}", features=x)
        client.flush()
        _predictions(client, len(rows))  # all predicted; features wait for their labels
        late = list(range(250))
        random.Random(3).shuffle(late)
        for i in late:
            client.send_label(f"e{i}", rows[i][1])
        client.send_label("e0", rows[0][1])  # a duplicate label: must not be learned again
        client.send_label("never-seen", True)
        client.flush()
        time.sleep(4)  # the remaining 50 wait past their 3 s TTL ...
        client.send_event("tick", features=rows[0][0], wait=True)  # ... and expire here
        time.sleep(3)
        for i in range(250, 300):
            client.send_label(f"e{i}", rows[i][1])
        client.flush()
        time.sleep(3)
    finally:
        worker.stop()
    state = _checkpoint(s)
    learner = OnlineLearner.restore(state["learner"])
    assert learner.n_learned == 250
    # the 50 unlabelled events (and "tick" itself if its TTL ran out before the shutdown)
    assert state["joiner"].expired_total in (50, 51)
    assert state["orphan_labels"] == 1 + 1 + 50  # duplicate, unknown id, expired ones


def test_kill9_mid_stream_resumes_to_the_uninterrupted_model(
    one_partition: Settings, tmp_path: Path
) -> None:
    s = one_partition
    rows, client = _send_phishing(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    _predictions(client, 500)
    worker.kill()  # kill -9 somewhere after 500 predictions, between checkpoints
    worker = WorkerProcess(s, tmp_path / "worker2.log").start()
    try:
        _predictions(client, len(rows))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _checkpoint(s)["offsets"] == {0: len(rows)}:
                    break
            except AssertionError:
                pass
            time.sleep(0.5)
    finally:
        worker.stop()
    resumed = OnlineLearner.restore(_checkpoint(s)["learner"])
    assert resumed.n_learned == len(rows)  # no label learned twice, none missed
    uninterrupted = OnlineLearner("logreg")
    for x, y in rows:
        uninterrupted.predict_then_learn(x, y)
    probe = [x for x, _ in rows[::25]]
    assert [resumed.predict(x) for x in probe] == [uninterrupted.predict(x) for x in probe]
