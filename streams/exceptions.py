"""Errors raised by :mod:`streams`, all rooted in :class:`LiveLearnError`."""

from __future__ import annotations


class LiveLearnError(Exception):
    """Base class of every error raised by the streams package."""


class ContractError(LiveLearnError):
    """A record does not follow its topic contract; the message is the dead-letter reason."""


class BrokerError(LiveLearnError):
    """The embedded broker could not be fetched, formatted, started or reached."""


class TopicError(LiveLearnError):
    """Topics could not be created or do not have the expected configuration."""


class DeliveryError(LiveLearnError):
    """A record could not be delivered to Kafka."""


class ProducerStalledError(DeliveryError):
    """A producer delivered nothing for too long while the records waited: make a new one."""


class QueryTimeoutError(LiveLearnError):
    """No answer arrived in time for a question (is the query worker running?)."""
