"""Data drift: has the *input* distribution moved away from a reference window?

Concept drift (``drift_monitor``) watches the model's errors and needs labels. Data drift
watches the inputs and needs none, so it can warn before labels arrive:

* **numeric features**: the two-sample Kolmogorov-Smirnov test between the reference window
  and the recent window (a change must be both significant, ``p < alpha`` after a
  Bonferroni correction over the features, and large, ``D >= min_effect``);
* **categorical features** (strings): the population stability index (PSI) of the category
  frequencies, smoothed, against ``psi_threshold`` (0.25 is the usual "significant shift");
* **embeddings** (:class:`EmbeddingDriftMonitor`): how far recent vectors sit from the
  reference centroid, compared with how far reference vectors sat from it.

The reference is the first ``reference_size`` records, and moves after each promotion
(:meth:`FeatureDriftMonitor.reset_reference`: the new model's world is the new normal). One
alert per episode: after an alert the monitor stays quiet until the recent window agrees with
the reference again or the reference is reset.

>>> import random
>>> rng = random.Random(0)
>>> monitor = FeatureDriftMonitor(reference_size=500, window_size=500, check_every=100)
>>> signals = [s for i in range(4000)
...            if (s := monitor.update({"x": rng.gauss(0 if i < 2000 else 1, 1),
...                                     "city": rng.choice("ab")}))]
>>> [(s.detector, s.signal, 2000 < s.index <= 2300) for s in signals]
[('ks', 'feature:x', True)]
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trainers.drift.concept import DriftSignal

__all__ = ["EmbeddingDriftMonitor", "FeatureDriftMonitor", "ks_test", "psi"]


def ks_test(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov ``(statistic, p-value)``; the p-value is Kolmogorov's
    limiting distribution with Stephens' small-sample correction (what scipy's
    ``method="asymp"`` approximates, at a fraction of the cost: the monitor runs a test per
    feature every ``check_every`` records on the learner's path).

    >>> ks_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])[0]
    0.0
    >>> round(ks_test(list(range(100)), [x + 50.0 for x in range(100)])[0], 2)
    0.5
    >>> ks_test(list(range(100)), [x + 50.0 for x in range(100)])[1] < 1e-9
    True
    """
    from scipy.special import kolmogorov

    x = np.sort(np.asarray(a, dtype=float))
    y = np.sort(np.asarray(b, dtype=float))
    if not len(x) or not len(y):
        return 0.0, 1.0
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / len(x)
    cdf_y = np.searchsorted(y, grid, side="right") / len(y)
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    en = math.sqrt(len(x) * len(y) / (len(x) + len(y)))
    p = float(kolmogorov((en + 0.12 + 0.11 / en) * d))
    return d, min(1.0, max(0.0, p))


def psi(reference: Mapping[Any, int], recent: Mapping[Any, int], eps: float = 1e-4) -> float:
    """Population stability index of two category count tables (smoothed by ``eps``).

    >>> psi({"a": 50, "b": 50}, {"a": 50, "b": 50})
    0.0
    >>> round(psi({"a": 90, "b": 10}, {"a": 10, "b": 90}), 2)
    3.52
    """
    n_ref, n_rec = sum(reference.values()) or 1, sum(recent.values()) or 1
    total = 0.0
    for key in set(reference) | set(recent):
        p = max(reference.get(key, 0) / n_ref, eps)
        q = max(recent.get(key, 0) / n_rec, eps)
        total += (q - p) * math.log(q / p)
    return total


class FeatureDriftMonitor:
    """Windowed two-sample tests per input feature; one alert per episode.

    Parameters
    ----------
    reference_size, window_size
        Records in the reference window and in the recent (sliding) window.
    check_every
        Records between two checks (tests are cheap, but not free).
    alpha
        Family-wise significance level of the KS tests (Bonferroni over features).
    min_effect
        Smallest KS statistic that counts: a tiny shift found by a big sample is no drift.
    psi_threshold
        PSI above which a categorical feature has drifted.
    max_features
        Features watched (the first ones seen); bag-of-words inputs would otherwise be huge.
    """

    def __init__(
        self,
        reference_size: int = 1000,
        window_size: int = 1000,
        check_every: int = 250,
        alpha: float = 1e-4,
        min_effect: float = 0.15,
        psi_threshold: float = 0.25,
        max_features: int = 50,
    ) -> None:
        self.reference_size = reference_size
        self.window_size = window_size
        self.check_every = check_every
        self.alpha = alpha
        self.min_effect = min_effect
        self.psi_threshold = psi_threshold
        self.max_features = max_features
        self.features: list[str] = []
        self.reference: list[dict[str, Any]] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=window_size)
        self.n = 0
        self.in_episode = False
        self.alerts = 0
        self._columns: dict[str, tuple[int, list[Any], np.ndarray]] = {}

    def reset_reference(self) -> None:
        """Start a new reference from the next records (after a promotion)."""
        self.reference = []
        self._columns = {}
        self.recent.clear()
        self.in_episode = False

    def update(self, x: Mapping[str, Any]) -> DriftSignal | None:
        """Add one record's features; a signal when a drift episode starts here."""
        self.n += 1
        if not self.features:
            self.features = sorted(x)[: self.max_features]
        row = {k: x[k] for k in self.features if k in x}
        if len(self.reference) < self.reference_size:
            self.reference.append(row)
            return None
        self.recent.append(row)
        if len(self.recent) < self.window_size or self.n % self.check_every:
            return None
        worst = self.check()
        if worst is None:
            self.in_episode = False  # the recent window agrees with the reference again
            return None
        if self.in_episode:
            return None
        self.in_episode = True
        self.alerts += 1
        return worst

    def _values(self, rows: Any, name: str) -> list[Any]:
        return [r[name] for r in rows if name in r]

    def _reference_column(self, name: str) -> tuple[list[Any], np.ndarray]:
        """A feature's reference values and their numbers. The reference is fixed once full
        (until :meth:`reset_reference`), so they are computed once per reference; derived,
        they stay out of checkpoints (see ``__getstate__``) and a restored monitor, one from
        a checkpoint older than them included, computes them again."""
        columns = self.__dict__.setdefault("_columns", {})
        cached = columns.get(name)
        if cached is None or cached[0] != len(self.reference):
            values = self._values(self.reference, name)
            numbers = np.array([float(v) for v in values if not isinstance(v, str)], dtype=float)
            cached = columns[name] = (len(self.reference), values, numbers)
        return cached[1], cached[2]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_columns"}

    def check(self) -> DriftSignal | None:
        """Test every feature now; the most drifted one, or None when none has drifted."""
        worst: DriftSignal | None = None
        worst_score = 0.0
        alpha = self.alpha / max(len(self.features), 1)
        for name in self.features:
            (ref, nums_ref), rec = self._reference_column(name), self._values(self.recent, name)
            if len(ref) < 30 or len(rec) < 30:
                continue
            if all(isinstance(v, str) for v in ref[:10] + rec[:10]):
                value = psi(Counter(map(str, ref)), Counter(map(str, rec)))
                drifted, threshold = value >= self.psi_threshold, self.psi_threshold
                detector, score = "psi", value / self.psi_threshold
            else:
                nums_rec = [float(v) for v in rec if not isinstance(v, str)]
                value, p = ks_test(nums_ref, nums_rec)
                drifted = p < alpha and value >= self.min_effect
                threshold, detector, score = self.min_effect, "ks", value / self.min_effect
            if drifted and score > worst_score:
                worst_score = score
                worst = DriftSignal(detector, f"feature:{name}", value, threshold, "warning",
                                    self.n, 0.0)  # fmt: skip
        return worst


class EmbeddingDriftMonitor:
    """Distance of recent embeddings from the reference centroid; one alert per episode.

    The reference gives a centroid and the mean and spread of its vectors' cosine distances
    to it. A recent window whose mean distance is ``z_threshold`` standard errors above the
    reference mean, and at least ``min_increase`` above it (a real effect, not just a
    significant one), has moved somewhere new (new topics, a new language, a broken upstream).
    An episode ends when the window is back within half of both margins (no flapping).

    Given the time (``update(v, now)``), the reference is the whole first load: a uniform
    sample of every vector until the stream first pauses for ``settle_s`` (or has brought
    ``20 * reference_size`` vectors), so a one-off bulk load of a corpus, topic after topic,
    is the reference, not a drift from its first topic. Without the time, the reference is
    the first ``reference_size`` vectors.

    >>> import random
    >>> rng = random.Random(0)
    >>> def vec(shift):
    ...     return [rng.gauss(shift, 1.0) for _ in range(4)] + [3.0, 0.0]
    >>> monitor = EmbeddingDriftMonitor(reference_size=200, window_size=100)
    >>> signals = [s for i in range(800) if (s := monitor.update(vec(0.0 if i < 400 else 2.0)))]
    >>> [(s.detector, 400 < s.index <= 500) for s in signals]
    [('embedding', True)]
    """

    def __init__(
        self,
        reference_size: int = 500,
        window_size: int = 200,
        z_threshold: float = 6.0,
        min_increase: float = 0.05,
        settle_s: float = 5.0,
        seed: int = 0,
    ) -> None:
        self.reference_size = reference_size
        self.settle_s = settle_s
        self._rng = random.Random(seed)
        self._offered = 0  # vectors offered to the reference sample
        self._last_seen: float | None = None
        self.window_size = window_size
        self.z_threshold = z_threshold
        self.min_increase = min_increase
        self._ref: list[list[float]] = []
        self.centroid: list[float] | None = None
        self.ref_mean = 0.0
        self.ref_std = 0.0
        self.recent: deque[float] = deque(maxlen=window_size)
        self.n = 0
        self.in_episode = False

    @staticmethod
    def _distance(v: Sequence[float], c: Sequence[float]) -> float:
        dot = sum(a * b for a, b in zip(v, c, strict=True))
        nv = math.sqrt(sum(a * a for a in v)) or 1.0
        nc = math.sqrt(sum(b * b for b in c)) or 1.0
        return 1.0 - dot / (nv * nc)

    def reset_reference(self) -> None:
        self._ref, self.centroid = [], None
        self._offered = 0
        self.recent.clear()
        self.in_episode = False

    # Class defaults for monitors restored from checkpoints older than these attributes.
    settle_s = 5.0
    _offered = 0
    _last_seen: float | None = None

    def _settled(self, now: float | None) -> bool:
        """Whether the reference is complete (before this vector is offered to it)."""
        if now is None:
            return len(self._ref) >= self.reference_size
        paused = self._last_seen is not None and now - self._last_seen >= self.settle_s
        self._last_seen = now
        full = len(self._ref) >= self.reference_size
        return full and (paused or self._offered >= 20 * self.reference_size)

    def _freeze(self) -> None:
        dim = len(self._ref[0])
        self.centroid = [sum(v[i] for v in self._ref) / len(self._ref) for i in range(dim)]
        d = [self._distance(v, self.centroid) for v in self._ref]
        self.ref_mean = sum(d) / len(d)
        self.ref_std = math.sqrt(sum((x - self.ref_mean) ** 2 for x in d) / len(d))
        self._ref = []

    def update(self, vector: Sequence[float], now: float | None = None) -> DriftSignal | None:
        """Add one embedding (``now``: a clock in seconds, see above); a signal when a drift
        episode starts here."""
        self.n += 1
        if self.centroid is None:
            if not self._settled(now):
                self._offered += 1  # a reservoir sample: uniform over what was offered
                if len(self._ref) < self.reference_size:
                    self._ref.append(list(vector))
                else:
                    slot = self._rng.randrange(self._offered)
                    if slot < self.reference_size:
                        self._ref[slot] = list(vector)
                if now is not None or len(self._ref) < self.reference_size:
                    return None
            self._freeze()
            if now is None:
                return None
        elif now is not None:
            self._last_seen = now
        assert self.centroid is not None
        self.recent.append(self._distance(vector, self.centroid))
        if len(self.recent) < self.window_size:
            return None
        mean = sum(self.recent) / len(self.recent)
        stderr = (self.ref_std or 1e-9) / math.sqrt(len(self.recent))
        z = (mean - self.ref_mean) / stderr
        if z < self.z_threshold or mean - self.ref_mean < self.min_increase:
            if z < self.z_threshold / 2 or mean - self.ref_mean < self.min_increase / 2:
                self.in_episode = False  # back to normal: the next shift is a new episode
            return None
        if self.in_episode:
            return None
        self.in_episode = True
        return DriftSignal("embedding", "embedding:centroid_distance", mean,
                           self.ref_mean + self.z_threshold * stderr, "warning", self.n,
                           self.ref_mean)  # fmt: skip
