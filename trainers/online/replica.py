"""The predict-only replica: answers ``events`` from the learner's latest state file.

Learning stays single-writer (the learner holding the lease); prediction scales out over as
many replicas as ``events`` has partitions, each building its predictions with the same
:func:`~trainers.online.records.prediction_record` as the learner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainers.online.learner import OnlineLearner
from trainers.online.records import (
    InputRecord,
    Output,
    has_input,
    model_input,
    model_key,
    prediction_record,
)
from trainers.online.serving import ServingPolicy
from trainers.online.state import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["SnapshotPredictor"]


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
    >>> from trainers.online.processor import OnlineProcessor
    >>> path = Path(tempfile.mkdtemp()) / "m.ckpt"
    >>> learner = OnlineProcessor(OnlineLearner("logreg"), path, every_records=1)
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
        signing_key: bytes | None = None,
    ) -> None:
        self.checkpoint_path = checkpoint_path
        self.signing_key = signing_key
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
        state = load_checkpoint(self.checkpoint_path, self.signing_key)
        if state is None:
            return False
        self.learner = OnlineLearner.restore(state.learner)
        self.learners = {k: OnlineLearner.restore(v) for k, v in state.learners.items()}
        self.per_key = state.per_key
        self.choice = state.serving_choice
        if state.batch_version and state.batch_version != self.serving.version:
            self.serving.request_reload()
        self._mtime = mtime
        self.reloads += 1
        return True

    def process(self, records: Sequence[InputRecord]) -> list[Output]:
        """Predictions for the events with an input (label-only records need none).

        An event the model cannot answer is skipped here: the learner, which reads every
        record, dead-letters it with the reason.
        """
        self.refresh(force=self.learner is None)
        self.serving.apply_pending()
        inputs = [r for r in records if has_input(r.value)]
        use_batch = self.choice == "batch" and self.serving.predictor is not None
        batch = self.serving.batch_predictions([model_input(r.value) for r in inputs]) \
            if use_batch else None  # fmt: skip
        now = time.time()
        outputs: list[Output] = []
        for i, rec in enumerate(inputs):
            started = time.perf_counter()
            event = rec.value
            try:
                answer, version, source, key = self._answer(event, batch[i] if batch else None)
            except Exception as exc:
                log.debug("replica: no prediction for %s: %s", event["id"], exc)
                continue
            outputs.append(
                Output(
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
