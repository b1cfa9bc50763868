"""One status snapshot (a plain dict) shared by ``/api/status``, the status page, ``wodrop status`` and
the systemd STATUS= line, so that all of them tell the same story.

Built from the state DB (what survives restarts) plus, inside the daemon, the :class:`Runtime` (live
rates, the inbox backlog, a refused key). It never contains an upload URL or the API key: those
columns are not read, and every string still passes through :func:`wodrop.redact.redact_value`.
"""

from __future__ import annotations

import heapq
import time
from datetime import UTC, datetime
from typing import Any

from wodrop import waiting
from wodrop.lifecycle import ACTIVE_BATCH_STATES, FINISHED_BATCH_STATES, BatchState, WorkOrderState
from wodrop.redact import redact_value, register_secret
from wodrop.runtime import Runtime
from wodrop.state import BatchRow, StateDB, WorkOrderRow

#: /healthz and the page call the loop stuck when the pipeline's tick is older than this
LOOP_STALE_AFTER = 30.0
#: ``inbox.waiting`` lists at most this many folders, oldest first (``inbox.waiting_total`` has them all)
WAITING_SHOWN = 200


def iso(ts: float | None) -> str | None:
    """Unix time -> ISO 8601 UTC with a ``Z`` (the same shape as the failure reports)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _local_midnight(now: float) -> float:
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _batch(row: BatchRow, runtime: Runtime | None) -> dict[str, Any]:
    register_secret(row.upload_url)  # masks it in any stored error message that quotes it
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
            return {"level": "error", "reason": "Uploads paused: the platform refused the API key "
                    f"({d['auth_error']})"}
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
        return {"level": "warn", "reason": f"{_plural(status['failed_today'], 'work order')} failed today "
                "(see recent failures)"}
    if uploading:
        return {"level": "ok", "reason": f"Uploading {_plural(len(uploading), 'batch')}"}
    if status["inbox"] is not None:
        pending = status["inbox"]["pending"]
        return {"level": "ok", "reason": f"All good: {_plural(pending, 'folder')} waiting in the inbox"
                if pending else "All good: idle, the inbox is empty"}
    return {"level": "ok", "reason": "No failures today"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('ch') else 's'}"


def collect_status(db: StateDB, runtime: Runtime | None = None, *, recent: int = 20) -> dict[str, Any]:
    """Snapshot: active batches then the ``recent`` latest finished ones, the ``recent`` latest
    failures, counts by state, and with a runtime the inbox backlog and daemon state (without one,
    the inbox as of the daemon's last ``waiting.json``, when there is one)."""
    now, now_mono = time.time(), time.monotonic()
    rows = db.batches(ACTIVE_BATCH_STATES)[::-1]
    failures: list[WorkOrderRow] = []
    if recent > 0:  # the DB reads limit=0 as "no limit"
        rows += db.batches(FINISHED_BATCH_STATES, limit=recent)
        failures = db.work_orders(states=[WorkOrderState.FAILED], limit=recent, newest_first=True)
    status: dict[str, Any] = {
        "generated_at": iso(now),
        "daemon": _daemon(runtime, now_mono) if runtime else None,
        "inbox": _inbox(db, runtime, now),
        "counts": db.counts(),
        "failed_today": db.count_finished_since(WorkOrderState.FAILED, _local_midnight(now)),
        "batches": [_batch(r, runtime) for r in rows],
        "failures": [_failure(r) for r in failures],
    }
    status["health"] = _health(status)
    redacted: dict[str, Any] = redact_value(status)
    return redacted


def empty_status(reason: str) -> dict[str, Any]:
    """The snapshot's shape with nothing in it, for when there is no state DB yet."""
    return {
        "generated_at": iso(time.time()), "daemon": None, "inbox": None,
        "counts": {"work_orders": {}, "batches": {}}, "failed_today": 0, "batches": [], "failures": [],
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
