"""Errors raised by :mod:`trainers`, all rooted in :class:`TrainerError`."""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of every error raised by the trainers package."""


class ModelSpecError(TrainerError):
    """A model specification (river spec string, factory path, HF id) is invalid."""


class CheckpointError(TrainerError):
    """A checkpoint could not be written or read back."""


class RegistryError(TrainerError):
    """The model registry was asked for something it does not hold or cannot do."""


class TrainingJobError(TrainerError):
    """A training job failed; the message says which step and why."""


class JobConfigError(TrainingJobError):
    """A training job configuration has an unknown key or an invalid value."""
