"""The Kafka edge of livelearn: settings, topic contracts, the embedded broker, SDK, CLI, agents.

Users start from :class:`streams.sdk.LiveLearnClient` (Python) or the ``livelearn`` command.
"""

from __future__ import annotations

__version__ = "0.1.0"
