"""Prometheus metrics (prefix ``wodrop_``). Labels stay low-cardinality: outcomes, states, causes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from wodrop.lifecycle import FollowupState

# ``*_created`` series double the output and no dashboard of ours reads them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

WORK_ORDERS = Counter(
    "wodrop_work_orders", "Work orders finished, by outcome (done, invalid, rejected)",
    ["outcome"], registry=REGISTRY,
)
BATCHES_SEALED = Counter(
    "wodrop_batches_sealed", "Batches sealed, by reason (size, count, age, idle, space, single, duplicate)",
    ["reason"], registry=REGISTRY,
)
BATCHES = Gauge("wodrop_batches", "Batches in the state DB by state", ["state"], registry=REGISTRY)
BYTES_UPLOADED = Counter(
    "wodrop_uploaded_bytes", "Archive bytes the server confirmed as saved", registry=REGISTRY
)
RETRIES = Counter(
    "wodrop_upload_retries", "Upload retries, by cause (timeout, connection, server_error, throttled,"
    " session_expired, auth)", ["cause"], registry=REGISTRY,
)
PENDING_FOLDERS = Gauge("wodrop_pending_folders", "Folders in the inbox not yet claimed", registry=REGISTRY)
OLDEST_PENDING_AGE = Gauge(
    "wodrop_oldest_pending_age_seconds", "Age of the oldest folder waiting in the inbox", registry=REGISTRY
)
LAST_UPLOAD = Gauge(
    "wodrop_last_successful_upload_timestamp_seconds", "Unix time of the last completed batch upload",
    registry=REGISTRY,
)
UPLOAD_DURATION = Histogram(
    "wodrop_upload_duration_seconds", "Time from first byte to completion of a batch upload",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200), registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "wodrop_batch_size_bytes", "Size of sealed batch archives",
    buckets=tuple(2**p for p in range(20, 36)), registry=REGISTRY,
)
PLATFORM_BATCHES = Gauge(
    "wodrop_platform_batches", "Uploaded batches by the platform's processing outcome (following, done,"
    " failed, timeout, lost)", ["outcome"], registry=REGISTRY,
)
for _outcome in FollowupState:  # every series exists from the first scrape (set by the follow-up stage)
    PLATFORM_BATCHES.labels(str(_outcome))
API_KEY_OK = Gauge("wodrop_api_key_accepted", "1 when the platform accepted the API key, 0 when refused",
                   registry=REGISTRY)
NOTIFICATIONS = Counter(
    "wodrop_notifications", "Webhook notifications, by event and outcome (sent, failed, dropped)",
    ["event", "outcome"], registry=REGISTRY,
)
