"""Why is a folder still in the inbox? One entry per unclaimed folder, with a reason in words.

The intake fills :attr:`wodrop.runtime.Runtime.waiting`; ``/api/status`` (``inbox.waiting``), the
status page and ``wodrop status`` show it, so an operator can tell "still copying" from "stuck".
``wodrop status`` runs in another process: the intake also writes the list to
:func:`waiting_path` (``<state>/waiting.json``) with :func:`save`, and the command reads it with
:func:`load`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: a waiting.json bigger than this is not ours (10,000 waiting folders take ~2 MB)
MAX_FILE_BYTES = 64 * 2**20
#: unix times outside [0, 9999-12-31] are garbage (and would make ``datetime`` raise)
_MAX_TIME = 253402300799.0


@dataclass(frozen=True)
class WaitingFolder:
    """A folder in the inbox that is not claimed yet."""

    name: str  # as shown to people: a name that is not valid UTF-8 is shown with \\x escapes
    since: float  # unix time the daemon first saw it
    reason: str  # why it is held, in words (what to fix, when a person must act)


def is_utf8(name: str) -> bool:
    """Whether a name from ``os.scandir`` was valid UTF-8 on disk (no surrogate escapes): one that is
    not can never be a work-order id."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """``name`` safe to print, log and put in JSON: bytes that are not valid UTF-8 (which
    ``os.scandir`` hands over as surrogate escapes, ``\\udcff``) are shown as ``\\xff``; a lone
    surrogate of any other kind as ``\\ud800``. Valid text comes back as it is (the same object)."""
    if is_utf8(name):
        return name
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte (from JSON, say)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def claim_failed_reason(error: OSError, inbox: Path) -> str:
    """The reason shown when the folder is settled but cannot be moved out of ``inbox`` (what to
    fix, in words)."""
    if error.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot move it: permission denied. The user wodrop runs as needs write permission "
                f"on the folder itself and on {display_name(str(inbox))} (with the sticky bit set "
                "on the inbox, it must also own the folder)")
    if error.errno == errno.EROFS:
        return f"cannot move it: {display_name(str(inbox))} is on a read-only filesystem"
    if error.errno == errno.EBUSY:
        return "cannot move it: the folder is busy (a mount point, or open on a Windows/SMB client?)"
    what = error.strerror or type(error).__name__
    return f"cannot move it: {display_name(what)}"


def waiting_path(state_dir: Path) -> Path:
    """Where the daemon keeps the waiting list for ``wodrop status``: the one place that names it."""
    return state_dir / "waiting.json"


def _entry(w: WaitingFolder) -> dict[str, Any]:
    return {"name": display_name(w.name), "since": w.since, "reason": display_name(w.reason)}


def _encoded(entries: Iterable[WaitingFolder], now: float) -> Iterator[bytes]:
    """The bytes of ``{"written_at": now, "waiting": [...]}`` (compact JSON, UTF-8), a thousand
    entries at a time: the whole document of 50,000 waiting folders would take 25 MiB at once."""
    dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))
    yield f'{{"written_at":{dumps(now)},"waiting":['.encode()
    it, sep = iter(entries), ""
    while chunk := [_entry(w) for w in itertools.islice(it, 1000)]:
        yield (sep + dumps(chunk)[1:-1]).encode("utf-8")
        sep = ","
    yield b"]}"


def save(path: Path, entries: Iterable[WaitingFolder], now: float) -> None:
    """Write ``{"written_at": now, "waiting": [{"name", "since", "reason"}, ...]}`` to ``path``,
    atomically (temp file in the same folder, then rename), mode 0600.

    A reader sees the old list or the new one, never half of one. No fsync: the list is rewritten
    when it changes (at most every 2 s) and at least every 30 s, and after a crash a stale or
    unreadable file only means "nothing known" (:func:`load` returns None). Raises OSError (disk
    full, state folder gone): the caller decides whether that matters; the temp file is removed.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover temp file
            for data in _encoded(entries, now):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _time(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value <= _MAX_TIME else None


def load(path: Path) -> tuple[float, list[WaitingFolder]] | None:
    """``(written_at, entries)`` from a file :func:`save` wrote; None when it is absent, unreadable
    or not what :func:`save` writes (truncated, garbled, another format). Never raises."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return None
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("waiting"), list):
        return None
    written_at = _time(doc.get("written_at"))
    if written_at is None:
        return None
    entries: list[WaitingFolder] = []
    for item in doc["waiting"]:
        if not isinstance(item, dict):
            return None
        name, since, reason = item.get("name"), _time(item.get("since")), item.get("reason")
        if not isinstance(name, str) or since is None or not isinstance(reason, str):
            return None
        entries.append(WaitingFolder(display_name(name), since, display_name(reason)))
    return written_at, entries
