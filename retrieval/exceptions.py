"""Errors raised by :mod:`retrieval`, all rooted in :class:`RetrievalError`."""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error raised by the retrieval package."""


class InvalidArgumentError(RetrievalError, ValueError):
    """An argument is out of range or malformed; the message says which and what is allowed."""


class ModelLoadError(RetrievalError):
    """An embedding or generator model could not be found or loaded."""


class VectorStoreError(RetrievalError):
    """The vector store rejected an operation (bad schema, bad filter, bad data)."""


class CollectionMismatchError(VectorStoreError):
    """An existing Milvus collection does not match the configured dimension or metric."""


class VectorStoreUnavailableError(VectorStoreError):
    """The vector store could not be reached; the caller should back off and retry."""
