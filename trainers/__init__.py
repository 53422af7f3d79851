"""Models that stay current: online learners, drift detection, trigger policy, training jobs.

Plain Python with no Kafka imports, except the job runner edge in ``streams``.
"""

from __future__ import annotations
