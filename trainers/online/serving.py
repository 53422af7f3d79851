"""The serving policy: which model answers each event, and hot swaps of the batch model.

Two models can answer an event: the **online** river model (always there, learning every
label) and the **batch** model, the version that ``SERVING`` points at in the registry
(trained by the jobs). The policy is

* ``online``: always the online model;
* ``batch``: the batch model once one is serving (the online model until then);
* ``best``: whichever has the better rolling metric, scored prequentially *on the same
  labelled records* since the batch version was swapped in (at least ``min_samples`` of them
  before the batch model may win).

Swaps are atomic with respect to predictions: a new version is loaded in the background and
put in place *between* two micro-batches, so every event is answered by exactly one model
version and says which (``model_version``, ``source``).

>>> class Fixed:  # a stand-in batch predictor that always says True
...     version = "v-1"
...     def predict_many(self, xs):
...         return [(True, {"True": 1.0}) for _ in xs]
>>> serving = ServingPolicy("best", "classification", load=lambda: Fixed(), min_samples=3)
>>> serving.request_reload(); serving.apply_pending(wait=5.0)
True
>>> batch = serving.batch_predictions([{"x": 1.0}] * 4)
>>> for b in batch:  # the online model was wrong, the batch model right
...     serving.score(True, False, b[0])
>>> serving.choose(), serving.version
('batch', 'v-1')
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, Protocol

from trainers.exceptions import ModelSpecError

log = logging.getLogger(__name__)

__all__ = ["BatchPredictor", "ServingPolicy"]

Policy = Literal["online", "batch", "best"]


class BatchPredictor(Protocol):
    """What serving needs from a loaded batch version (:class:`trainers.batch.jobs.Predictor`)."""

    version: str

    def predict_many(self, xs: Sequence[Any]) -> list[tuple[Any, dict[str, float] | None]]: ...


class ServingPolicy:
    """Holds the batch predictor, swaps it, scores both models and picks one.

    Parameters
    ----------
    policy
        ``online``, ``batch`` or ``best``.
    task
        ``classification`` (score = hit) or ``regression`` (score = minus absolute error).
    load
        Loads the version serving now; returns None when none is. Called in a background
        thread on :meth:`request_reload`. None: the policy never has a batch model.
    window
        Paired scores kept for ``best``.
    min_samples
        Scored records a new batch version needs before ``best`` may choose it.
    """

    def __init__(
        self,
        policy: Policy | str,
        task: str,
        load: Callable[[], BatchPredictor | None] | None = None,
        window: int = 500,
        min_samples: int = 50,
    ) -> None:
        if policy not in ("online", "batch", "best"):
            raise ModelSpecError(f"serving policy must be online, batch or best, not {policy!r}")
        self.policy = policy
        self.task = task
        self.load = load
        self.min_samples = min_samples
        self.predictor: BatchPredictor | None = None
        self.paired: deque[tuple[float, float]] = deque(maxlen=window)
        self.swaps = 0
        self.refused = 0  # inputs the batch model could not take (the online model answered)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[BatchPredictor | None] | None = None

    @property
    def version(self) -> str | None:
        """The batch version loaded now (None before the first)."""
        return self.predictor.version if self.predictor is not None else None

    @property
    def uses_batch(self) -> bool:
        """Whether batch predictions are needed (policy and a loaded version)."""
        return self.policy != "online" and self.predictor is not None

    def request_reload(self) -> None:
        """Load the serving version in the background (a newer request replaces an older)."""
        if self.load is None or self.policy == "online":
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="serving-load")
        self._pending = self._pool.submit(self.load)

    def apply_pending(self, wait: float | None = None) -> bool:
        """Swap in a finished load (waiting up to ``wait`` seconds); True if swapped."""
        pending = self._pending
        if pending is None:
            return False
        if not pending.done() and not wait:
            return False
        try:
            predictor = pending.result(timeout=wait)
        except TimeoutError:
            return False
        except Exception:  # keep serving what we have; the next promotion retries
            log.exception("loading the serving batch model failed; keeping %s", self.version)
            self._pending = None
            return False
        self._pending = None
        if predictor is None or predictor.version == self.version:
            return False
        log.info("serving batch model %s (was %s)", predictor.version, self.version)
        self.predictor = predictor
        self.paired.clear()  # a new version earns its place on fresh evidence
        self.swaps += 1
        return True

    def batch_predictions(
        self, inputs: Sequence[Any]
    ) -> list[tuple[Any, dict[str, float] | None] | None] | None:
        """The batch model's predictions for a micro-batch (None when it is not used).

        An input the batch model cannot take (text for a tabular model, say) gets None, and
        the online model answers that event: one such input never costs the others theirs.
        """
        if not self.uses_batch or not inputs:
            return None
        assert self.predictor is not None
        try:
            return list(self.predictor.predict_many(inputs))
        except Exception:  # find the inputs at fault, one by one
            pass
        out: list[tuple[Any, dict[str, float] | None] | None] = []
        for x in inputs:
            try:
                out.append(self.predictor.predict_many([x])[0])
            except Exception as exc:
                self.refused += 1
                log.debug("batch model %s cannot take an input: %s", self.version, exc)
                out.append(None)
        return out

    def _score(self, label: Any, prediction: Any) -> float:
        if self.task == "classification":
            return 1.0 if prediction == label else 0.0
        return -abs(float(label) - float(prediction if prediction is not None else 0.0))

    def score(self, label: Any, online_prediction: Any, batch_prediction: Any) -> None:
        """Score both models' predictions of one labelled record."""
        self.paired.append((self._score(label, online_prediction),
                            self._score(label, batch_prediction)))  # fmt: skip

    def rolling(self) -> tuple[float, float] | None:
        """Mean score of (online, batch) over the paired window; None when empty."""
        if not self.paired:
            return None
        n = len(self.paired)
        return sum(o for o, _ in self.paired) / n, sum(b for _, b in self.paired) / n

    def choose(self) -> Literal["online", "batch"]:
        """Which model answers the next event."""
        if not self.uses_batch:
            return "online"
        if self.policy == "batch":
            return "batch"
        means = self.rolling()
        if means is None or len(self.paired) < self.min_samples:
            return "online"
        return "batch" if means[1] > means[0] else "online"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
