"""One status snapshot (a plain dict) shared by ``/api/status``, the status page, ``wodrop status`` and
the systemd STATUS= line, so that all of them tell the same story.

Built from the state DB (what survives restarts) plus, inside the daemon, the :class:`Runtime` (live
rates, the inbox backlog, a refused key). It never contains an upload URL or the API key: those
columns are not read, and every string still passes through :func:`wodrop.redact.redact_value`. The
platform's batch id (``remote_batch_id``) is shown: it is no secret, even where an upload URL holds it.
"""

from __future__ import annotations

import heapq
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from wodrop import waiting
from wodrop.config import Config
from wodrop.lifecycle import (
    ACTIVE_BATCH_STATES,
    FINISHED_BATCH_STATES,
    BatchState,
    FollowupState,
    WorkOrderState,
)
from wodrop.redact import redact_value, register_public, register_secret
from wodrop.runtime import Runtime
from wodrop.state import BatchRow, StateDB, WorkOrderRow
from wodrop.units import plural

#: /healthz and the page call the loop stuck when the pipeline's tick is older than this
LOOP_STALE_AFTER = 30.0
#: ``inbox.waiting`` lists at most this many folders, oldest first (``inbox.waiting_total`` has them all)
WAITING_SHOWN = 200
#: ``activity`` (the status page's chart) covers this many hours, the current one last
ACTIVITY_HOURS = 24


def iso(ts: float | None) -> str | None:
    """Unix time -> ISO 8601 UTC with a ``Z`` (the same shape as the failure reports)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _local_midnight(now: float) -> float:
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _local_hour(now: float) -> float:
    """Start of the current hour by the local clock (xx:00 also where the offset has half hours)."""
    return datetime.fromtimestamp(now).replace(minute=0, second=0, microsecond=0).timestamp()


def destination(cfg: Config) -> dict[str, Any]:
    """Where batches go: the platform (its API URL without any user, query or fragment; never the key)
    or, with no ``api.url``, the embedded local receiver and the folder it keeps the archives in."""
    if cfg.api.url:
        u = urlsplit(cfg.api.url)
        host = u.netloc.rpartition("@")[2]
        return {"kind": "platform", "api_url": urlunsplit((u.scheme, host, u.path, "", ""))}
    return {"kind": "local_receiver", "store": str(cfg.local_receiver_store.absolute()),
            "config_file": str(cfg.source) if cfg.source else None}


def _activity(db: StateDB, now: float) -> list[dict[str, Any]]:
    """Uploads and finished work orders per hour over the last :data:`ACTIVITY_HOURS`, oldest first."""
    first = _local_hour(now) - (ACTIVITY_HOURS - 1) * 3600
    totals = db.hourly_activity(first, ACTIVITY_HOURS)
    return [{"start": iso(first + 3600 * i), **{key: values[i] for key, values in totals.items()}}
            for i in range(ACTIVITY_HOURS)]


def _batch(row: BatchRow, runtime: Runtime | None) -> dict[str, Any]:
    register_secret(row.upload_url)  # masks it in any stored error message that quotes it
    register_public(row.remote_batch_id)  # ... but not the batch id in its path: people need it
    live = runtime.uploads.get(row.id) if runtime else None
    total = row.size if row.size is not None else (live.total if live else None)
    whole = row.state in (BatchState.UPLOADED, BatchState.DONE) and row.size is not None
    sent = row.size if whole and row.size is not None else row.committed_offset
    rate = eta = None
    if live is not None:
        sent, rate = max(sent, live.sent), live.rate
        if rate > 0 and total:
            eta = max(0.0, (total - sent) / rate)
    return {
        "id": row.id,
        "name": row.name,
        "remote_batch_id": row.remote_batch_id,
        "state": row.state,
        "bytes_sent": sent,
        "bytes_total": total,
        "percent": round(100.0 * sent / total, 1) if total else None,
        "work_orders": row.work_order_count,
        "seal_reason": row.seal_reason,
        "attempts": row.attempts,
        "sessions": row.sessions,
        "last_error": row.last_error,
        "rate_bytes_per_s": rate,
        "eta_s": eta,
        "created_at": iso(row.created_at),
        "sealed_at": iso(row.sealed_at),
        "upload_started_at": iso(row.upload_started_at),
        "uploaded_at": iso(row.uploaded_at),
        "finished_at": iso(row.finished_at),
        "updated_at": iso(row.updated_at),
        # the platform's processing after the upload (``followup``); null until it is polled
        "platform_status": row.platform_status,
        "platform_status_at": iso(row.platform_status_at),
        "platform_outcome": row.followup,
        "platform_errors": row.platform_errors,
        "platform_message": row.platform_message,
        "platform_poll_error": row.followup_error,
    }


def platform_text(b: dict[str, Any]) -> str:
    """A batch's platform column in words: ``processing``, ``done, 2 errors``, ``failed: <why>``,
    ``timeout (last: processing)``, ``lost``; ``-`` when it is not followed."""
    outcome, status = b.get("platform_outcome"), b.get("platform_status")
    if outcome is None:
        return "-"
    errors = f", {plural(b['platform_errors'], 'error')}" if b.get("platform_errors") else ""
    if outcome == FollowupState.FOLLOWING:
        text = status or "waiting for its first status"
        return f"{text} (poll failing: {b['platform_poll_error']})" if b.get("platform_poll_error") else text
    if outcome == FollowupState.DONE:
        return f"{status}{errors}"
    if outcome == FollowupState.FAILED:
        why = f": {b['platform_message']}" if b.get("platform_message") else ""
        return f"failed ({status}){why}{errors}"
    last = f"last: {status}" if status else "no status seen"
    return f"{outcome} ({last})"


def _platform_error(db: StateDB, row: WorkOrderRow) -> dict[str, Any]:
    try:
        batch = db.batch(row.batch_id).name if row.batch_id is not None else None
    except KeyError:
        batch = None
    return {
        "work_order": row.name,
        "batch": batch,
        "errors": [{"code": e.get("code"), "file": e.get("file"), "message": e.get("message")}
                   for e in row.platform_error_list],
        "reported_at": iso(row.platform_at),
        "report": row.platform_report,
    }


def _failure(row: WorkOrderRow) -> dict[str, Any]:
    return {
        "work_order": row.name,
        "stage": row.error_stage,
        "errors": [
            {"code": e.get("code"), "file": e.get("file"), "message": e.get("message")}
            for e in row.error_list
        ],
        "failed_at": iso(row.finished_at or row.updated_at),
        "path": row.path,
    }


def _waiting(w: waiting.WaitingFolder) -> dict[str, Any]:
    return {"name": waiting.display_name(w.name), "since": iso(w.since),
            "reason": waiting.display_name(w.reason)}


def _inbox(db: StateDB, runtime: Runtime | None, now: float) -> dict[str, Any] | None:
    """The inbox backlog and why each folder waits: live from the runtime inside the daemon; else (in
    ``wodrop status``) as of the daemon's last ``waiting.json`` in the state folder, the DB's folder
    (None when there is no such file, or it cannot be read)."""
    if runtime is not None:
        entries = list(runtime.waiting.values())
        as_of = None
        pending, oldest = len(runtime.pending), runtime.oldest_pending_age()
    else:
        loaded = waiting.load(waiting.waiting_path(db.path.parent))
        if loaded is None:
            return None
        written_at, entries = loaded
        as_of = iso(written_at)
        pending = len(entries)
        oldest = max(0.0, now - min(w.since for w in entries)) if entries else 0.0
    shown = heapq.nsmallest(WAITING_SHOWN, entries, key=lambda w: (w.since, w.name))
    return {
        "pending": pending,
        "oldest_pending_age_s": round(oldest, 1),
        "waiting": [_waiting(w) for w in shown],
        "waiting_total": len(entries),
        "waiting_as_of": as_of,
    }


def _bandwidth(runtime: Runtime) -> dict[str, Any] | None:
    """The upload rate limit in force (None: no limit), the timetable, and when and to what it changes."""
    throttle = runtime.bandwidth
    if throttle is None:  # uploads not set up yet
        return None
    at = throttle.next_change_at
    return {
        "limit_bytes_per_s": throttle.limiter.rate,
        "schedule": throttle.schedule.text if throttle.schedule.is_timetable else None,
        "next_change_at": iso(at.timestamp()) if at is not None else None,
        "next_limit_bytes_per_s": throttle.next_rate if at is not None else None,
    }


def _daemon(runtime: Runtime, now_mono: float) -> dict[str, Any]:
    return {
        "started_at": iso(runtime.started_at),
        "ready": runtime.ready,
        "stopping": runtime.stopping,
        "watcher": runtime.watcher,
        "auth_error": runtime.auth_error,
        "api_key_accepted": runtime.api_key_accepted,
        "intake_paused": runtime.intake_paused,
        "loop_tick_age_s": round(now_mono - runtime.last_loop_tick, 3),
        "stuck": [{"item": item, "reason": reason} for item, reason in sorted(runtime.stuck.items())],
        "bandwidth": _bandwidth(runtime),
    }


def _health(status: dict[str, Any]) -> dict[str, str]:
    """Overall verdict for a person: ``ok`` (green), ``warn`` (amber) or ``error`` (red), with why."""
    d = status["daemon"]
    uploading = [b for b in status["batches"] if b["state"] == BatchState.UPLOADING]
    if d is not None:
        if d["auth_error"]:
            return {"level": "error", "reason": f"Uploads paused: {d['auth_error']}"}
        if d["loop_tick_age_s"] > LOOP_STALE_AFTER:
            return {"level": "error", "reason": f"The daemon looks stuck: no progress for "
                    f"{d['loop_tick_age_s']:.0f} s"}
        if d["intake_paused"]:
            return {"level": "error", "reason": f"Intake paused: {d['intake_paused']}"}
        if d["stuck"]:
            first = d["stuck"][0]
            more = f" (and {len(d['stuck']) - 1} more)" if len(d["stuck"]) > 1 else ""
            return {"level": "error", "reason": f"Stuck: {first['item']}: {first['reason']}{more}"}
        if d["stopping"]:
            return {"level": "warn", "reason": "Shutting down: finishing the current step"}
        if not d["ready"]:
            return {"level": "warn", "reason": "Starting up: recovering state and scanning the inbox"}
    # An old error on a batch that is moving again is history, not a problem: only stalled ones count
    # (known only inside the daemon; elsewhere the batch table shows the last error).
    retrying = [b for b in uploading if d and b["last_error"] and not b["rate_bytes_per_s"]]
    if retrying:
        b = retrying[0]
        return {"level": "warn", "reason": f"Retrying {b['name']} (attempt {b['attempts']}): "
                f"{b['last_error']}"}
    if status["failed_today"]:
        return {"level": "warn", "reason": f"{plural(status['failed_today'], 'work order')} failed today "
                "(see recent failures)"}
    if status["platform_failed_today"]:
        failed = plural(status["platform_failed_today"], "batch")
        return {"level": "warn", "reason": f"The platform failed {failed} today (see recent batches)"}
    if status["platform_errors_today"]:
        return {"level": "warn", "reason": f"The platform reported errors for "
                f"{plural(status['platform_errors_today'], 'work order')} today (see platform errors)"}
    if uploading:
        return {"level": "ok", "reason": f"Uploading {plural(len(uploading), 'batch')}"}
    if status["inbox"] is not None:
        pending = status["inbox"]["pending"]
        return {"level": "ok", "reason": f"All good: {plural(pending, 'folder')} waiting in the inbox"
                if pending else "All good: idle, the inbox is empty"}
    return {"level": "ok", "reason": "No failures today"}


def collect_status(db: StateDB, runtime: Runtime | None = None, *, recent: int = 20,
                   cfg: Config | None = None) -> dict[str, Any]:
    """Snapshot: active batches then the ``recent`` latest finished ones, the ``recent`` latest
    failures, counts by state, the last 24 hours per hour, where batches go (from the runtime's config,
    else ``cfg``), and with a runtime the inbox backlog and daemon state (without one, the inbox as of
    the daemon's last ``waiting.json``, when there is one)."""
    now, now_mono = time.time(), time.monotonic()
    cfg = runtime.cfg if runtime else cfg
    rows = db.batches(ACTIVE_BATCH_STATES)[::-1]
    failures: list[WorkOrderRow] = []
    reported: list[WorkOrderRow] = []
    if recent > 0:  # the DB reads limit=0 as "no limit"
        rows += db.batches(FINISHED_BATCH_STATES, limit=recent)
        failures = db.work_orders(states=[WorkOrderState.FAILED], limit=recent, newest_first=True)
        reported = db.platform_reported(limit=recent)
    midnight = _local_midnight(now)
    status: dict[str, Any] = {
        "generated_at": iso(now),
        "daemon": _daemon(runtime, now_mono) if runtime else None,
        "destination": destination(cfg) if cfg else None,
        "inbox": _inbox(db, runtime, now),
        "counts": db.counts(),
        "failed_today": db.count_finished_since(WorkOrderState.FAILED, midnight),
        "platform_failed_today": db.count_platform_failed_since(midnight),
        "platform_errors_today": db.count_platform_reported_since(midnight),
        "batches": [_batch(r, runtime) for r in rows],
        "failures": [_failure(r) for r in failures],
        "platform_errors": [_platform_error(db, r) for r in reported],
        "activity": _activity(db, now),
    }
    status["health"] = _health(status)
    redacted: dict[str, Any] = redact_value(status)
    return redacted


def empty_status(reason: str, cfg: Config | None = None) -> dict[str, Any]:
    """The snapshot's shape with nothing in it, for when there is no state DB yet."""
    return {
        "generated_at": iso(time.time()), "daemon": None, "destination": destination(cfg) if cfg else None,
        "inbox": None, "counts": {"work_orders": {}, "batches": {}}, "failed_today": 0, "batches": [],
        "failures": [], "activity": [],
        "platform_failed_today": 0, "platform_errors_today": 0, "platform_errors": [],
        "health": {"level": "ok", "reason": reason},
    }


def summary_line(status: dict[str, Any]) -> str:
    """One line for systemd's STATUS=: ``3 pending, uploading batch-…: 45% at 12.3 MiB/s, 0 failed today``."""
    parts: list[str] = []
    d = status["daemon"]
    if d and d["auth_error"]:
        parts.append("API key refused, uploads paused")
    if d and d["intake_paused"]:
        parts.append(f"intake paused: {d['intake_paused']}")
    if status["inbox"] is not None:
        parts.append(f"{status['inbox']['pending']} pending")
    for b in status["batches"]:
        if b["state"] == BatchState.UPLOADING:
            pct = f"{b['percent']:.0f}%" if b["percent"] is not None else "?%"
            rate = f" at {b['rate_bytes_per_s'] / 2**20:.1f} MiB/s" if b["rate_bytes_per_s"] else ""
            parts.append(f"uploading {b['name']}: {pct}{rate}")
    parts.append(f"{status['failed_today']} failed today")
    return ", ".join(parts)
