"""What the platform says about a batch after its upload, and when to ask again. Pure: no I/O, no clock.

The platform's exact answer is not public, so its reading is kept in this one adapter
(:func:`read_progress`): ``status`` is an opaque string, compared without case against
``followup.done_statuses``/``followup.failed_statuses``; ``errors`` lists what it could not process, one
entry per problem::

    {"status": "done", "errors": [{"work_order": "WO_1", "code": "missing_metadata_key",
                                   "file": "metadata.json", "message": "..."},
                                  {"work_order": null, "code": "not_a_zip", "message": "..."}]}

An entry without a work order is about the batch as a whole. Everything from the platform is untrusted:
texts are redacted, cut, and stripped of control characters, and a value that is not a text is shown as
its JSON; every entry is read (the answer itself is bounded, ``api.MAX_ANSWER_BYTES``) but only so many
are kept per work order, so a flood about one work order cannot crowd out another's report; work-order
ids are only ever *compared* with the ids wodrop sent (never used to build a path).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from wodrop.redact import redact
from wodrop.upload.protocol import UnusableAnswer

#: at most this many errors are kept per work order, and about the batch as a whole; past it they are
#: counted, and one last entry (code :data:`MORE_ERRORS`) says how many more there were
MAX_PER_WORK_ORDER = 100
MORE_ERRORS = "more_errors"
#: ids the platform named that the batch did not hold: this many are kept to be shown (all are counted)
UNKNOWN_SHOWN = 5
#: longest status, code, file name, message and work-order id kept
STATUS_MAX, CODE_MAX, FILE_MAX, MESSAGE_MAX, ID_MAX = 64, 64, 255, 1000, 100
#: the doubling poll delay stops growing here (or at ``followup.poll_interval`` if that is longer)
MAX_POLL_DELAY = 600.0
#: a batch the platform answers 404 for this many polls in a row is ``lost``
LOST_AFTER = 3

Outcome = Literal["done", "failed"]


@dataclass(frozen=True)
class Progress:
    """One reading of the platform's batch."""

    status: str
    #: "done"/"failed" when ``status`` is final, else None
    outcome: Outcome | None
    #: work order the batch held (its id as wodrop sent it) -> its errors ``{code, file, message}``: at
    #: most ``MAX_PER_WORK_ORDER``, then a ``more_errors`` entry counting the rest
    work_orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: messages about the batch as a whole (bounded the same way)
    batch_errors: list[str] = field(default_factory=list)
    #: every error entry of the answer, also those not kept
    total: int = 0
    #: how many distinct ids the platform named that the batch did not hold, and the first few (cleaned)
    unknown: int = 0
    unknown_shown: tuple[str, ...] = ()


def clean(value: object, limit: int) -> str:
    """A platform text fit to log, store and show: redacted, control characters escaped, cut."""
    text = redact(" ".join(str(value).split()))
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(value: object, limit: int) -> str:
    """A platform value as text: a string as it is, anything else as its JSON (never a Python repr)."""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False)
        except (ValueError, TypeError, RecursionError):  # nested too deeply to write back
            value = f"a {type(value).__name__} nested too deeply to show"
    return clean(value, limit)


def _work_order(raw: object) -> str | None:
    """The work-order id an entry names (as written), or None: about the batch as a whole."""
    wo = raw.get("work_order", raw.get("work_order_id")) if isinstance(raw, Mapping) else None
    return wo if isinstance(wo, str) and wo.strip() else None


def _fields(raw: object) -> dict[str, Any]:
    """``{code, file, message}`` of one error entry, whatever its shape."""
    if not isinstance(raw, Mapping):
        return {"code": "platform_error", "file": None, "message": _text(raw, MESSAGE_MAX)}
    code, file = raw.get("code"), raw.get("file")
    message = raw.get("message", raw.get("detail"))
    return {"code": _text(code, CODE_MAX) if code is not None and code != "" else "platform_error",
            "file": _text(file, FILE_MAX) if file is not None and file != "" else None,
            "message": _text(message, MESSAGE_MAX) if message is not None else "no message given"}


def _more(n: int, what: str) -> str:
    plural = "" if n == 1 else "s"
    return f"{n:,} more error{plural} the platform listed {what} (the first {MAX_PER_WORK_ORDER} are kept)"


def _status(data: Mapping[str, Any]) -> str:
    raw = data.get("status")
    if raw is None:
        kind = "no status"
    elif not isinstance(raw, str):
        kind = f"a status that is not a text ({type(raw).__name__})"
    elif not raw.strip():
        kind = "an empty status"
    else:
        return clean(raw.strip(), STATUS_MAX)
    raise UnusableAnswer(f"the platform API answered with {kind}")


def read_progress(data: Mapping[str, Any], done: Iterable[str], failed: Iterable[str],
                  sent: Collection[str]) -> Progress:
    """The platform's batch JSON -> :class:`Progress`, keeping the errors of the work orders in ``sent``
    (the batch's). A missing, empty or non-string ``status`` is no reading (:class:`UnusableAnswer`:
    the poll counts as failed and is tried again). An ``errors`` that is not a list is ignored."""
    status = _status(data)
    key = status.lower()
    outcome: Outcome | None = "done" if key in set(done) else "failed" if key in set(failed) else None
    errors = data.get("errors")
    entries = errors if isinstance(errors, list) else []
    work_orders: dict[str, list[dict[str, Any]]] = {}
    left_out: dict[str | None, int] = {}
    batch_errors: list[str] = []
    unknown: set[str] = set()
    shown: list[str] = []
    for raw in entries:
        wo = _work_order(raw)
        if wo is not None and wo not in sent:
            if wo not in unknown and len(shown) < UNKNOWN_SHOWN:
                shown.append(clean(wo, ID_MAX))
            unknown.add(wo)
            continue
        kept = len(batch_errors) if wo is None else len(work_orders.get(wo, ()))
        if kept >= MAX_PER_WORK_ORDER:  # counted only: what is past the bound costs no cleaning
            left_out[wo] = left_out.get(wo, 0) + 1
        elif wo is None:
            err = _fields(raw)
            batch_errors.append(f"{err['code']}: {err['message']}")
        else:
            work_orders.setdefault(wo, []).append(_fields(raw))
    for wo, n in left_out.items():
        if wo is None:
            batch_errors.append(f"{MORE_ERRORS}: {_more(n, 'about the batch')}")
        else:
            work_orders[wo].append({"code": MORE_ERRORS, "file": None,
                                    "message": _more(n, 'for this work order')})
    return Progress(status, outcome, work_orders, batch_errors, len(entries), len(unknown), tuple(shown))


def poll_delay(polls: int, interval: float) -> float:
    """Seconds to the next poll after ``polls`` polls that saw no new status: ``interval``, doubling
    each time, up to ``MAX_POLL_DELAY`` (or ``interval`` when that is longer)."""
    return min(interval * 2.0 ** min(max(polls, 0), 32), max(interval, MAX_POLL_DELAY))


def next_poll_at(now: float, polls: int, interval: float, deadline: float) -> float:
    """When to poll next: after :func:`poll_delay`, but never after the deadline (the last poll is made
    at the deadline, then the follow-up times out)."""
    return min(now + poll_delay(polls, interval), max(deadline, now))
