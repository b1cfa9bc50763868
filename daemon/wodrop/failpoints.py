"""Named crash points: ``WODROP_FAILPOINT=name[:nth]`` makes the process ``os._exit`` there.

Every step of the lifecycle where a crash leaves the DB and the folders disagreeing has a name below,
placed between a DB write and a filesystem step. The crash-point test runs the daemon to each one,
kills it there, restarts it and checks that nothing was lost or uploaded twice. Unset (always, in
production) a fail point is one dict lookup.
"""

from __future__ import annotations

import os
import sys

#: exit status of a process stopped at a fail point (tests tell it from a real crash)
EXIT_FAILPOINT = 86

POINTS: dict[str, str] = {
    "claim.renamed": "folder renamed into processing/, not yet in the DB",
    "finish.planned": "destination recorded in the DB, report not written, folder not moved",
    "finish.reported": "failed/<WO>.error.json written, folder not moved yet",
    "finish.moved": "folder renamed to done/ or failed/, the DB not yet told",
    "batch.appended": "work order written into the open archive, not yet recorded in the DB",
    "batch.assigned": "work order recorded in the open batch",
    "seal.closed": "archive closed and fsynced, the DB still says open",
    "seal.recorded": "batch sealed in the DB, not yet queued for upload",
    "upload.session_created": "the platform created a batch, its session not yet in the DB",
    "upload.session_saved": "session saved in the DB, no byte sent yet",
    "upload.span_sent": "the server confirmed a span, the DB offset not yet updated",
    "upload.confirmed": "the server holds the whole archive, the ledger not yet written",
    "upload.ledgered": "delivered ids in the ledger, the DB still says uploading",
    "upload.marked": "the DB says uploaded, no folder moved yet",
    "batch.finished": "every folder moved, batch done in the DB, archive still in the spool",
    "discard.recorded": "batch discarded in the DB, its archive not yet removed",
    "followup.planned": "the platform's errors for a work order recorded in the DB, done/<WO>.platform.json "
                        "not written yet",
}


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        sys.stderr.write(f"WODROP_FAILPOINT: unknown fail point {name!r}; known: {', '.join(POINTS)}\n")
        raise SystemExit(2)
    return name, int(nth or 1)


_target = _parse(os.environ.get("WODROP_FAILPOINT"))
_hits = 0


def failpoint(name: str) -> None:
    """Exit the process here when ``WODROP_FAILPOINT`` names this point (on its nth pass)."""
    global _hits
    if _target is None or _target[0] != name:
        return
    _hits += 1
    if _hits >= _target[1]:
        sys.stderr.write(f"wodrop: stopped at fail point {name}\n")
        sys.stderr.flush()
        os._exit(EXIT_FAILPOINT)
