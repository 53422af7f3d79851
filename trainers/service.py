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

from trainers.exceptions import CheckpointError
from trainers.learner import LabelJoiner, OnlineLearner, to_features

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
    ) -> None:
        self.learner = learner
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
                log.info("resumed %s from checkpoint at offsets %s", self.learner.version,
                         self._offsets)  # fmt: skip

    def offsets(self) -> dict[int, int]:
        return dict(self._offsets)

    def process(self, records: Sequence[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Predict and learn from valid ``events`` records (in order); return predictions."""
        outputs: list[tuple[str, str, dict[str, Any]]] = []
        now = time.time()
        for rec in records:
            if rec.offset < self._offsets.get(rec.partition, 0):
                self.duplicates_skipped += 1  # already in the checkpointed model
                continue
            started = time.perf_counter()
            event = rec.value
            label = event.get("label")
            has_input = "features" in event or "text" in event
            if has_input:
                x = to_features(event)
                if label is None:
                    pred = self.learner.predict(x)
                    self.joiner.put(event["id"], x, now)
                else:
                    pred = self.learner.predict_then_learn(x, label)
                outputs.append(
                    ("predictions", event["id"], self._prediction(event, pred, started, now))
                )
            else:
                x_waiting = self.joiner.pop(event["id"])
                if x_waiting is None:
                    self.orphan_labels += 1
                else:
                    self.learner.rolling.update(label, self.learner.predict(x_waiting).prediction)
                    self.learner.learn(x_waiting, label)
            self._offsets[rec.partition] = rec.offset + 1
            self._since_checkpoint += 1
        self.joiner.expire(now)
        return outputs

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
                "saved": time.time(),
            },
        )
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        return True
