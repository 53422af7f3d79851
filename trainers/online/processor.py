"""The online processor: what the learner loop does with each batch of valid events.

For each event, in order:

* features (or text) without a label → predict; keep the features for a late label;
* features and a label → predict, then learn (prequential metrics are updated);
* a label only → join it with the kept features of the same id and learn; an id that is not
  (or no longer) waiting is counted (``orphan_labels``), never learned twice.

Offsets are tracked per partition and saved with the model in one atomic checkpoint, so a
restarted learner resumes exactly after the last record its checkpointed model has seen:
records before that are not learned again (their predictions may be produced again).

>>> from types import SimpleNamespace as R
>>> svc = OnlineProcessor(OnlineLearner("logreg"), checkpoint_path=None)
>>> out = svc.process([R(partition=0, offset=0, value={"id": "a", "features": {"x": 1.0}},
...                      timestamp=0.0)])
>>> [(c, k) for c, k, _ in out], svc.offsets()
([('predictions', 'a')], {0: 1})
>>> _ = svc.process([R(partition=0, offset=1, value={"id": "a", "label": True}, timestamp=0.0)])
>>> svc.learner.n_learned, len(svc.joiner)
(1, 0)

One module on purpose: the named steps of :meth:`OnlineProcessor.process` all read and
write the one state they share; the records, the state file and the replica live beside it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from trainers.drift.concept import ConceptDriftMonitor, DriftSignal, KeyedDriftMonitors
from trainers.drift.data import FeatureDriftMonitor
from trainers.drift.label_free import LabelFreeMonitors
from trainers.drift.trigger import TriggerPolicy
from trainers.exceptions import ModelSpecError
from trainers.online.learner import Challenger, LabelJoiner, OnlineLearner
from trainers.online.records import (
    InputRecord,
    Output,
    Rejected,
    has_input,
    model_input,
    model_key,
    prediction_record,
)
from trainers.online.serving import ServingPolicy
from trainers.online.state import OnlineState, load_state, save_state, state_key

log = logging.getLogger(__name__)

__all__ = ["OnlineProcessor"]


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


class OnlineProcessor:
    """The learner's state machine: model, late-label joiner, monitors, offsets, checkpoints.

    Records in (:class:`~trainers.online.records.InputRecord`), typed outputs out
    (:class:`~trainers.online.records.Output`); the state it resumes from and writes is a
    :class:`~trainers.online.state.OnlineState`.

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
    signing_key, migrate_unsigned
        The key that signs the state file (None: the key file beside it, see
        :func:`trainers.online.state.state_key`), and whether an unsigned state of format 1
        may be read once to migrate it.
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
        signing_key: bytes | None = None,
        migrate_unsigned: bool = False,
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
        self.state_key = signing_key
        if checkpoint_path is not None:
            if self.state_key is None:
                self.state_key = state_key(checkpoint_path.parent)
            state = load_state(checkpoint_path, self.state_key, migrate_unsigned)
            if state is not None:
                self._resume(state, label_ttl_seconds, label_store_bytes)

    def _resume(self, state: OnlineState, label_ttl_seconds: float, label_store_bytes: int
                ) -> None:  # fmt: skip
        """Take up where the saved state stopped; the settings' knobs win over saved ones."""
        self.learner = OnlineLearner.restore(state.learner)
        self.learners = {k: OnlineLearner.restore(v) for k, v in state.learners.items()}
        self.challenger = state.challenger
        if state.recent is not None:
            self.recent = state.recent
        self.joiner = state.joiner
        self.joiner.max_bytes = label_store_bytes
        self.joiner.ttl_seconds = label_ttl_seconds
        self.rejected_total = state.rejected_total
        self._offsets = dict(state.offsets)
        self.ordering_state = state.ordering
        self.orphan_labels = state.orphan_labels
        self.monitor = state.monitor or self.monitor
        if self.data_monitor is not None:
            self.data_monitor = state.data_monitor or self.data_monitor
        if self.label_free is not None:
            self.label_free = state.label_free or self.label_free
        if self.key_monitors is not None:
            self.key_monitors = state.key_monitors or self.key_monitors
        if state.policy is not None:  # settings may have changed since: the new knobs
            self.policy = _with_knobs(state.policy, self.policy)
        log.info("resumed %s from checkpoint at offsets %s", self.learner.version,
                 self._offsets)  # fmt: skip

    def offsets(self) -> dict[int, int]:
        return dict(self._offsets)

    def start(self) -> None:
        """Load the batch version serving now (if the policy uses one) and wait for it."""
        self.serving.request_reload()
        self.serving.apply_pending(wait=120.0)

    def process(self, records: Sequence[InputRecord]) -> list[Output]:
        """Predict and learn from valid ``events`` records (in order); return the outputs.

        One record never costs more than itself: a record the model cannot take (a label of
        the wrong type, a feature the model refuses) is set aside with its reason
        (:meth:`take_rejected`, dead-lettered by the loop) and the next one goes on.
        """
        outputs: list[Output] = []
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
            outputs.append(Output("training-jobs", job.job_id, job.to_record(self.learner.name)))
        return outputs

    def take_rejected(self) -> list[Rejected]:
        """The records set aside since the last call (the loop dead-letters them)."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def _fresh(self, records: Sequence[InputRecord]) -> list[InputRecord]:
        """The records the checkpoint has not seen (a replay after a restart skips the rest)."""
        fresh = [r for r in records if r.offset >= self._offsets.get(r.partition, 0)]
        self.duplicates_skipped += len(records) - len(fresh)
        return fresh

    def _batch_answers(self, fresh: list[InputRecord]) -> list[Any]:
        """The batch model's answer per record (None: no input, not used, or refused): it does
        not learn, so the whole micro-batch is predicted at once."""
        answers: list[Any] = [None] * len(fresh)
        with_input = [i for i, r in enumerate(fresh) if has_input(r.value)]
        predicted = self.serving.batch_predictions(
            [model_input(fresh[i].value) for i in with_input]
        )
        for i, answer in zip(with_input, predicted or (), strict=False):
            answers[i] = answer
        return answers

    def _reject(self, rec: InputRecord, reason: str) -> None:
        log.warning("events: record at offset %d of partition %d set aside: %s",
                    rec.offset, rec.partition, reason)  # fmt: skip
        self._rejected.append(Rejected(rec.partition, rec.offset, reason))
        self.rejected_total += 1

    def _process_one(self, rec: InputRecord, batch_answer: Any) -> list[Output]:
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
        if has_input(event):
            return self._predict(rec, event, label, key, batch_answer)
        return self._join_label(rec, event["id"], label)

    def _predict(
        self,
        rec: InputRecord,
        event: dict[str, Any],
        label: Any,
        key: str | None,
        batch_answer: Any,
    ) -> list[Output]:
        """Answer an event; learn its label when it has one (prequential)."""
        started = time.perf_counter()
        outputs: list[Output] = []
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
            outputs.append(Output("predictions", event["id"], prediction_record(
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

    def _join_label(self, rec: InputRecord, event_id: str, label: Any
                    ) -> list[Output]:  # fmt: skip
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
            raw = model_input(event)
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
        self, prediction: Any, label: Any, rec: InputRecord, key: str | None = None
    ) -> list[Output]:
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

    def on_signal(self, signal: DriftSignal, rec: InputRecord, data: bool = False) -> list[Output]:
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
        out = [Output("drift-alerts", alert_id, alert)]
        if job is not None:
            out.append(Output("training-jobs", job.job_id, job.to_record(self.learner.name)))
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
        if self.state_key is None:  # a path given after construction: its folder's key file
            self.state_key = state_key(self.checkpoint_path.parent)
        save_state(self.checkpoint_path, self.state(), self.state_key)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return True

    def state(self) -> OnlineState:
        """Everything needed to resume (what :meth:`maybe_checkpoint` writes)."""
        return OnlineState(
            learner=self.learner.snapshot(),
            learners={k: v.snapshot() for k, v in self.learners.items()},
            per_key=self.per_key,
            challenger=self.challenger,
            recent=self.recent,
            joiner=self.joiner,
            offsets=dict(self._offsets),
            ordering=self.ordering_state,
            orphan_labels=self.orphan_labels,
            rejected_total=self.rejected_total,
            monitor=self.monitor,
            data_monitor=self.data_monitor,
            label_free=self.label_free,
            key_monitors=self.key_monitors,
            serving_choice=self.serving.choose(),
            batch_version=self.serving.version,
            policy=self.policy,
            saved=time.time(),
        )
