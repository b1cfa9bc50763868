"""What every handler shares, stored on the aiohttp app under typed keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from wodrop.receiver.faults import FaultPlan
from wodrop.receiver.sessions import Sessions
from wodrop.receiver.stats import ReceiverStats
from wodrop.receiver.store import Session


@dataclass
class Receiver:
    sessions: Sessions
    stats: ReceiverStats
    faults: FaultPlan
    api_key: str | None
    #: seconds an uploaded batch reads pending, then processing, before its verdict (``--processing-time``)
    processing_time: float = 0.0


RECEIVER_KEY = web.AppKey("receiver", Receiver)
STATS_KEY = web.AppKey("receiver_stats", ReceiverStats)


def receiver(request: web.Request) -> Receiver:
    return request.app[RECEIVER_KEY]


def base_url(request: web.Request) -> str:
    """The site root as the client reached it, so upload URLs work on whatever host/port."""
    return f"{request.scheme}://{request.host}"


def json_error(status: int, detail: str, **headers: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers=headers or None)


def upload_url(request: web.Request, batch_id: str, token: str) -> str:
    return f"{base_url(request)}/upload/{batch_id}?upload_id={token}"


def batch_json(request: web.Request, s: Session) -> dict[str, Any]:
    out: dict[str, Any] = {
        "batch_id": s.batch_id,
        "filename": s.filename,
        "status": s.status,
        "upload_url": upload_url(request, s.batch_id, s.token),
        "created_at": s.created_at,
    }
    if s.total is not None:
        out["size"] = s.total
    return out
