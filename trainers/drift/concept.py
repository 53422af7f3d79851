"""Concept drift on the online model's error stream, alerting on degradation only.

A detector from ``river.drift`` (ADWIN by default; Page-Hinkley, KSWIN selectable) watches the
0/1 error of each prequential prediction (or the absolute error for regression). Two
detectors run side by side: a sensitive one gives the *warning* level, a strict one the
*drift* level. Plain ADWIN also fires when the error *falls* (a model warming up); here a
change only counts when the recent error mean is above the long-run one. After a drift, the
monitor stays quiet for ``quiet_records``: one alert per episode, not a storm.

>>> import random
>>> rng = random.Random(1)
>>> monitor = ConceptDriftMonitor()
>>> signals = [s for i in range(6000)
...            if (s := monitor.update(float(rng.random() < (0.1 if i < 3000 else 0.5))))]
>>> [(s.severity, 3000 < s.index < 3300) for s in signals]
[('warning', True), ('drift', True)]
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from trainers.exceptions import ModelSpecError

__all__ = ["DETECTORS", "ConceptDriftMonitor", "DriftSignal", "KeyedDriftMonitors"]


@dataclass(frozen=True)
class DriftSignal:
    """A detector fired: what, how strongly, against which threshold, at which record."""

    detector: str
    signal: str
    value: float
    threshold: float
    severity: Literal["warning", "drift"]
    index: int
    baseline: float
    key: str | None = None  # the per-key segment it is about (``LIVELEARN_MODELS__PER_KEY``)

    def to_alert(self, model: str, model_version: str, action: str, rec: Any) -> dict[str, Any]:
        """The ``drift-alerts`` record for this signal, raised at record ``rec``.

        The alert id is derived from where it fired (and what about), so a replay raises the
        same alert, and two signals never share an id.
        """
        about = f"{self.detector}:{self.signal}:{self.severity}"
        if self.key is not None:
            about += f":key={self.key}"
        alert_id = hashlib.sha1(
            f"{model}:{about}:{rec.partition}:{rec.offset}".encode()
        ).hexdigest()[:16]
        extra = {} if self.key is None else {"model_key": self.key}
        return {**extra,
            "alert_id": alert_id, "ts": time.time(), "model": model,
            "model_version": model_version, "detector": self.detector, "signal": self.signal,
            "value": self.value, "threshold": self.threshold, "severity": self.severity,
            "action": action, "baseline": self.baseline, "window": {
                "partition": rec.partition, "offset": rec.offset, "records": self.index,
                "event_id": rec.value.get("id")},
        }  # fmt: skip


#: Detectors from ``river.drift``; the last three take 0/1 errors (classification).
DETECTORS = ("adwin", "page-hinkley", "kswin", "ddm", "hddm-a", "hddm-w")


def _detector(name: str, sensitivity: float) -> Any:
    from river import drift

    if name == "adwin":
        return drift.ADWIN(delta=sensitivity)
    if name == "page-hinkley":
        return drift.PageHinkley(threshold=50.0 * sensitivity / 0.002)
    if name == "kswin":
        return drift.KSWIN(alpha=sensitivity, seed=42)
    # Binary detectors (0/1 errors: classification only). The sensitivity is read as the
    # false-alarm probability of one test, i.e. DDM's threshold in standard deviations.
    if name == "ddm":
        z = NormalDist().inv_cdf(1.0 - sensitivity)
        return drift.binary.DDM(warning_threshold=z, drift_threshold=z)
    if name == "hddm-a":
        return drift.binary.HDDMA(drift_confidence=sensitivity, warning_confidence=sensitivity)
    if name == "hddm-w":
        return drift.binary.HDDMW(drift_confidence=sensitivity, warning_confidence=sensitivity)
    raise ModelSpecError(f"unknown drift detector {name!r}; use {', '.join(DETECTORS)}")


class ConceptDriftMonitor:
    """Warning and drift levels on an error stream; degradation only; one alert per episode.

    Parameters
    ----------
    detector
        ``adwin`` (default), ``page-hinkley``, ``kswin``; for classification also ``ddm``,
        ``hddm-a``, ``hddm-w`` (river.drift.binary).
    warning_sensitivity, drift_sensitivity
        The detectors' parameter (ADWIN's delta, KSWIN's alpha) for each level.
    min_samples
        Records before any alert (the model is still warming up).
    min_increase
        How much the recent error mean must exceed the long-run mean for a drift (0.03: three
        points of accuracy for a classifier).
    warning_min_increase
        The same for a warning: larger, as the sensitive warning detector also fires on noise
        that the recent mean of one window can show as a rise of a few points.
    quiet_records
        Records after a drift during which nothing more is reported.
    window
        Records in the "recent" error mean.
    """

    def __init__(
        self,
        detector: str = "adwin",
        warning_sensitivity: float = 0.05,
        drift_sensitivity: float = 0.002,
        min_samples: int = 300,
        min_increase: float = 0.03,
        quiet_records: int = 2000,
        window: int = 200,
        warning_min_increase: float = 0.05,
    ) -> None:
        self.detector = detector
        self.warning_sensitivity = warning_sensitivity
        self.drift_sensitivity = drift_sensitivity
        self.min_samples = min_samples
        self.min_increase = min_increase
        self.warning_min_increase = warning_min_increase
        self.quiet_records = quiet_records
        self.window = window
        self._warn = _detector(detector, warning_sensitivity)
        self._drift = _detector(detector, drift_sensitivity)
        self._recent: deque[float] = deque(maxlen=window)
        self._reference_sum = 0.0
        self._reference_n = 0
        self.n = 0
        self._quiet_until = 0
        self._warned = False

    # Where the drift level last fired (held open for a window); a class default so
    # that monitors restored from older checkpoints have it.
    _drift_seen_at: int | None = None
    warning_min_increase = 0.05  # likewise (older checkpoints had one margin for both levels)

    def update(self, error: float) -> DriftSignal | None:
        """Feed one error; return a signal when a level is crossed by a degradation."""
        self.n += 1
        self._recent.append(error)
        self._warn.update(error)
        self._drift.update(error)
        baseline = self._reference_sum / self._reference_n if self._reference_n else error
        recent = sum(self._recent) / len(self._recent)
        degraded = recent - baseline >= self.min_increase
        # A detector fires after a few dozen bad records, often before they weigh enough in
        # the recent mean to show as a degradation; it then resets itself. A drift detection
        # is held open for a window: the alert comes when the rise shows, not one
        # episode later (or never). Warnings are not held (they would fire on noise).
        if self._drift.drift_detected:
            self._drift_seen_at = self.n
        seen = self._drift_seen_at
        drift = seen is not None and self.n - seen <= self.window
        warn = self._warn.drift_detected
        signal: DriftSignal | None = None
        if self.n >= self.min_samples and self.n >= self._quiet_until and degraded:
            if drift:
                signal = self._signal("drift", recent, baseline, self.drift_sensitivity)
                self._quiet_until = self.n + self.quiet_records
                self._warned = False
                self._reference_sum, self._reference_n = 0.0, 0  # the new normal starts here
                self._drift_seen_at = None
            elif warn and not self._warned and recent - baseline >= self.warning_min_increase:
                signal = self._signal("warning", recent, baseline, self.warning_sensitivity)
                self._warned = True
        if signal is None or signal.severity == "warning":
            # The reference is the long-run error before any change we reported.
            if not self._warned:
                self._reference_sum += error
                self._reference_n += 1
        return signal

    def fresh(self) -> ConceptDriftMonitor:
        """A new monitor with the same parameters (and nothing seen)."""
        return ConceptDriftMonitor(
            self.detector, self.warning_sensitivity, self.drift_sensitivity, self.min_samples,
            self.min_increase, self.quiet_records, self.window, self.warning_min_increase,
        )  # fmt: skip

    def _signal(self, severity: Literal["warning", "drift"], recent: float, baseline: float,
                threshold: float) -> DriftSignal:  # fmt: skip
        return DriftSignal(
            detector=self.detector, signal="concept", value=recent, threshold=threshold,
            severity=severity, index=self.n, baseline=baseline,
        )  # fmt: skip


class KeyedDriftMonitors:
    """The error stream watched per key as well (one :class:`ConceptDriftMonitor` each):
    a drift in one segment (a tenant, a region) shows there long before it moves the overall
    error, if it ever does.

    Parameters
    ----------
    template
        The overall monitor: each key's monitor has its parameters.
    max_keys
        Keys watched (the rest are watched overall only).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(2)
    >>> keyed = KeyedDriftMonitors(ConceptDriftMonitor(), max_keys=10)
    >>> signals = []
    >>> for i in range(12000):  # key "b" goes wrong after its 3000th record; "a" stays right
    ...     key = "ab"[i % 2]
    ...     bad = 0.5 if key == "b" and i >= 6000 else 0.1
    ...     s = keyed.update(key, float(rng.random() < bad))
    ...     signals += [(s.key, s.severity)] if s else []
    >>> signals
    [('b', 'drift')]
    """

    def __init__(self, template: ConceptDriftMonitor, max_keys: int = 1000) -> None:
        self.template = template
        self.max_keys = max_keys
        self.monitors: dict[str, ConceptDriftMonitor] = {}

    def update(self, key: str, error: float) -> DriftSignal | None:
        """Feed one error of ``key``'s stream; its signal (naming the key), if any."""
        monitor = self.monitors.get(key)
        if monitor is None:
            if len(self.monitors) >= self.max_keys:
                return None
            monitor = self.monitors[key] = self.template.fresh()
        signal = monitor.update(error)
        if signal is None:
            return None
        return DriftSignal(signal.detector, signal.signal, signal.value, signal.threshold,
                           signal.severity, signal.index, signal.baseline, key)  # fmt: skip
