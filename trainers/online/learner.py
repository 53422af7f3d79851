"""Online learning with river: model specs, features, prequential learning, late labels.

Everything here is plain Python over river's protocol (``predict_one``, ``predict_proba_one``,
``learn_one``) and can be tested without a broker:

>>> learner = OnlineLearner("logreg")
>>> for i in range(200):
...     x = {"x": float(i % 10)}
...     _ = learner.predict_then_learn(x, i % 10 >= 5)
>>> learner.predict({"x": 9.0}).prediction, learner.n_learned
(True, 200)
>>> 0.8 < learner.metrics()["accuracy"] <= 1.0
True
"""

from __future__ import annotations

import copy
import importlib
import math
import pickle
import re
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainers.exceptions import ModelSpecError

__all__ = [
    "MODEL_SPECS",
    "Challenger",
    "LabelJoiner",
    "OnlineLearner",
    "Prediction",
    "build_model",
    "label_error",
    "to_features",
]


def _scaled_and_one_hot() -> Any:
    """Numbers standardised, strings one-hot encoded: linear models take mixed features."""
    import numbers

    from river import compose, preprocessing

    num = compose.SelectType(numbers.Number) | preprocessing.StandardScaler()
    cat = compose.SelectType(str) | preprocessing.OneHotEncoder()
    return num + cat


def _logreg() -> Any:
    from river import linear_model

    return _scaled_and_one_hot() | linear_model.LogisticRegression()


def _linreg() -> Any:
    from river import linear_model

    return _scaled_and_one_hot() | linear_model.LinearRegression()


def _hoeffding() -> Any:
    from river import tree

    return tree.HoeffdingTreeClassifier()


def _hoeffding_adaptive() -> Any:
    from river import tree

    return tree.HoeffdingAdaptiveTreeClassifier(seed=42)


def _nb() -> Any:
    from river import naive_bayes

    return naive_bayes.GaussianNB()


def _arf() -> Any:
    from river import forest

    return forest.ARFClassifier(seed=42)


#: Short specs → (factory, task).
MODEL_SPECS: dict[str, tuple[Callable[[], Any], str]] = {
    "logreg": (_logreg, "classification"),
    "scaler|logreg": (_logreg, "classification"),
    "hoeffding": (_hoeffding, "classification"),
    "hat": (_hoeffding_adaptive, "classification"),
    "nb": (_nb, "classification"),
    "arf": (_arf, "classification"),
    "linreg": (_linreg, "regression"),
    "scaler|linreg": (_linreg, "regression"),
}


def build_model(spec: str) -> Any:
    """A fresh river model from a short spec (``logreg``, ``hoeffding``, ...) or an import
    path ``package.module:factory`` of a function returning one.

    >>> [type(step).__name__ for step in build_model("logreg").steps.values()]
    ['TransformerUnion', 'LogisticRegression']
    >>> build_model("svm")
    Traceback (most recent call last):
    ...
    trainers.exceptions.ModelSpecError: unknown model spec 'svm'; use one of arf, hat, ...
    """
    if spec in MODEL_SPECS:
        return MODEL_SPECS[spec][0]()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelSpecError(f"cannot import model factory {spec!r}: {exc}") from exc
        return factory()
    raise ModelSpecError(
        f"unknown model spec {spec!r}; use one of {', '.join(sorted(MODEL_SPECS))}, "
        "or 'package.module:factory'"
    )


_WORD = re.compile(r"[a-z0-9]+")

#: Hash buckets for text words by default: every distinct word of an unbounded vocabulary
#: would otherwise become a permanent weight (and scaler state) in the online model.
TEXT_BUCKETS = 65_536


def to_features(event: Mapping[str, Any], buckets: int = TEXT_BUCKETS) -> dict[str, float | str]:
    """Model input from an ``events`` value: its features, plus hashed bag-of-words of its text.

    Numbers stay numbers; strings stay strings (river's one-hot encoders and trees take them);
    each lower-cased word of the text adds 1 to the feature ``"w#<bucket>"``, its CRC-32 modulo
    ``buckets`` (stable across processes, unlike ``hash``), so a text-only stream is learnable
    and the model has at most ``buckets`` text weights whatever the vocabulary.

    >>> to_features({"id": "e", "features": {"x": 1, "city": "Oslo"}, "text": "Fast, fast!"})
    {'x': 1.0, 'city': 'Oslo', 'w#18884': 2.0}
    >>> len(to_features({"id": "e", "text": " ".join(f"w{i}" for i in range(5000))}, 64))
    64
    """
    x: dict[str, float | str] = {}
    for name, value in (event.get("features") or {}).items():
        x[name] = value if isinstance(value, str) else float(value)
    text = event.get("text")
    if text:
        counts: dict[int, float] = {}
        for word in _WORD.findall(text.lower()):
            bucket = zlib.crc32(word.encode()) % buckets
            counts[bucket] = counts.get(bucket, 0.0) + 1.0
        for bucket, n in counts.items():
            x[f"w#{bucket}"] = n
    return x


def label_error(task: str, label: Any, seen: type | None) -> str | None:
    """Why ``label`` cannot be learned by a model of ``task`` that has learned labels of type
    ``seen`` (None: no label yet), or None when it can.

    >>> label_error("regression", "cat", None)
    "label 'cat' is a str: a regression model learns numbers"
    >>> label_error("classification", "cat", bool)
    "label 'cat' is a str, but this model's labels are bool"
    >>> label_error("classification", True, bool) is None
    True
    """
    kind = type(label)
    if task == "regression":
        if kind is bool or kind not in (int, float):
            return f"label {label!r:.40} is a {kind.__name__}: a regression model learns numbers"
        if not math.isfinite(label):
            return f"label {label!r} is not a finite number"
        return None
    if seen is not None and kind is not seen and not {kind, seen} <= {int, float}:
        return f"label {label!r:.40} is a {kind.__name__}, but this model's labels are " \
               f"{seen.__name__}"  # fmt: skip
    return None


@dataclass(frozen=True)
class Prediction:
    """A prediction and, for classifiers, the class probabilities."""

    prediction: Any
    proba: dict[str, float] | None = None


class _Rolling:
    """Windowed and cumulative prequential metrics (accuracy or MAE/RMSE)."""

    def __init__(self, task: str, window: int) -> None:
        self.task = task
        self.window: deque[tuple[float, float]] = deque(maxlen=window)
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0

    def update(self, y_true: Any, y_pred: Any) -> None:
        if self.task == "classification":
            hit = 1.0 if y_pred == y_true else 0.0
            self.window.append((hit, 0.0))
            self.total += hit
        else:
            err = abs(float(y_true) - float(y_pred if y_pred is not None else 0.0))
            self.window.append((err, err * err))
            self.total += err
            self.total_sq += err * err
        self.n += 1

    def as_dict(self) -> dict[str, float]:
        if not self.n:
            return {}
        w = len(self.window)
        if self.task == "classification":
            return {
                "accuracy": sum(h for h, _ in self.window) / w,
                "accuracy_total": self.total / self.n,
                "n": float(self.n),
            }
        return {
            "mae": sum(e for e, _ in self.window) / w,
            "rmse": math.sqrt(sum(s for _, s in self.window) / w),
            "mae_total": self.total / self.n,
            "n": float(self.n),
        }


class OnlineLearner:
    """A river model learning one record at a time, predict first (prequential).

    Parameters
    ----------
    spec
        A model spec for :func:`build_model`.
    task
        ``classification`` or ``regression``; taken from the spec when it is a short one.
    name
        The model's name in predictions and the registry.
    metric_window
        Records in the rolling metric window.
    text_buckets
        Hash buckets for text words (:func:`to_features`).
    """

    def __init__(
        self,
        spec: str = "logreg",
        task: str | None = None,
        name: str = "default",
        metric_window: int = 1000,
        text_buckets: int = TEXT_BUCKETS,
    ) -> None:
        self.spec = spec
        self.task = task or MODEL_SPECS.get(spec, (None, "classification"))[1]
        self.name = name
        self.metric_window = metric_window
        self.text_buckets = text_buckets
        self.model = build_model(spec)
        self.rolling = _Rolling(self.task, metric_window)
        self.n_learned = 0
        self.label_type: type | None = None  # the type of the labels learned so far

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Snapshots written before these attributes existed.
        state.setdefault("text_buckets", TEXT_BUCKETS)
        state.setdefault("label_type", None)
        self.__dict__.update(state)

    def features(self, event: Mapping[str, Any]) -> dict[str, float | str]:
        """This model's input for an ``events`` value (:func:`to_features`)."""
        return to_features(event, self.text_buckets)

    def check_label(self, label: Any) -> str | None:
        """Why this model cannot learn ``label`` (:func:`label_error`), or None."""
        return label_error(self.task, label, self.label_type)

    @property
    def version(self) -> str:
        """``online-<records learned>``: changes with every label."""
        return f"online-{self.n_learned}"

    def predict(self, x: Mapping[str, Any]) -> Prediction:
        """The model's answer; no answer (None) rather than a non-finite number."""
        if self.task == "classification":
            proba = self.model.predict_proba_one(dict(x)) if self.n_learned else {}
            if not proba:
                return Prediction(None, None)
            scores = {str(k): float(v) for k, v in proba.items()}
            if not all(math.isfinite(v) for v in scores.values()):
                return Prediction(None, None)
            label = max(proba, key=lambda k: proba[k])
            return Prediction(label, scores)
        value = float(self.model.predict_one(dict(x)))
        return Prediction(value if math.isfinite(value) else None, None)

    def learn(self, x: Mapping[str, Any], y: Any) -> None:
        self.model.learn_one(dict(x), y)
        self.n_learned += 1
        if self.label_type is None:
            self.label_type = type(y)

    def predict_then_learn(self, x: Mapping[str, Any], y: Any) -> Prediction:
        """Prequential step: predict, score the prediction, then learn from the label."""
        pred = self.predict(x)
        self.rolling.update(y, pred.prediction)
        self.learn(x, y)
        return pred

    def metrics(self) -> dict[str, float]:
        return self.rolling.as_dict()

    def clone_fresh(self) -> OnlineLearner:
        return OnlineLearner(self.spec, self.task, self.name, self.metric_window, self.text_buckets)

    def snapshot(self) -> bytes:
        """The whole learner (model, metrics, counters) as bytes."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def restore(data: bytes) -> OnlineLearner:
        learner = pickle.loads(data)
        if not isinstance(learner, OnlineLearner):
            raise ModelSpecError("snapshot does not hold an OnlineLearner")
        return learner

    def copy(self) -> OnlineLearner:
        return copy.deepcopy(self)


class LabelJoiner:
    """Events waiting for a late label, kept until they expire, within a byte budget.

    Each entry is stored as bytes (the caller's compact encoding of the event), so the memory
    it takes, and the checkpoint it is written into, is known exactly: when the entries'
    bytes pass ``max_bytes`` the oldest are evicted first (``evicted_total``).

    ``now`` is any clock the caller keeps (the learner uses its process's monotonic clock).
    A pickled joiner holds its entries' *ages*, which the next ``put`` or ``expire`` turns
    back into times on that caller's clock: a worker that resumes from another's checkpoint
    expires nothing early or late, however far apart their clocks are.

    >>> j = LabelJoiner(ttl_seconds=10)
    >>> j.put("e1", b"x1", now=0.0)
    >>> j.pop("e1"), j.pop("e1")
    (b'x1', None)
    >>> j.put("e2", b"x2", now=0.0); j.expire(now=11.0), j.expired_total
    (1, 1)
    >>> small = LabelJoiner(max_bytes=900)  # 422 bytes an entry
    >>> for i in range(5):
    ...     small.put(f"e{i}", b"." * 100, now=0.0)
    >>> len(small), small.evicted_total, small.bytes <= 900
    (2, 3, True)
    >>> import pickle
    >>> j.put("e3", b"x3", now=1_000_000.0)  # saved on a clock far ahead ...
    >>> resumed = pickle.loads(pickle.dumps(j))
    >>> resumed.expire(now=5.0), len(resumed)  # ... resumed on another: still 0 s old
    (0, 1)
    """

    #: Bytes counted per entry beyond its payload and id: the ordered dict's slot and link,
    #: the id's string object, two tuples, a float and the payload's bytes header (CPython).
    OVERHEAD = 320

    def __init__(
        self,
        ttl_seconds: float = 3600.0,
        max_pending: int = 1_000_000,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self._pending: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.bytes = 0
        self.expired_total = 0
        self.evicted_total = 0
        self._now = 0.0  # the latest time seen on the caller's clock
        self._ages = False  # True after unpickling: entry times are ages until the next call

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if not self._ages:
            state["_pending"] = OrderedDict(
                (k, (self._now - t, v)) for k, (t, v) in self._pending.items()
            )
            state["_ages"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "bytes" not in state:  # pickled before the byte budget: count what it holds
            self.max_bytes = 64 * 2**20
            self.evicted_total = 0
            self.bytes = sum(self._size(k, v) for k, (_t, v) in self._pending.items())
        if "_ages" not in state:  # pickled with wall-clock times: those are kept as they are
            self._now, self._ages = 0.0, False

    def _tick(self, now: float) -> None:
        if self._ages:  # resumed: ages → times on this caller's clock
            self._pending = OrderedDict(
                (k, (now - age, v)) for k, (age, v) in self._pending.items()
            )
            self._ages = False
        self._now = max(self._now, now)

    def __len__(self) -> int:
        return len(self._pending)

    @classmethod
    def _size(cls, event_id: str, item: Any) -> int:
        payload = item[0] if isinstance(item, tuple) and item else item
        n = len(payload) if isinstance(payload, (bytes, str)) else 64 * len(payload or ())
        return cls.OVERHEAD + len(event_id) + n

    def put(self, event_id: str, features: Any, now: float) -> None:
        """Keep ``features`` (whatever the caller needs to learn later) for ``event_id``."""
        self._tick(now)
        old = self._pending.pop(event_id, None)
        if old is not None:
            self.bytes -= self._size(event_id, old[1])
        self._pending[event_id] = (now, features)
        self.bytes += self._size(event_id, features)
        while self._pending and (
            len(self._pending) > self.max_pending or self.bytes > self.max_bytes
        ):  # bounded memory: oldest go first
            self._drop_oldest()
            self.evicted_total += 1

    def _drop_oldest(self) -> None:
        event_id, (_t, item) = self._pending.popitem(last=False)
        self.bytes -= self._size(event_id, item)

    def pop(self, event_id: str) -> Any | None:
        item = self._pending.pop(event_id, None)
        if item is None:
            return None
        self.bytes -= self._size(event_id, item[1])
        return item[1]

    def expire(self, now: float) -> int:
        """Drop entries older than the TTL; return how many were dropped."""
        self._tick(now)
        dropped = 0
        while self._pending:
            first = next(iter(self._pending))
            if now - self._pending[first][0] <= self.ttl_seconds:
                break
            self._drop_oldest()
            dropped += 1
        self.expired_total += dropped
        return dropped


class Challenger:
    """A fresh online model started at a concept drift and raced against the current one.

    It first learns the most recent labelled records (``warmup``: mostly the new concept), then
    both models predict and learn every label; once the challenger has been better over the
    last ``min_samples`` labels it takes over. It gives up after ``max_samples`` labels.

    >>> old = OnlineLearner("logreg")
    >>> for i in range(600):
    ...     _ = old.predict_then_learn({"x": float(i % 2)}, i % 2 == 1)
    >>> flipped = [({"x": float(i % 2)}, i % 2 == 0) for i in range(100)]  # the concept flips
    >>> race = Challenger(old.clone_fresh(), flipped[:20], min_samples=30)
    >>> verdicts = [race.race(x, y, old.predict_then_learn(x, y).prediction)
    ...             for x, y in flipped[20:]]
    >>> verdicts.index("switch") < 40, race.learner.predict({"x": 1.0}).prediction
    (True, False)
    """

    def __init__(
        self,
        fresh: OnlineLearner,
        warmup: Sequence[tuple[Mapping[str, Any], Any]],
        min_samples: int = 100,
        max_samples: int = 2000,
    ) -> None:
        self.learner = fresh
        for x, y in warmup:
            fresh.learn(x, y)
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.scores: deque[tuple[float, float]] = deque(maxlen=min_samples)
        self.n = 0

    def _score(self, prediction: Any, label: Any) -> float:
        if self.learner.task == "classification":
            return 1.0 if prediction == label else 0.0
        return -abs(float(label) - float(prediction if prediction is not None else 0.0))

    def race(self, x: Mapping[str, Any], y: Any, champion_prediction: Any) -> str | None:
        """Score both on one label (the challenger learns it); ``switch``, ``drop`` or None."""
        mine = self.learner.predict_then_learn(x, y).prediction
        self.scores.append((self._score(champion_prediction, y), self._score(mine, y)))
        self.n += 1
        if len(self.scores) >= self.min_samples:
            champion = sum(c for c, _ in self.scores)
            challenger = sum(m for _, m in self.scores)
            if challenger > champion:
                return "switch"
        if self.n >= self.max_samples:
            return "drop"
        return None
