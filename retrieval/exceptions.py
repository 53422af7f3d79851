"""Errors raised by :mod:`retrieval`, all rooted in :class:`RetrievalError`."""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error raised by the retrieval package."""


class ModelLoadError(RetrievalError):
    """An embedding or generator model could not be found or loaded."""


class CollectionMismatchError(RetrievalError):
    """An existing Milvus collection does not match the configured dimension or metric."""


class VectorStoreUnavailableError(RetrievalError):
    """The vector store could not be reached; the caller should back off and retry."""
