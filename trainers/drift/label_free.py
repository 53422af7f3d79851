"""Drift without labels: watch what the model predicts, and how sure it is, while labels lag.

Concept drift on the error stream (``drift_monitor``) must wait for labels; when they come
hours late, so does the alert. Two signals need none:

* :class:`PredictionDriftMonitor`: the share of each predicted class (classification) or the
  distribution of predicted values (regression, a KS test), in the recent window against the
  window before it. A model that starts predicting another mix sees other inputs.
* :class:`EstimatedAccuracyMonitor`: a CBPE-style estimate (confidence-based performance
  estimation): a calibrated classifier is right with probability its confidence, so the mean
  calibrated confidence of the predictions still waiting for their labels estimates their
  accuracy. The calibration map (confidence → observed accuracy, per bin, shrunk towards the
  confidence itself) is learned from the labels that did arrive.

Both watch the predictions of events whose label has not arrived (an event that carries its
label is the concept monitor's), compare adjacent windows (so an abrupt change shows within a
window, whatever the level the model settled at), wait for ``min_labels`` labels (a model
still warming up changes its predictions by learning), and raise one ``warning`` per episode.
What they cannot see: a change of the concept alone (the same inputs, other labels) leaves
predictions and confidence as they were; only the labels tell, and the concept monitor alerts
then.

>>> import random
>>> rng = random.Random(0)
>>> monitors = LabelFreeMonitors(window=300, min_labels=100)
>>> signals = []
>>> for i in range(3000):  # labels for the first 1000 only; at 2000 the model turns unsure
...     p, says_true = (0.9, 0.8) if i < 2000 else (0.55, 0.4)
...     pred = rng.random() < says_true
...     label = (pred if rng.random() < 0.9 else not pred) if i < 1000 else None
...     proba = {str(pred): p, str(not pred): 1 - p}
...     signals += [(s.signal, i) for s in monitors.on_prediction(f"e{i}", pred, proba, label)]
>>> [(s, 2000 < i < 2300) for s, i in signals]
[('estimated_accuracy', True), ('prediction:class_share', True)]
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from typing import Any

from trainers.drift.concept import DriftSignal
from trainers.drift.data import ks_test

__all__ = [
    "LABEL_FREE_SIGNALS",
    "EstimatedAccuracyMonitor",
    "LabelFreeMonitors",
    "PredictionDriftMonitor",
]

#: ``signal`` names of label-free alerts (the trigger policy gives them their own action).
LABEL_FREE_SIGNALS = frozenset(
    {"prediction:class_share", "prediction:distribution", "estimated_accuracy"}
)


class PredictionDriftMonitor:
    """Predicted class shares (or values) in the recent window vs the window before.

    Parameters
    ----------
    task
        ``classification`` (class shares: a two-proportion z-test per class) or
        ``regression`` (predicted values: a two-sample KS test).
    window
        Predictions in each of the two windows.
    min_shift
        The smallest change of a class share (or KS distance) that counts.
    z_threshold
        How many standard errors the share must move (classification).
    alpha
        KS p-value below which the values moved (regression).
    check_every
        Predictions between two tests.
    """

    def __init__(
        self,
        task: str = "classification",
        window: int = 1000,
        min_shift: float = 0.1,
        z_threshold: float = 5.0,
        alpha: float = 1e-4,
        check_every: int = 25,
    ) -> None:
        self.task = task
        self.window = window
        self.min_shift = min_shift
        self.z_threshold = z_threshold
        self.alpha = alpha
        self.check_every = check_every
        self._values: deque[Any] = deque(maxlen=2 * window)
        self._before: Counter[str] = Counter()  # class counts of the older window
        self._recent: Counter[str] = Counter()
        self.n = 0
        self.in_episode = False

    def update(self, prediction: Any) -> DriftSignal | None:
        """Add one prediction; a signal when a shift episode starts here."""
        self.n += 1
        if self.task == "classification":
            value = str(prediction)
            if len(self._values) == self._values.maxlen:
                self._before[self._values[0]] -= 1  # drops out of the older window
            if len(self._values) >= self.window:
                moving = self._values[-self.window]  # moves from recent to older
                self._recent[moving] -= 1
                self._before[moving] += 1
            self._recent[value] += 1
            self._values.append(value)
        else:
            if prediction is None:
                return None
            self._values.append(float(prediction))
        if len(self._values) < 2 * self.window or self.n % self.check_every:
            return None
        shift, threshold, value_now, before = self._test()
        if shift is None:
            if self.in_episode and threshold < self.min_shift / 2:
                self.in_episode = False  # back to normal: the next shift is a new episode
            return None
        if self.in_episode:
            return None
        self.in_episode = True
        return DriftSignal(
            "prediction-shift", shift, value_now, threshold, "warning", self.n, before
        )

    def _test(self) -> tuple[str | None, float, float, float]:
        """(signal or None, effect, recent value, older value) of the largest move."""
        w = self.window
        if self.task != "classification":
            values = list(self._values)
            d, p = ks_test(values[:w], values[w:])
            if d >= self.min_shift and p < self.alpha:
                return "prediction:distribution", d, d, 0.0
            return None, d, d, 0.0
        best: tuple[float, str, float, float] = (0.0, "", 0.0, 0.0)
        for cls in set(self._before) | set(self._recent):
            a, b = self._before[cls] / w, self._recent[cls] / w
            if abs(b - a) > best[0]:
                best = (abs(b - a), cls, b, a)
        move, cls, now, before = best
        pooled = (now + before) / 2
        stderr = math.sqrt(max(pooled * (1 - pooled), 1e-12) * 2 / w)
        if move >= self.min_shift and move / stderr >= self.z_threshold:
            return "prediction:class_share", move, now, before
        return None, move, now, before


class EstimatedAccuracyMonitor:
    """CBPE: the estimated accuracy of predictions whose labels have not arrived.

    Parameters
    ----------
    window
        Unlabelled predictions in each of the two windows compared.
    min_drop
        The smallest fall of the estimated accuracy that counts (0.03: three points).
    z_threshold
        How many standard errors it must fall.
    bins
        Confidence bins of the calibration map.
    prior
        Weight (in labels) of the raw confidence in each bin: with few labels the estimate
        is the model's own confidence.
    memory
        Labels the calibration map remembers (older ones fade out exponentially).
    """

    def __init__(
        self,
        window: int = 1000,
        min_drop: float = 0.03,
        z_threshold: float = 5.0,
        bins: int = 10,
        prior: float = 20.0,
        memory: int = 5000,
    ) -> None:
        self.window = window
        self.min_drop = min_drop
        self.z_threshold = z_threshold
        self.bins = bins
        self.prior = prior
        self.decay = 1.0 - 1.0 / memory
        self._seen = [0.0] * bins  # labelled predictions per confidence bin
        self._right = [0.0] * bins  # ... that were right
        self._estimates: deque[float] = deque(maxlen=2 * window)  # raw confidences
        self._before = [[0.0, 0.0, 0.0] for _ in range(bins)]  # per bin: n, sum c, sum c^2
        self._recent = [[0.0, 0.0, 0.0] for _ in range(bins)]
        self.n = 0
        self.in_episode = False

    def _bin(self, confidence: float) -> int:
        return min(self.bins - 1, max(0, int(confidence * self.bins)))

    def calibrated(self, confidence: float) -> float:
        """P(right) of a prediction made with ``confidence``, from the labels seen."""
        b = self._bin(confidence)
        return (self._right[b] + self.prior * confidence) / (self._seen[b] + self.prior)

    def learn(self, confidence: float, right: bool) -> None:
        """A label arrived for a prediction made with ``confidence``."""
        b = self._bin(confidence)
        if self.decay < 1.0:
            self._seen = [s * self.decay for s in self._seen]
            self._right = [r * self.decay for r in self._right]
        self._seen[b] += 1.0
        self._right[b] += 1.0 if right else 0.0

    def update(self, confidence: float) -> DriftSignal | None:
        """A prediction whose label is not known yet; a signal when an episode starts."""
        self.n += 1
        w = self.window
        if len(self._estimates) == 2 * w:
            self._move(self._before, self._estimates[0], -1)  # leaves the older window
        if len(self._estimates) >= w:
            moving = self._estimates[-w]  # from the recent window to the older one
            self._move(self._recent, moving, -1)
            self._move(self._before, moving, +1)
        self._move(self._recent, confidence, +1)
        self._estimates.append(confidence)
        if len(self._estimates) < 2 * w or self.n % 25:
            return None
        # Both windows through the calibration as it is now: a calibration that moved (as
        # labels came) moves both alike, not the recent one only.
        mb, vb = self._mean_var(self._before)
        mr, vr = self._mean_var(self._recent)
        stderr = math.sqrt(max(vb + vr, 1e-12) / w)
        drop = mb - mr
        if drop < self.min_drop or drop / stderr < self.z_threshold:
            if self.in_episode and drop < self.min_drop / 2:
                self.in_episode = False
            return None
        if self.in_episode:
            return None
        self.in_episode = True
        return DriftSignal(
            "cbpe", "estimated_accuracy", mr, mb - self.min_drop, "warning", self.n, mb
        )

    def _move(self, stats: list[list[float]], confidence: float, sign: int) -> None:
        """Add (``sign`` 1) or remove (-1) a confidence from a window's per-bin sums."""
        b = stats[self._bin(confidence)]
        b[0] += sign
        b[1] += sign * confidence
        b[2] += sign * confidence * confidence

    def _mean_var(self, stats: list[list[float]]) -> tuple[float, float]:
        """Mean and variance of the calibrated estimates of a window. Within a bin the
        calibration is linear in the confidence, ``a + k c``, so per-bin sums suffice."""
        n = total = squares = 0.0
        for b, (count, s1, s2) in enumerate(stats):
            if count <= 0:
                continue
            k = self.prior / (self._seen[b] + self.prior)
            a = self._right[b] / (self._seen[b] + self.prior)
            n += count
            total += a * count + k * s1
            squares += a * a * count + 2 * a * k * s1 + k * k * s2
        if n <= 0:
            return 0.0, 0.0
        mean = total / n
        return mean, max(0.0, squares / n - mean * mean)


class LabelFreeMonitors:
    """Both label-free monitors, fed from the learner's predictions and labels.

    Parameters
    ----------
    task
        ``classification`` or ``regression`` (regression has no confidence: only the
        prediction distribution is watched).
    window
        Predictions in each compared window (both monitors).
    min_labels
        Labels learned before any alert (the model's predictions move while it warms up).
    max_pending
        Predictions remembered while their labels are awaited (the oldest are forgotten).
    """

    def __init__(
        self,
        task: str = "classification",
        window: int = 1000,
        min_labels: int = 500,
        max_pending: int = 10_000,
    ) -> None:
        self.task = task
        self.min_labels = min_labels
        self.max_pending = max_pending
        self.predictions = PredictionDriftMonitor(task, window)
        self.accuracy = EstimatedAccuracyMonitor(window)
        self.labels = 0
        self._pending: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def on_prediction(
        self, event_id: str, prediction: Any, proba: Mapping[str, float] | None,
        label: Any = None,
    ) -> list[DriftSignal]:  # fmt: skip
        """A prediction (with its label when the event carried one); the signals it raised.

        Only predictions still waiting for their label are watched: an event that carries
        its label is watched by the concept monitor, which sees more (and a model that is
        learning changes its predictions without any change in its inputs)."""
        confident = self.task == "classification" and bool(proba)
        if label is not None:
            self.labels += 1
            if confident:
                assert proba is not None
                self.accuracy.learn(max(proba.values()), _same(label, prediction))
            return []
        signals = []
        shift = self.predictions.update(prediction)
        if shift is not None and self.labels >= self.min_labels:
            signals.append(shift)
        if not confident:
            return signals
        assert proba is not None
        confidence = max(proba.values())
        self._pending[event_id] = (confidence, prediction)
        if len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
        estimate = self.accuracy.update(confidence)
        if estimate is not None and self.labels >= self.min_labels:
            signals.append(estimate)
        return signals

    def on_label(self, event_id: str, label: Any) -> None:
        """A late label: teaches the calibration how right that prediction was."""
        self.labels += 1
        waiting = self._pending.pop(event_id, None)
        if waiting is not None:
            confidence, prediction = waiting
            self.accuracy.learn(confidence, _same(label, prediction))


def _same(label: Any, prediction: Any) -> bool:
    """Whether a prediction got its label right (``1`` and ``True`` alike: river's binary
    classifiers answer booleans whatever the labels' type)."""
    return bool(label == prediction or str(label) == str(prediction))
