"""The reference receiver: the platform's batch API plus GCS-style resumable uploads, on aiohttp.

Tests, benchmarks, the daemon's zero-config mode and users' dry runs upload to it. Module map:
``app`` (application, start/stop), ``api`` (batch endpoints), ``upload`` (the upload URL), ``sessions``
and ``store`` (state on disk), ``report`` (the per-batch errors file), ``faults`` (``--faults``),
``stats`` (counters).
"""

from wodrop.receiver.app import RunningReceiver, build_app, start_receiver
from wodrop.receiver.context import STATS_KEY
from wodrop.receiver.faults import FaultPlan, FaultSpecError, parse_faults
from wodrop.receiver.stats import ReceiverStats

__all__ = [
    "STATS_KEY",
    "FaultPlan",
    "FaultSpecError",
    "ReceiverStats",
    "RunningReceiver",
    "build_app",
    "parse_faults",
    "start_receiver",
]
