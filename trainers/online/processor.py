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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from trainers.drift.concept import ConceptDriftMonitor, DriftSignal, KeyedDriftMonitors
from trainers.drift.data import FeatureDriftMonitor
from trainers.drift.label_free import LabelFreeMonitors
from trainers.drift.trigger import TriggerPolicy
from trainers.exceptions import CheckpointError, ModelSpecError
from trainers.online.learner import Challenger, LabelJoiner, OnlineLearner
from trainers.online.serving import ServingPolicy

log = logging.getLogger(__name__)

__all__ = [
    "OnlineService",
    "Rejected",
    "SnapshotPredictor",
    "load_checkpoint",
    "prediction_record",
    "save_checkpoint",
]

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


@dataclass(frozen=True)
class Rejected:
    """A valid record that could not be processed: the loop dead-letters it with ``reason``."""

    partition: int
    offset: int
    reason: str


def prediction_record(
    event_id: str,
    model: str,
    version: str,
    source: str,
    answer: tuple[Any, dict[str, float] | None],
    started: float,
    now: float,
    key: str | None = None,
) -> dict[str, Any]:
    """A ``predictions`` value: the one shape the learner and the replicas both produce.

    >>> v = prediction_record("e1", "m", "online-3", "online", (True, {"True": 0.9}), 0.0, 5.0)
    >>> sorted(v)
    ['id', 'latency_ms', 'model', 'model_version', 'prediction', 'proba', 'source', 'ts']
    >>> v["prediction"], v["proba"]
    (True, {'True': 0.9})
    """
    value: dict[str, Any] = {
        "id": event_id,
        "prediction": answer[0],
        "model": model,
        "model_version": version,
        "source": source,
        "ts": now,
        "latency_ms": max(0.0, (time.perf_counter() - started) * 1000) if started else 0.0,
    }
    if answer[1] is not None:
        value["proba"] = answer[1]
    if key is not None:
        value["model_key"] = key
    return value


def model_key(event: dict[str, Any], per_key: str) -> str | None:
    """The value of the ``per_key`` feature that selects the event's own model, or None.

    >>> model_key({"features": {"tenant": 7}}, "tenant"), model_key({"text": "x"}, "tenant")
    ('7', None)
    """
    if not per_key:
        return None
    value = (event.get("features") or {}).get(per_key)
    return None if value is None else str(value)


def _waiting(item: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None, Any, str | None]:
    """``(event, features, model input, key)`` of a joiner entry: the compact event this
    version keeps (features derived again when the label comes), or what older checkpoints
    kept (features, and maybe the model input and key)."""
    if isinstance(item, tuple) and item and isinstance(item[0], bytes):
        return orjson.loads(item[0]), None, None, item[1]
    if not isinstance(item, tuple):
        return None, item, None, None
    if len(item) == 2:
        return None, item[0], item[1], None
    return None, item[0], item[1], item[2]


def _with_knobs(saved: TriggerPolicy, configured: TriggerPolicy) -> TriggerPolicy:
    for knob in ("topic", "volume_threshold", "schedule_seconds", "cooldown_seconds",
                 "warning_action", "drift_action", "data_drift_action", "label_free_action",
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
    label_store_bytes
        Memory for events waiting for a late label; the oldest are evicted first.
    lineage
        ``version -> training offsets`` of a promoted version in the registry (None when it
        is not one): a ``promoted`` update is believed only when this confirms it.
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
        emit_predictions: bool = True,
        per_key: str = "",
        max_keys: int = 10_000,
        reaction: str = "none",
        reaction_window: int = 200,
        label_store_bytes: int = 64 * 2**20,
        lineage: Callable[[str], dict[str, list[int]] | None] | None = None,
        label_free: LabelFreeMonitors | None = None,
    ) -> None:
        self.learner = learner
        self.lineage = lineage
        self.serving = serving or ServingPolicy("online", learner.task)
        self.monitor = monitor or ConceptDriftMonitor()
        self.data_monitor = data_monitor
        self.label_free = label_free  # predictions and estimated accuracy, before labels
        self.emit_predictions = emit_predictions  # False: predictor replicas answer events
        # Per-key models: one learner per value of the feature ``per_key`` (events without it,
        # and keys beyond ``max_keys``, use the shared model ``self.learner``).
        self.per_key = per_key
        self.max_keys = max_keys
        self.learners: dict[str, OnlineLearner] = {}
        self.overflow_keys = 0
        self.key_monitors = KeyedDriftMonitors(self.monitor, min(max_keys, 1000)) \
            if per_key else None  # fmt: skip
        # The online model's own reaction to a concept drift: ``fresh`` races a new model
        # trained on the recent window against it and switches when the new one is better.
        if reaction not in ("none", "fresh"):
            raise ModelSpecError(f"drift reaction must be none or fresh, not {reaction!r}")
        self.reaction = reaction
        self.reaction_window = reaction_window
        self.recent: deque[tuple[dict[str, Any], Any]] = deque(maxlen=reaction_window)
        self.challenger: Challenger | None = None
        self.reactions: list[str] = []
        self.policy = policy or TriggerPolicy(learner.name, "events")
        self.joiner = LabelJoiner(label_ttl_seconds, max_bytes=label_store_bytes)
        self.rejected_total = 0
        self._rejected: list[Rejected] = []
        self._batch_time = 0.0
        self.checkpoint_path = checkpoint_path
        self.every_records = every_records
        self.every_seconds = every_seconds
        self._offsets: dict[int, int] = {}
        # The learner loop's event-time merge, as of the records processed (set by the loop).
        self.ordering_state: dict[str, Any] | None = None
        self.orphan_labels = 0
        self.duplicates_skipped = 0
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        if checkpoint_path is not None:
            state = load_checkpoint(checkpoint_path)
            if state is not None:
                self.learner = OnlineLearner.restore(state["learner"])
                self.learners = {k: OnlineLearner.restore(v)
                                 for k, v in state.get("learners", {}).items()}  # fmt: skip
                self.challenger = state.get("challenger")
                self.recent = state.get("recent", self.recent)
                self.joiner = state["joiner"]
                self.joiner.max_bytes = label_store_bytes
                self.joiner.ttl_seconds = label_ttl_seconds
                self.rejected_total = state.get("rejected_total", 0)
                self._offsets = dict(state["offsets"])
                self.ordering_state = state.get("ordering")
                self.orphan_labels = state.get("orphan_labels", 0)
                self.monitor = state.get("monitor", self.monitor)
                if self.data_monitor is not None:
                    self.data_monitor = state.get("data_monitor") or self.data_monitor
                if self.label_free is not None:
                    self.label_free = state.get("label_free") or self.label_free
                if self.key_monitors is not None:
                    self.key_monitors = state.get("key_monitors") or self.key_monitors
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
        """Predict and learn from valid ``events`` records (in order); return the outputs.

        One record never costs more than itself: a record the model cannot take (a label of
        the wrong type, a feature the model refuses) is set aside with its reason
        (:meth:`take_rejected`, dead-lettered by the loop) and the next one goes on.
        """
        outputs: list[tuple[str, str, dict[str, Any]]] = []
        # A promoted version swaps in here, between micro-batches: each event below is
        # answered by exactly one version.
        self.serving.apply_pending()
        self._batch_time = time.time()  # every prediction of the micro-batch carries it
        fresh = self._fresh(records)
        for rec, batch_answer in zip(fresh, self._batch_answers(fresh), strict=True):
            try:
                outputs.extend(self._process_one(rec, batch_answer))
            except Exception as exc:  # the model refused it: this record only
                self._reject(rec, f"the online model cannot learn or answer this record: "
                                  f"{type(exc).__name__}: {exc}")  # fmt: skip
            self._offsets[rec.partition] = rec.offset + 1
            self._since_checkpoint += 1
        self.joiner.expire(time.monotonic())
        job = self.policy.tick(time.time())
        if job is not None:
            outputs.append(("training-jobs", job.job_id, job.to_record(self.learner.name)))
        return outputs

    def take_rejected(self) -> list[Rejected]:
        """The records set aside since the last call (the loop dead-letters them)."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def _fresh(self, records: Sequence[Any]) -> list[Any]:
        """The records the checkpoint has not seen (a replay after a restart skips the rest)."""
        fresh = [r for r in records if r.offset >= self._offsets.get(r.partition, 0)]
        self.duplicates_skipped += len(records) - len(fresh)
        return fresh

    def _batch_answers(self, fresh: list[Any]) -> list[Any]:
        """The batch model's answer per record (None: no input, not used, or refused): it does
        not learn, so the whole micro-batch is predicted at once."""
        answers: list[Any] = [None] * len(fresh)
        with_input = [i for i, r in enumerate(fresh) if _has_input(r.value)]
        predicted = self.serving.batch_predictions(
            [_model_input(fresh[i].value) for i in with_input]
        )
        for i, answer in zip(with_input, predicted or (), strict=False):
            answers[i] = answer
        return answers

    def _reject(self, rec: Any, reason: str) -> None:
        log.warning("events: record at offset %d of partition %d set aside: %s",
                    rec.offset, rec.partition, reason)  # fmt: skip
        self._rejected.append(Rejected(rec.partition, rec.offset, reason))
        self.rejected_total += 1

    def _process_one(self, rec: Any, batch_answer: Any) -> list[tuple[str, str, dict[str, Any]]]:
        """One record: check it, then predict (and learn), or join a late label."""
        event = rec.value
        label = event.get("label")
        key = self._key(event)
        if label is not None:
            reason = self.learners.get(key or "", self.learner).check_label(label)
            if reason is not None:
                self._reject(rec, reason)
                return []
        self.policy.observe(rec.partition, rec.offset, labelled=label is not None)
        if _has_input(event):
            return self._predict(rec, event, label, key, batch_answer)
        return self._join_label(rec, event["id"], label)

    def _predict(
        self, rec: Any, event: dict[str, Any], label: Any, key: str | None, batch_answer: Any
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Answer an event; learn its label when it has one (prequential)."""
        started = time.perf_counter()
        outputs: list[tuple[str, str, dict[str, Any]]] = []
        learner = self._learner(key)
        x = learner.features(event)
        if key is not None:  # constant within its model: no information
            x.pop(self.per_key, None)
        if self.data_monitor is not None and event.get("features"):
            shift = self.data_monitor.update(event["features"])
            if shift is not None:
                outputs.extend(self.on_signal(shift, rec, data=True))
        source = self.serving.choose() if batch_answer is not None else "online"
        if label is None:
            pred = learner.predict(x)
            self.joiner.put(event["id"], (self._compact(event), key), time.monotonic())
        else:
            pred = learner.predict_then_learn(x, label)
            if batch_answer is not None:
                self.serving.score(label, pred.prediction, batch_answer[0])
            self._react(x, label, pred.prediction, key)
            outputs.extend(self._watch(pred.prediction, label, rec, key))
        if self.label_free is not None:
            for shift in self.label_free.on_prediction(event["id"], pred.prediction, pred.proba,
                                                       label):  # fmt: skip
                outputs.extend(self.on_signal(shift, rec, data=True))
        if self.emit_predictions:
            if source == "batch":
                answer, version = batch_answer, str(self.serving.version)
            else:
                answer, version = (pred.prediction, pred.proba), learner.version
            outputs.append(("predictions", event["id"], prediction_record(
                event["id"], self.learner.name, version, source, answer, started, self._batch_time,
                key)))  # fmt: skip
        return outputs

    @staticmethod
    def _compact(event: dict[str, Any]) -> bytes:
        """What a late label needs of an event, as bytes: its features and text.

        Copied to an object of its own length: orjson's result keeps the whole output buffer
        it grew (16 KiB for a 1 kB text), which the byte budget would not see.
        """
        kept = {k: event[k] for k in ("features", "text") if k in event}
        return bytes(memoryview(orjson.dumps(kept)))

    def _join_label(self, rec: Any, event_id: str, label: Any
                    ) -> list[tuple[str, str, dict[str, Any]]]:  # fmt: skip
        """A late label: learn it with the event that waited for it, once."""
        if self.label_free is not None:
            self.label_free.on_label(event_id, label)
        waiting = self.joiner.pop(event_id)
        if waiting is None:
            self.orphan_labels += 1
            return []
        event, x, raw, key = _waiting(waiting)
        learner = self._learner(key)
        if event is not None:
            x = learner.features(event)
            if key is not None:
                x.pop(self.per_key, None)
            raw = _model_input(event)
        assert x is not None
        reason = learner.check_label(label)
        if reason is not None:  # the event may still get a label that fits: keep it waiting
            self.joiner.put(event_id, waiting, time.monotonic())
            self._reject(rec, reason)
            return []
        before = learner.predict(x).prediction
        learner.rolling.update(label, before)
        if raw is not None and self.serving.uses_batch:
            batch_late = self.serving.batch_predictions([raw])
            if batch_late and batch_late[0] is not None:
                self.serving.score(label, before, batch_late[0][0])
        learner.learn(x, label)
        self._react(x, label, before, key)
        return self._watch(before, label, rec, key)

    def _key(self, event: dict[str, Any]) -> str | None:
        return model_key(event, self.per_key)

    def _learner(self, key: str | None) -> OnlineLearner:
        """The model of ``key`` (created on first sight), or the shared one."""
        if key is None:
            return self.learner
        learner = self.learners.get(key)
        if learner is None:
            if len(self.learners) >= self.max_keys:
                self.overflow_keys += 1
                return self.learner
            learner = self.learners[key] = self.learner.clone_fresh()
        return learner

    def _react(self, x: dict[str, Any], label: Any, prediction: Any, key: str | None) -> None:
        """Keep the recent window; race the challenger, if one runs, on this label."""
        if self.reaction == "none" or key is not None:
            return
        self.recent.append((x, label))
        if self.challenger is None:
            return
        verdict = self.challenger.race(x, label, prediction)
        if verdict == "switch":
            old, self.learner = self.learner, self.challenger.learner
            self.reactions.append(f"switched to a fresh model after a drift (was {old.version})")
            log.warning("online model %s: %s", self.learner.name, self.reactions[-1])
            self.challenger = None
        elif verdict == "drop":
            self.reactions.append("the fresh model never beat the current one: dropped")
            self.challenger = None

    def _watch(
        self, prediction: Any, label: Any, rec: Any, key: str | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Feed the prediction's error to the drift monitor; alert and ask for a job."""
        if self.learner.task == "classification":
            error = 0.0 if prediction == label else 1.0
        else:
            error = abs(float(label) - float(prediction or 0.0))
        signal = self.monitor.update(error)
        out = [] if signal is None else self.on_signal(signal, rec)
        if key is not None and self.key_monitors is not None:  # the key's own errors too
            keyed = self.key_monitors.update(key, error)
            if keyed is not None:
                out.extend(self.on_signal(keyed, rec))
        return out

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
            f"{rec.partition}" + (f" (key {signal.key})" if signal.key is not None else "")
        )
        if not data and signal.key is None and signal.severity == "drift" \
                and self.reaction == "fresh" \
                and self.challenger is None:  # fmt: skip
            warmup = list(self.recent)[-(self.reaction_window // 2) :]  # mostly the new concept
            race = max(20, self.reaction_window // 2)
            self.challenger = Challenger(self.learner.clone_fresh(), warmup, min_samples=race)
        job = self.policy.on_drift(signal.severity, detail, data=data, signal=signal.signal)
        # The action asked for (the job may start later, once enough new data arrived).
        action = self.policy.action_for(signal.severity, data, signal.signal)
        alert = signal.to_alert(self.learner.name, self.learner.version, action, rec)
        alert_id = alert["alert_id"]
        out: list[tuple[str, str, dict[str, Any]]] = [("drift-alerts", alert_id, alert)]
        if job is not None:
            out.append(("training-jobs", job.job_id, job.to_record(self.learner.name)))
        return out

    def on_model_update(self, update: dict[str, Any]) -> None:
        """Feedback from ``model-updates``: jobs in flight, and a new normal after a promotion.

        A ``promoted`` record moves state (trained offsets, the serving version) only when
        the registry holds that version as promoted: the offsets are then the registry's
        lineage, never the record's own. Anything else raises :class:`ModelSpecError` (the
        loop dead-letters the record).
        """
        if update.get("model") not in (None, self.learner.name):
            return
        status = update.get("status", "")
        offsets = (update.get("data") or {}).get("offsets")
        version = update.get("model_version")
        if status == "promoted" and self.lineage is not None:
            offsets = self.lineage(str(version))
            if offsets is None:
                raise ModelSpecError(
                    f"version {str(version)[:80]!r} is not a promoted version of "
                    f"{self.learner.name!r} in the registry; update ignored"
                )
        self.policy.job_update(update.get("job_id", ""), status, version, offsets)
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

    def checkpoint_due(self) -> bool:
        """Whether :meth:`maybe_checkpoint` would write one now (N records or T seconds since
        the last, and something new learned)."""
        if self.checkpoint_path is None or self._since_checkpoint == 0:
            return False
        return (
            self._since_checkpoint >= self.every_records
            or time.monotonic() - self._last_checkpoint >= self.every_seconds
        )

    def maybe_checkpoint(self, force: bool = False) -> bool:
        """Checkpoint when due (or forced); True when one was written."""
        if self.checkpoint_path is None or not (force or self.checkpoint_due()):
            return False
        save_checkpoint(
            self.checkpoint_path,
            {
                "learner": self.learner.snapshot(),
                "learners": {k: v.snapshot() for k, v in self.learners.items()},
                "per_key": self.per_key,
                "challenger": self.challenger,
                "recent": self.recent,
                "joiner": self.joiner,
                "offsets": dict(self._offsets),
                "ordering": self.ordering_state,
                "orphan_labels": self.orphan_labels,
                "rejected_total": self.rejected_total,
                "monitor": self.monitor,
                "data_monitor": self.data_monitor,
                "label_free": self.label_free,
                "key_monitors": self.key_monitors,
                # What serves, for predictor replicas that answer from this snapshot.
                "serving_choice": self.serving.choose(),
                "batch_version": self.serving.version,
                "policy": self.policy,
                "saved": time.time(),
            },
        )
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return True


class SnapshotPredictor:
    """Predict-only replica: answers events with the learner's latest published snapshot.

    Learning stays single-writer (the learner holding the lease); prediction scales out over
    as many replicas as ``events`` has partitions. The snapshot is the learner's checkpoint
    (written every N records or T seconds, atomically): a replica reloads it when the file
    changes, so its online model is at most one checkpoint interval behind the learner. The
    replica serves what the learner's serving policy chose (``serving_choice`` in the
    snapshot): the online model, or the batch version the learner serves, loaded here too.

    >>> import tempfile
    >>> from types import SimpleNamespace as R
    >>> path = Path(tempfile.mkdtemp()) / "m.ckpt"
    >>> learner = OnlineService(OnlineLearner("logreg"), path, every_records=1)
    >>> for i in range(50):
    ...     _ = learner.process([R(partition=0, offset=i, timestamp=0.0,
    ...                            value={"id": f"e{i}", "features": {"x": float(i % 2)},
    ...                                   "label": i % 2 == 1})])
    ...     _ = learner.maybe_checkpoint()
    >>> replica = SnapshotPredictor(path, ServingPolicy("online", "classification"))
    >>> out = replica.process([R(partition=0, offset=0, timestamp=0.0,
    ...                          value={"id": "q", "features": {"x": 1.0}})])
    >>> [(c, v["prediction"], v["model_version"], v["source"]) for c, _k, v in out]
    [('predictions', True, 'online-50', 'online')]
    """

    def __init__(
        self,
        checkpoint_path: Path,
        serving: ServingPolicy,
        reload_every_s: float = 1.0,
        model_name: str = "default",
    ) -> None:
        self.checkpoint_path = checkpoint_path
        self.model_name = model_name
        self.serving = serving
        self.reload_every_s = reload_every_s
        self.learner: OnlineLearner | None = None
        self.learners: dict[str, OnlineLearner] = {}
        self.per_key = ""
        self.choice = "online"
        self.reloads = 0
        self._mtime: float | None = None
        self._checked = 0.0

    def refresh(self, force: bool = False) -> bool:
        """Reload the snapshot if it changed (checked at most every ``reload_every_s``)."""
        now = time.monotonic()
        if not force and now - self._checked < self.reload_every_s:
            return False
        self._checked = now
        try:
            mtime = self.checkpoint_path.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        state = load_checkpoint(self.checkpoint_path)
        if state is None:
            return False
        self.learner = OnlineLearner.restore(state["learner"])
        self.learners = {k: OnlineLearner.restore(v) for k, v in state.get("learners", {}).items()}
        self.per_key = state.get("per_key", "")
        self.choice = state.get("serving_choice", "online")
        if state.get("batch_version") and state["batch_version"] != self.serving.version:
            self.serving.request_reload()
        self._mtime = mtime
        self.reloads += 1
        return True

    def process(self, records: Sequence[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Predictions for the events with an input (label-only records need none).

        An event the model cannot answer is skipped here: the learner, which reads every
        record, dead-letters it with the reason.
        """
        self.refresh(force=self.learner is None)
        self.serving.apply_pending()
        inputs = [r for r in records if _has_input(r.value)]
        use_batch = self.choice == "batch" and self.serving.predictor is not None
        batch = self.serving.batch_predictions([_model_input(r.value) for r in inputs]) \
            if use_batch else None  # fmt: skip
        now = time.time()
        outputs: list[tuple[str, str, dict[str, Any]]] = []
        for i, rec in enumerate(inputs):
            started = time.perf_counter()
            event = rec.value
            try:
                answer, version, source, key = self._answer(event, batch[i] if batch else None)
            except Exception as exc:
                log.debug("replica: no prediction for %s: %s", event["id"], exc)
                continue
            outputs.append(
                (
                    "predictions",
                    event["id"],
                    prediction_record(
                        event["id"], self.model_name, version, source, answer, started, now, key
                    ),
                )
            )
        return outputs

    def _answer(self, event: dict[str, Any], batch_answer: Any
                ) -> tuple[tuple[Any, Any], str, str, str | None]:  # fmt: skip
        """``(answer, version, source, model key)`` for one event."""
        if batch_answer is not None:
            return batch_answer, str(self.serving.version), "batch", None
        if self.learner is None:  # no snapshot yet: the learner has not checkpointed anything
            return (None, None), "none", "online", None
        key = model_key(event, self.per_key)
        learner = self.learners.get(key, self.learner) if key is not None else self.learner
        x = learner.features(event)
        if key is not None:
            x.pop(self.per_key, None)
        pred = learner.predict(x)
        return (pred.prediction, pred.proba), learner.version, "online", key
