"""The platform's batch API: ``/v0.2/batches`` (create, list) and ``/v0.2/batches/{id}`` (get, delete),
each also with a trailing slash, with Django-REST-framework-style token auth and error bodies
(``{"detail": ...}``). After an upload, a batch's ``status`` and ``errors`` follow the emulated
processing (:mod:`wodrop.receiver.processing`).

``strict``: only what the vendor's own client calls (``POST /v0.2/batches`` with ``Content-Type:
application/json``, ``GET``/``DELETE /v0.2/batches/{id}``, no trailing slash, no list), so clients can be
tested against a server routed like the platform."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from wodrop.receiver.context import batch_json, json_error, receiver
from wodrop.receiver.faults import API_FAULTS
from wodrop.receiver.processing import progress
from wodrop.receiver.store import Session

_AUTH_HEADERS = {"WWW-Authenticate": "Token"}


def auth_error(request: web.Request, schemes: tuple[str, ...] = ("Token",)) -> web.Response | None:
    """401 unless ``Authorization: <scheme> <key>`` is present and, with ``--api-key``, the key."""
    header = request.headers.get("Authorization", "")
    if not header:
        return json_error(401, "Authentication credentials were not provided.", **_AUTH_HEADERS)
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme not in schemes or not key or " " in key:
        return json_error(401, "Invalid token header.", **_AUTH_HEADERS)
    expected = receiver(request).api_key
    if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
        return json_error(401, "Invalid token.", **_AUTH_HEADERS)
    return None


def _api_fault(request: web.Request) -> web.Response | None:
    r = receiver(request)
    fault = r.faults.draw(API_FAULTS) if r.faults else None
    if fault is None:
        return None
    r.stats.fault(fault.kind)
    return json_error(int(fault.arg), f"injected fault: {fault}")


def _guard(request: web.Request) -> web.Response | None:
    return auth_error(request) or _api_fault(request)


async def _view(request: web.Request, s: Session, *, errors: bool = True) -> dict[str, Any]:
    """The batch as the API shows it: once uploaded, the emulated processing's status (and errors)."""
    out = batch_json(request, s)
    if s.status == "uploaded":
        r = receiver(request)
        out.update(await progress(r.sessions.store, s, r.processing_time, errors=errors))
    return out


async def create_batch(request: web.Request) -> web.Response:
    if (refused := _guard(request)) is not None:
        return refused
    try:
        body: Any = await request.json()
    except ValueError:
        return json_error(400, "Request body must be a JSON object.")
    filename = body.get("filename") if isinstance(body, dict) else None
    if not isinstance(filename, str) or not filename.strip():
        return json_error(400, "'filename' is required: a non-empty string.")
    r = receiver(request)
    s = await r.sessions.create(filename)
    r.stats.add("sessions_created")
    return web.json_response(batch_json(request, s), status=201)


async def list_batches(request: web.Request) -> web.Response:
    if (refused := _guard(request)) is not None:
        return refused
    results = [await _view(request, s, errors=False) for s in await receiver(request).sessions.all()]
    return web.json_response({"count": len(results), "next": None, "previous": None, "results": results})


async def get_batch(request: web.Request) -> web.Response:
    if (refused := _guard(request)) is not None:
        return refused
    s = await receiver(request).sessions.get(request.match_info["batch_id"])
    if s is None:
        return json_error(404, "Not found.")
    return web.json_response(await _view(request, s))


async def delete_batch(request: web.Request) -> web.Response:
    if (refused := _guard(request)) is not None:
        return refused
    sessions = receiver(request).sessions
    s = await sessions.get(request.match_info["batch_id"])
    if s is None:
        return json_error(404, "Not found.")
    async with s.lock:
        if s.status == "uploaded":
            return json_error(409, "The batch is uploaded and can no longer be deleted.")
        await sessions.forget(s)
    return web.Response(status=204)


async def create_batch_strict(request: web.Request) -> web.Response:
    """As the platform (Django REST framework's JSON parser): a body that is not declared JSON is 415."""
    ctype = request.headers.get("Content-Type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        return json_error(415, f'Unsupported media type "{ctype}" in request.')
    return await create_batch(request)


def add_routes(app: web.Application, *, strict: bool = False) -> None:
    if strict:
        app.router.add_post("/v0.2/batches", create_batch_strict)
        app.router.add_get("/v0.2/batches/{batch_id}", get_batch)
        app.router.add_delete("/v0.2/batches/{batch_id}", delete_batch)
        return
    for root in ("/v0.2/batches", "/v0.2/batches/"):
        app.router.add_post(root, create_batch)
        app.router.add_get(root, list_batches)
    for item in ("/v0.2/batches/{batch_id}", "/v0.2/batches/{batch_id}/"):
        app.router.add_get(item, get_batch)
        app.router.add_delete(item, delete_batch)
