"""The online service: what the learner loop does with each batch of valid events.

For each event, in order:

* features (or text) without a label → predict; keep the features for a late label;
* features and a label → predict, then learn (prequential metrics are updated);
* a label only → join it with the kept features of the same id and learn; an id that is not
  (or no longer) waiting is counted (``orphan_labels``), never learned twice.

Offsets are tracked per partition and saved with the model in one atomic checkpoint, so a
restarted learner resumes exactly after the last record its checkpointed model has seen:
records before that are not learned again (their predictions may be produced again).

>>> from types import SimpleNamespace as R
>>> svc = OnlineService(OnlineLearner("logreg"), checkpoint_path=None)
>>> out = svc.process([R(partition=0, offset=0, value={"id": "a", "features": {"x": 1.0}},
...                      timestamp=0.0)])
>>> [(c, k) for c, k, _ in out], svc.offsets()
([('predictions', 'a')], {0: 1})
>>> _ = svc.process([R(partition=0, offset=1, value={"id": "a", "label": True}, timestamp=0.0)])
>>> svc.learner.n_learned, len(svc.joiner)
(1, 0)
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainers.data_drift import FeatureDriftMonitor
from trainers.drift_monitor import ConceptDriftMonitor, DriftSignal
from trainers.exceptions import CheckpointError
from trainers.learner import LabelJoiner, OnlineLearner, to_features
from trainers.serving import ServingPolicy
from trainers.trigger import TriggerPolicy

log = logging.getLogger(__name__)

__all__ = ["OnlineService", "load_checkpoint", "save_checkpoint"]

_FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: temp file in the same folder, fsync, rename, fsync folder.

    A crash at any point leaves either the old checkpoint or the new one, never a mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(body).hexdigest().encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"LLCK%d\n" % _FORMAT + digest + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, None when there is none; a damaged file is a :class:`CheckpointError`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header, _, rest = data.partition(b"\n")
    digest, _, body = rest.partition(b"\n")
    if header != b"LLCK%d" % _FORMAT or hashlib.sha256(body).hexdigest().encode() != digest:
        raise CheckpointError(
            f"checkpoint {path} is damaged or of another format; move it away to start fresh"
        )
    state: dict[str, Any] = pickle.loads(body)
    return state


def _has_input(event: dict[str, Any]) -> bool:
    return "features" in event or "text" in event


def _model_input(event: dict[str, Any]) -> Any:
    """The batch model's input for an event: its text if any, else its features."""
    text = event.get("text")
    return text if text is not None else dict(event.get("features") or {})


def _with_knobs(saved: TriggerPolicy, configured: TriggerPolicy) -> TriggerPolicy:
    for knob in ("topic", "volume_threshold", "schedule_seconds", "cooldown_seconds",
                 "warning_action", "drift_action", "data_drift_action",
                 "drift_min_records"):  # fmt: skip
        setattr(saved, knob, getattr(configured, knob))
    return saved


class OnlineService:
    """The learner's state machine: model, late-label joiner, offsets, checkpoints.

    Parameters
    ----------
    learner
        The online learner (used when there is no checkpoint yet).
    checkpoint_path
        Where the checkpoint lives; None keeps everything in memory (tests, doctests).
    every_records, every_seconds
        Checkpoint when this many records, or this much time, went by since the last one.
    label_ttl_seconds
        How long features wait for a late label.
    """

    def __init__(
        self,
        learner: OnlineLearner,
        checkpoint_path: Path | None,
        every_records: int = 1000,
        every_seconds: float = 10.0,
        label_ttl_seconds: float = 3600.0,
        monitor: ConceptDriftMonitor | None = None,
        policy: TriggerPolicy | None = None,
        serving: ServingPolicy | None = None,
        data_monitor: FeatureDriftMonitor | None = None,
    ) -> None:
        self.learner = learner
        self.serving = serving or ServingPolicy("online", learner.task)
        self.monitor = monitor or ConceptDriftMonitor()
        self.data_monitor = data_monitor
        self.policy = policy or TriggerPolicy(learner.name, "events")
        self.joiner = LabelJoiner(label_ttl_seconds)
        self.checkpoint_path = checkpoint_path
        self.every_records = every_records
        self.every_seconds = every_seconds
        self._offsets: dict[int, int] = {}
        self.orphan_labels = 0
        self.duplicates_skipped = 0
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        if checkpoint_path is not None:
            state = load_checkpoint(checkpoint_path)
            if state is not None:
                self.learner = OnlineLearner.restore(state["learner"])
                self.joiner = state["joiner"]
                self._offsets = dict(state["offsets"])
                self.orphan_labels = state.get("orphan_labels", 0)
                self.monitor = state.get("monitor", self.monitor)
                if self.data_monitor is not None:
                    self.data_monitor = state.get("data_monitor") or self.data_monitor
                # Settings may have changed since; keep the state, take the new knobs.
                self.policy = _with_knobs(state.get("policy", self.policy), self.policy)
                log.info("resumed %s from checkpoint at offsets %s", self.learner.version,
                         self._offsets)  # fmt: skip

    def offsets(self) -> dict[int, int]:
        return dict(self._offsets)

    def start(self) -> None:
        """Load the batch version serving now (if the policy uses one) and wait for it."""
        self.serving.request_reload()
        self.serving.apply_pending(wait=120.0)

    def process(self, records: Sequence[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Predict and learn from valid ``events`` records (in order); return predictions."""
        outputs: list[tuple[str, str, dict[str, Any]]] = []
        now = time.time()
        # A promoted version swaps in here, between micro-batches: each event below is
        # answered by exactly one version. The batch model predicts the whole micro-batch at
        # once (it does not learn, so batching changes nothing).
        self.serving.apply_pending()
        fresh = [r for r in records if r.offset >= self._offsets.get(r.partition, 0)]
        self.duplicates_skipped += len(records) - len(fresh)  # already in the checkpoint
        batch_preds = iter(
            self.serving.batch_predictions(
                [_model_input(r.value) for r in fresh if _has_input(r.value)]
            )
            or ()
        )
        for rec in fresh:
            started = time.perf_counter()
            event = rec.value
            label = event.get("label")
            self.policy.observe(rec.partition, rec.offset, labelled=label is not None)
            if _has_input(event):
                x = to_features(event)
                if self.data_monitor is not None and event.get("features"):
                    shift = self.data_monitor.update(event["features"])
                    if shift is not None:
                        outputs.extend(self.on_signal(shift, rec, data=True))
                batch = next(batch_preds, None)
                source = self.serving.choose()  # before this label is scored
                if label is None:
                    pred = self.learner.predict(x)
                    self.joiner.put(event["id"], (x, _model_input(event)), now)
                else:
                    pred = self.learner.predict_then_learn(x, label)
                    if batch is not None:
                        self.serving.score(label, pred.prediction, batch[0])
                    outputs.extend(self._watch(pred.prediction, label, rec))
                value = self._prediction(event, pred, started, now)
                if source == "batch" and batch is not None:
                    value.update(prediction=batch[0], model_version=str(self.serving.version))
                    value.pop("proba", None)
                    if batch[1] is not None:
                        value["proba"] = batch[1]
                value["source"] = source
                outputs.append(("predictions", event["id"], value))
            else:
                waiting = self.joiner.pop(event["id"])
                if waiting is None:
                    self.orphan_labels += 1
                else:
                    x_waiting, raw = waiting if isinstance(waiting, tuple) else (waiting, None)
                    before = self.learner.predict(x_waiting).prediction
                    self.learner.rolling.update(label, before)
                    if raw is not None and self.serving.uses_batch:
                        batch_late = self.serving.batch_predictions([raw])
                        if batch_late:
                            self.serving.score(label, before, batch_late[0][0])
                    self.learner.learn(x_waiting, label)
                    outputs.extend(self._watch(before, label, rec))
            self._offsets[rec.partition] = rec.offset + 1
            self._since_checkpoint += 1
        self.joiner.expire(now)
        job = self.policy.tick(now)
        if job is not None:
            outputs.append(("training-jobs", job.job_id, job.to_record(self.learner.name)))
        return outputs

    def _watch(
        self, prediction: Any, label: Any, rec: Any
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Feed the prediction's error to the drift monitor; alert and ask for a job."""
        if self.learner.task == "classification":
            error = 0.0 if prediction == label else 1.0
        else:
            error = abs(float(label) - float(prediction or 0.0))
        signal = self.monitor.update(error)
        if signal is None:
            return []
        return self.on_signal(signal, rec)

    def on_signal(
        self, signal: DriftSignal, rec: Any, data: bool = False
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """A drift alert, and the job the policy decides for it."""
        what = (
            f"{signal.signal} {signal.value:.3f} vs threshold {signal.threshold:.3f}"
            if data
            else f"error {signal.value:.3f} vs {signal.baseline:.3f}"
        )
        detail = (
            f"{signal.detector} {signal.severity}: {what} at offset {rec.offset} of partition "
            f"{rec.partition}"
        )
        job = self.policy.on_drift(signal.severity, detail, data=data)
        # The action asked for (the job may start later, once enough new data arrived).
        action = self.policy.action_for(signal.severity, data)
        alert = signal.to_alert(self.learner.name, self.learner.version, action, rec)
        alert_id = alert["alert_id"]
        out: list[tuple[str, str, dict[str, Any]]] = [("drift-alerts", alert_id, alert)]
        if job is not None:
            out.append(("training-jobs", job.job_id, job.to_record(self.learner.name)))
        return out

    def on_model_update(self, update: dict[str, Any]) -> None:
        """Feedback from ``model-updates``: jobs in flight, and a new normal after a promotion."""
        if update.get("model") not in (None, self.learner.name):
            return
        status = update.get("status", "")
        offsets = (update.get("data") or {}).get("offsets")
        self.policy.job_update(update.get("job_id", ""), status, update.get("model_version"),
                               offsets)  # fmt: skip
        if status == "promoted":
            # The concept monitor watches the online model's errors, which a batch promotion
            # does not change: it keeps its reference (a drift resets it by itself).
            if self.data_monitor is not None:  # the promoted model's world is the new normal
                self.data_monitor.reset_reference()
            self.serving.request_reload()  # swapped in before the next micro-batch

    def status(self) -> dict[str, Any]:
        """What serves now and how well: for metrics and ``livelearn status``."""
        paired = self.serving.rolling()
        return {
            "online_version": self.learner.version,
            "batch_version": self.serving.version,
            "serving": self.serving.choose(),
            "online_metrics": self.learner.metrics(),
            "paired": {"online": paired[0], "batch": paired[1], "n": len(self.serving.paired)}
            if paired is not None else None,
        }  # fmt: skip

    def _prediction(
        self, event: dict[str, Any], pred: Any, started: float, now: float
    ) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": event["id"],
            "prediction": pred.prediction,
            "model": self.learner.name,
            "model_version": self.learner.version,
            "ts": now,
            "latency_ms": (time.perf_counter() - started) * 1000,
        }
        if pred.proba is not None:
            value["proba"] = pred.proba
        return value

    def maybe_checkpoint(self, force: bool = False) -> bool:
        """Checkpoint when due (or forced); True when one was written."""
        if self.checkpoint_path is None or (not force and self._since_checkpoint == 0):
            return False
        due = (
            self._since_checkpoint >= self.every_records
            or time.monotonic() - self._last_checkpoint >= self.every_seconds
        )
        if not (due or force):
            return False
        save_checkpoint(
            self.checkpoint_path,
            {
                "learner": self.learner.snapshot(),
                "joiner": self.joiner,
                "offsets": dict(self._offsets),
                "orphan_labels": self.orphan_labels,
                "monitor": self.monitor,
                "data_monitor": self.data_monitor,
                "policy": self.policy,
                "saved": time.time(),
            },
        )
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return True
