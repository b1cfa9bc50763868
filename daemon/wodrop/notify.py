"""Notifications to people: events the pipeline emits, POSTed as signed JSON to a webhook (``notify.*``).

:meth:`Notifier.emit` never blocks and never fails (an unknown event name is a bug: ``Event`` lets mypy
catch it, and it raises ValueError): it puts the event on a bounded queue that the
``notify`` task drains (an event that finds the queue full is dropped and counted), so a slow, failing
or hanging webhook never holds the pipeline back. The pipeline calls it where something needs a person:
``work_order_failed``, ``batch_rejected``, ``batch_processed``, ``api_key_refused`` (set on
:class:`~wodrop.runtime.Runtime`), ``intake_paused``/``intake_resumed`` (likewise), ``upload_stalled``
(the ``notify-stalls`` task).

Delivery is best effort: a bounded number of tries with backoff on connection errors, timeouts, 408,
429 and 5xx, none on other answers; then the event is dropped, logged and counted
(``wodrop_notifications_total{outcome="failed"}``). A try after a timeout may deliver an event twice
(same ``id``); events still queued when the daemon stops are not sent. Each body is signed,
``X-Wodrop-Signature: sha256=<hex HMAC of the exact body>``, and its strings pass through
:func:`wodrop.redact.redact` (the API key and upload URLs never leave).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import aiohttp

from wodrop import __version__, metrics
from wodrop.config import MIN_WEBHOOK_SECRET, ConfigError, NotifyConfig
from wodrop.logs import get_logger
from wodrop.redact import redact, redact_url, redact_value, register_secret
from wodrop.upload.protocol import RetryPolicy, RetryState, UploadGaveUp, classify_status, detail_text
from wodrop.upload.transport import classify_exception

if TYPE_CHECKING:
    from wodrop.runtime import Runtime, UploadProgress

log = get_logger("wodrop.notify")

Event = Literal["work_order_failed", "batch_rejected", "batch_processed", "api_key_refused", "intake_paused",
                "intake_resumed", "upload_stalled"]
#: every event a webhook can select with ``notify.events``
EVENTS: tuple[Event, ...] = get_args(Event)
OUTCOMES = ("sent", "failed", "dropped")
SIGNATURE_HEADER = "X-Wodrop-Signature"
EVENT_HEADER = "X-Wodrop-Event"
QUEUE_SIZE = 1000
#: a report's errors beyond this many are left out of the body (``errors_total`` says how many there were)
MAX_REPORT_ERRORS = 100
RETRY_INITIAL_DELAY = 1.0
#: the longest wait between two tries, ``Retry-After`` included: one slow webhook holds every event back
RETRY_MAX_DELAY = 30.0
#: bytes of a webhook's answer read for the log
_ANSWER_MAX = 4096

# Every (event, outcome) series exists from the start, so that increase() alerts see the first failure.
for _event in EVENTS:
    for _outcome in OUTCOMES:
        metrics.NOTIFICATIONS.labels(_event, _outcome)


@dataclass(frozen=True)
class Notification:
    event: Event
    #: Unix time of the emit (the envelope's ``time``)
    at: float
    payload: dict[str, Any]
    #: the same on every try: a receiver can drop a repeat
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: bytes | None
    timeout: float
    retry: RetryPolicy


class Notifier:
    """The events selected for a webhook and the queue to it; disabled (emits nothing) without one."""

    def __init__(self, events: Iterable[str] = (), webhook: Webhook | None = None,
                 maxsize: int = QUEUE_SIZE) -> None:
        self.events = frozenset(events) if webhook is not None else frozenset()
        self.webhook = webhook
        self.queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize)
        self._dropping = False

    def emit(self, event: Event, **payload: Any) -> None:
        """Queue ``event`` with its JSON-able ``payload`` if it is selected; never blocks."""
        if event not in EVENTS:
            raise ValueError(f"unknown notification event {event!r}")
        if event not in self.events:
            return
        report = payload.get("report")
        if isinstance(report, dict) and len(report.get("errors") or ()) > MAX_REPORT_ERRORS:
            payload["report"] = {**report, "errors": report["errors"][:MAX_REPORT_ERRORS],
                                 "errors_total": len(report["errors"])}
        try:
            self.queue.put_nowait(Notification(event, time.time(), payload))
        except asyncio.QueueFull:
            metrics.NOTIFICATIONS.labels(event, "dropped").inc()
            if not self._dropping:  # once per burst, not once per event
                log.error("notifications_dropped", notification=event, queued=self.queue.qsize(),
                          note="the webhook does not keep up; events are dropped until it does")
            self._dropping = True
        else:
            self._dropping = False


def from_config(cfg: NotifyConfig) -> Notifier:
    """The daemon's notifier: disabled without ``notify.webhook_url``. Reads the secret file (only
    ``wodrop run`` needs it) and registers the URL and the secret with the redactor."""
    if not cfg.webhook_url:
        return Notifier()
    secret = cfg.webhook_secret.get_secret_value().strip() if cfg.webhook_secret else None
    if cfg.webhook_secret_file is not None:
        where = f"notify.webhook_secret_file {cfg.webhook_secret_file}"
        try:
            secret = cfg.webhook_secret_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        if len(secret) < MIN_WEBHOOK_SECRET:
            raise ConfigError(f"{where}: expected a secret of at least {MIN_WEBHOOK_SECRET} characters")
    register_secret(cfg.webhook_url)
    register_secret(secret)
    webhook = Webhook(cfg.webhook_url, secret.encode() if secret else None, cfg.timeout,
                      RetryPolicy(RETRY_INITIAL_DELAY, RETRY_MAX_DELAY, cfg.max_retries))
    return Notifier(EVENTS if cfg.events is None else cfg.events, webhook)


# ---- the body and its signature (no I/O) ----------------------------------------------------------


def iso_utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(n: Notification, *, instance: str, host: str) -> bytes:
    """The JSON body: a stable envelope around the redacted payload. ASCII only, so that a name that is
    not UTF-8 cannot break the encoding (its bytes come out as ``\\udcxx`` escapes); raises ValueError
    for a payload that is not JSON (TypeError for keys that are not text)."""
    doc = {"id": n.id, "event": n.event, "time": iso_utc(n.at), "instance": instance, "host": host,
           "version": __version__, "data": redact_value(n.payload)}
    return json.dumps(doc, allow_nan=False, default=lambda o: redact(str(o))).encode("ascii")


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Wodrop-Signature`` value: ``sha256=`` + the hex HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def headers(webhook: Webhook, n: Notification, body: bytes) -> dict[str, str]:
    out = {"Content-Type": "application/json", EVENT_HEADER: n.event, "X-Wodrop-Delivery": n.id}
    if webhook.secret is not None:
        out[SIGNATURE_HEADER] = signature(webhook.secret, body)
    return out


# ---- delivery (the ``notify`` task) ---------------------------------------------------------------


async def deliver(rt: Runtime, http: aiohttp.ClientSession) -> None:
    """Drain the notifier's queue into the webhook, one event at a time, in order."""
    notifier = rt.notifier
    if notifier.webhook is None:
        return
    instance, host = rt.db.instance_id(), socket.gethostname()
    while True:
        n = await notifier.queue.get()
        await _deliver_one(http, notifier.webhook, n, instance, host)


async def _deliver_one(http: aiohttp.ClientSession, webhook: Webhook, n: Notification, instance: str,
                       host: str) -> None:
    where = redact_url(webhook.url)
    try:
        body = envelope(n, instance=instance, host=host)
    except (TypeError, ValueError) as e:
        _failed(n, where, f"the event cannot be sent as JSON ({e})")
        return
    sent = headers(webhook, n, body)
    state = RetryState(webhook.retry)
    while True:
        try:
            async with http.post(webhook.url, data=body, headers=sent, allow_redirects=False,
                                 timeout=aiohttp.ClientTimeout(total=webhook.timeout)) as resp:
                answer = await resp.content.read(_ANSWER_MAX)
                if 200 <= resp.status <= 299:
                    metrics.NOTIFICATIONS.labels(n.event, "sent").inc()
                    log.debug("notification_sent", notification=n.event, id=n.id, status=resp.status)
                    return
                retry = classify_status(resp.status, resp.headers, answer, now=time.time(),
                                        what="the webhook")
                if retry is None:  # 3xx, 4xx: trying again would get the same answer
                    detail = detail_text(answer)
                    _failed(n, where,
                            f"the webhook answered HTTP {resp.status}{': ' + detail if detail else ''}")
                    return
        except Exception as e:  # every network failure; a bad URL or TLS setup is not worth a retry
            retry = classify_exception(e, webhook.url)
            if retry is None:
                _failed(n, where, f"{type(e).__name__}: {e}")
                return
        try:
            delay = min(state.failed(retry, random.random()), webhook.retry.max_delay)
        except UploadGaveUp as e:
            _failed(n, where, str(e))
            return
        log.info("notification_retry", notification=n.event, id=n.id, webhook=where, error=retry.message,
                 retry_in=round(delay, 2))
        await asyncio.sleep(delay)


def _failed(n: Notification, where: str, error: str) -> None:
    metrics.NOTIFICATIONS.labels(n.event, "failed").inc()
    log.error("notification_failed", notification=n.event, id=n.id, webhook=where, error=redact(error),
              note="this event is not sent")


# ---- stalled uploads (the ``notify-stalls`` task) -------------------------------------------------


class StallWatch:
    """Which uploads have sent no new byte for ``stall_after``, counted as the connection takes them
    (the server confirms only at the end of each span: a slow upload that moves is not stalled; bytes
    sent again after a failure are no progress): each stall is reported once, and a batch that moves
    again and stops again is reported again."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        #: batch id -> ``progressed_at`` of the stall already reported
        self._reported: dict[int, float] = {}

    def check(self, uploads: Iterable[UploadProgress], now: float) -> list[UploadProgress]:
        current = {p.batch_id: p for p in uploads}
        for gone in self._reported.keys() - current.keys():
            del self._reported[gone]
        stalled = [p for p in current.values()
                   if now - p.progressed_at >= self.stall_after
                   and self._reported.get(p.batch_id) != p.progressed_at]
        for p in stalled:
            self._reported[p.batch_id] = p.progressed_at
        return stalled


async def watch_stalls(rt: Runtime) -> None:
    """Emit ``upload_stalled`` for every upload that has sent no new byte for ``notify.stall_after``."""
    if "upload_stalled" not in rt.notifier.events:
        return
    stall_after = rt.cfg.notify.stall_after
    watch = StallWatch(stall_after)
    while True:
        now = time.monotonic()
        for p in watch.check(list(rt.uploads.values()), now):
            try:  # what the server confirmed (bytes handed to the socket may never have arrived)
                row = rt.db.batch(p.batch_id)
                confirmed, last_error = row.committed_offset, row.last_error
            except Exception:  # the DB itself may be what fails: the notice goes out anyway
                confirmed, last_error = None, None
            stall = dict(batch=p.name, confirmed=confirmed, total=p.total,
                         stalled_for=round(now - p.progressed_at), last_error=last_error)
            rt.notifier.emit("upload_stalled", **stall)
            log.warning("upload_stalled", **stall)
        await asyncio.sleep(min(max(stall_after / 10, 0.2), 30.0))
