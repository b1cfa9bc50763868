"""Filesystem steps that must never lose or overwrite a user's folder.

Moves are renames within one filesystem (atomic, no copy) that refuse to replace anything: a name
already taken gets a ``.<UTC yyyymmddTHHMMSS>`` suffix (then ``-2``, ``-3``...). Reports are written
to a temp file, fsynced and renamed, so a crash leaves either no report or a whole one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


class NotSameFilesystem(Exception):
    """inbox/processing/done/failed span filesystems: a claim or a move would be a copy, not a rename."""


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``dst`` (even an empty directory).

    Uses renameat2(RENAME_NOREPLACE) where the kernel and filesystem support it; on filesystems that
    don't (some NFS/CIFS mounts answer EINVAL) it falls back to check-then-rename, which is what the
    share can offer.
    """
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def utc_stamp(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%dT%H%M%S")


NAME_MAX = 255  # bytes in one path component (Linux, and what SMB/NFS shares accept)


def fit_name(base: str, tail: str = "") -> str:
    """``base + tail``, with ``base`` shortened when the whole would not fit in one path component:
    ``<start of base>~<8 hex of its sha1><tail>``, so a 255-byte folder name still gets its
    ``.error.json`` report and its ``.<stamp>`` suffix (and distinct bases stay distinct)."""
    name = base + tail
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    mark = "~" + hashlib.sha1(os.fsencode(base), usedforsecurity=False).hexdigest()[:8]
    room = NAME_MAX - len(os.fsencode(mark + tail))
    return os.fsencode(base)[:room].decode("utf-8", "ignore") + mark + tail


REPORT_SUFFIX = ".error.json"


def report_path(folder: Path) -> Path:
    """Where a failed folder's report lives: ``failed/<WO>.error.json`` (fitted to NAME_MAX)."""
    return folder.parent / fit_name(folder.name, REPORT_SUFFIX)


def free_names(dest_dir: Path, name: str, suffixes: Sequence[str] = ("",)) -> Iterable[str]:
    """Candidate names: ``name``, ``name.<stamp>``, ``name.<stamp>-2``, ... (each fitted to NAME_MAX).
    ``fit_name(candidate, suffix)`` must be free for every suffix (e.g. ``".error.json"``), so a
    folder and its report share one name."""
    def free(candidate: str) -> bool:
        return not any(os.path.lexists(dest_dir / fit_name(candidate, s)) for s in suffixes)

    stamp = f".{utc_stamp()}"
    for n in range(10_000):
        candidate = fit_name(name, "" if n == 0 else stamp if n == 1 else f"{stamp}-{n}")
        if free(candidate):
            yield candidate
    raise FileExistsError(errno.EEXIST, f"no free name for {name} in {dest_dir}")


def move_no_clobber(src: Path, dest_dir: Path, *, also_free: Sequence[str] = ()) -> Path:
    """Rename ``src`` into ``dest_dir`` under its own name, or a suffixed one if taken; returns the path.

    ``also_free`` lists suffixes that must be free too (``.error.json`` for failed/).
    """
    for candidate in free_names(dest_dir, src.name, ("", *also_free)):
        dst = dest_dir / candidate
        try:
            rename_noreplace(src, dst)
            return dst
        except FileExistsError:
            continue  # lost a race for that name: take the next
    raise AssertionError("unreachable")


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories; the rename itself is done
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file + fsync + rename (never a half-written report).

    The temp file has an unpredictable name and is created with ``O_EXCL|O_NOFOLLOW``: in a shared
    folder (failed/) someone could plant a link under a guessable name to make wodrop write through it.
    """
    for _ in range(100):
        tmp = path.with_name(fit_name(f".{path.name}", f".{secrets.token_hex(6)}.tmp"))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))
    try:
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def failure_report(
    work_order: str, stage: str, errors: list[dict[str, Any]], now: float | None = None
) -> dict[str, Any]:
    """The ``failed/<WO>.error.json`` document (README: "The work-order format" and failure reports)."""
    failed_at = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return {
        "work_order": work_order,
        "stage": stage,
        "failed_at": failed_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "errors": [
            {"code": e["code"], "file": e.get("file"), "message": e["message"]} for e in errors
        ],
    }


def check_same_filesystem(paths: dict[str, Path]) -> None:
    """Refuse to run when the folders wodrop renames between live on different filesystems."""
    devices: dict[int, list[str]] = {}
    for key, p in paths.items():
        devices.setdefault(os.stat(p).st_dev, []).append(f"{key} ({p})")
    if len(devices) > 1:
        groups = "; ".join(", ".join(v) for v in devices.values())
        raise NotSameFilesystem(
            f"these folders must be on one filesystem so that moves are atomic renames: {groups}"
        )
