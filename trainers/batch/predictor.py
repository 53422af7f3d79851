"""The serving side of a batch version: a loaded model answering one input or many.

Serving (:mod:`trainers.online.serving`) needs only this, not the job machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainers.batch.loop import pick_device
from trainers.batch.models import (
    BatchModel,
    load_model,
)
from trainers.batch.registry import ModelRegistry, Version
from trainers.exceptions import RegistryError

__all__ = ["Predictor", "load_serving_predictor"]

log = logging.getLogger(__name__)


def _load_on(version: Version, device: torch.device) -> BatchModel:
    return load_model(version.artifact("model")).to(device)


class Predictor:
    """The serving version of a model, ready for one-at-a-time predictions.

    Immutable once loaded: a hot swap builds a new ``Predictor`` and replaces the
    reference, so in-flight predictions finish on the old one.
    """

    def __init__(self, model: BatchModel, version: str, model_name: str) -> None:
        self.model = model
        self.version = version
        self.model_name = model_name
        model.module.eval()

    def predict_one(self, x: Mapping[str, Any] | str) -> tuple[Any, dict[str, float] | None]:
        """``(prediction, {class: probability} | None)`` for a text or a feature dict."""
        labels, probas = self.model.predict([x])
        return labels[0], (probas[0] if probas is not None else None)

    def predict_many(
        self, xs: Sequence[Mapping[str, Any] | str]
    ) -> list[tuple[Any, dict[str, float] | None]]:
        """Batched :meth:`predict_one`."""
        labels, probas = self.model.predict(list(xs))
        return [(y, probas[i] if probas is not None else None) for i, y in enumerate(labels)]


def load_serving_predictor(
    registry: ModelRegistry, model_name: str, device: str = "auto"
) -> Predictor:
    """A :class:`Predictor` for the version ``SERVING`` points at."""
    version = registry.serving(model_name)
    if version is None:
        raise RegistryError(
            f"no version of {model_name!r} is serving yet: run a retrain job or promote one"
        )
    model = _load_on(version, pick_device(device))
    return Predictor(model, version.version, model_name)
