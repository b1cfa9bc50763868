"""``wodrop retry WO… | --all``: move failed work orders back into the inbox for another try.

Order, so that a crash at any point loses nothing: (1) rename ``failed/<folder>`` to
``inbox/<id>`` with a no-clobber rename (never merged into or replacing a folder already there);
(2) only then remove wodrop's own report ``failed/<folder>.error.json``; (3) mark the DB row
``retried``. A crash after (1) leaves a report without a folder, which is harmless: later moves into
failed/ pick a name whose report slot is free too.

People rename a folder in failed/ to fix its id, and its report and DB row keep the old name. The
report records the folder's inode, which a rename keeps: a folder is matched with the report that
records its inode, under its own name or the one it left behind, and that report and that row are
settled with it. A report under the folder's new name that records another inode belongs to a folder
removed by hand: it is left alone (so is its row).
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import os
import re
from pathlib import Path
from typing import Any

from wodrop.cli import EXIT_FAILED, EXIT_OK, load_cli_config
from wodrop.fsops import REPORT_SUFFIX, fsync_dir, rename_noreplace, report_path
from wodrop.lifecycle import WorkOrderState
from wodrop.state import StateDB, StateError

# The collision suffix fsops adds in done/ and failed/: ``.<UTC yyyymmddTHHMMSS>`` then ``-2``, ``-3``...
_STAMP = re.compile(r"\.\d{8}T\d{6}(?:-\d+)?$")
_MAX_REPORT_BYTES = 16 * 2**20  # a report lists one folder's problems: far smaller


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def read_report(path: Path) -> dict[str, Any] | None:
    """A report's contents (never read through a link), or None when it cannot be read as one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            doc = json.loads(f.read(_MAX_REPORT_BYTES))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class FailedFolder:
    """``failed/`` as retry sees it: the report of each folder, also of one renamed in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._left_behind: dict[int, Path] | None = None

    def report_of(self, folder: Path) -> Path | None:
        """The folder's report: the one that records its inode (under its own name, or one it left
        under an old name), else the one its name gives (maybe missing) unless that one records another
        inode: then None, that report is another folder's (one removed by hand)."""
        own = report_path(folder)
        recorded = (read_report(own) or {}).get("folder_inode") if os.path.lexists(own) else None
        try:
            inode = os.lstat(folder).st_ino
        except OSError:  # gone meanwhile: the move will say so
            return own
        if recorded == inode:
            return own
        return self._reports_left_behind().pop(inode, None) or (own if recorded is None else None)

    def _reports_left_behind(self) -> dict[int, Path]:
        """Reports whose folder is gone from their name, by the folder inode they record (read once)."""
        if self._left_behind is None:
            self._left_behind = {}
            try:
                with os.scandir(self.path) as entries:
                    reports = [Path(e.path) for e in entries
                               if e.name.endswith(REPORT_SUFFIX) and e.is_file(follow_symlinks=False)]
            except OSError:
                reports = []  # failed/ cannot be listed: the folder is retried without its old report
            for path in reports:
                if os.path.lexists(path.with_name(path.name.removesuffix(REPORT_SUFFIX))):
                    continue  # its folder is still there under that name
                inode = (read_report(path) or {}).get("folder_inode")
                if isinstance(inode, int):
                    self._left_behind.setdefault(inode, path)
        return self._left_behind


def original_id(folder: Path, own_report: dict[str, Any] | None) -> str:
    """The id the folder goes back under: its own report's ``work_order`` (a name collision added a
    stamp to the folder's name), else its name minus such a stamp (a folder renamed in failed/ goes
    back under the name it was given)."""
    if own_report is not None and _plain_name(own_report.get("work_order")):
        return str(own_report["work_order"])
    return _STAMP.sub("", folder.name)


def _mark_retried(db: StateDB | None, name: str, report: Path, new: Path) -> None:
    """Mark the failed row of the folder whose report is ``report`` (this very folder, not another
    failure of the same id); its reasons are kept: the history says why it was retried. Rows are
    matched by name in failed/: the daemon may have written the path from a config elsewhere."""
    if db is None:
        return
    for row in db.work_orders(states=[WorkOrderState.FAILED], name=name, newest_first=True):
        if report_path(Path(row.path)).name == report.name:
            db.finish_work_order(row.id, WorkOrderState.RETRIED, new, stage=row.error_stage,
                                 errors=row.error_list or None)
            return


def retry_one(name: str, failed: FailedFolder, inbox: Path, db: StateDB | None) -> tuple[bool, str]:
    """Move one failed work order back; (moved, one line for the operator)."""
    src = failed.path / name
    if not _plain_name(name) or name.endswith(REPORT_SUFFIX) or not src.is_dir() or src.is_symlink():
        similar = sorted(p.name for p in failed.path.glob(f"{glob.escape(name)}.*") if p.is_dir()) \
            if _plain_name(name) else []
        hint = f" (did you mean {', '.join(similar)}?)" if similar else ""
        return False, f"{name}: no such work order folder in {failed.path}{hint}; not moved"
    report = failed.report_of(src)
    doc = read_report(report) if report is not None else None
    wo_id = original_id(src, doc if report == report_path(src) else None)
    dst = inbox / wo_id
    try:
        rename_noreplace(src, dst)
    except FileExistsError:
        return False, f"{name}: {inbox.name}/{wo_id} already exists; not moved"
    except OSError as e:
        why = "inbox is on another filesystem" if e.errno == errno.EXDEV else e.strerror
        return False, f"{name}: cannot move to {dst} ({why}); not moved"
    fsync_dir(inbox)
    fsync_dir(failed.path)
    if report is not None:  # None: the report under its name is another folder's, left alone
        report.unlink(missing_ok=True)
        failed_as = (doc or {}).get("work_order")  # the name the DB knows it by
        _mark_retried(db, failed_as if isinstance(failed_as, str) else wo_id, report, dst)
    return True, f"{name}: moved back to {dst}"


def run(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    failed, inbox = cfg.paths.failed, cfg.paths.inbox
    if not inbox.is_dir():
        print(f"wodrop retry: the inbox {inbox} does not exist; nothing moved")
        return EXIT_FAILED
    if args.all:
        names = sorted(
            p.name for p in (failed.iterdir() if failed.is_dir() else [])
            if not p.name.startswith(".") and not p.name.endswith(REPORT_SUFFIX) and p.is_dir()
        )
        if not names:
            print(f"no failed work orders in {failed}")
            return EXIT_OK
    else:
        names = list(dict.fromkeys(args.work_orders))
    db: StateDB | None = None
    if cfg.paths.db.exists():
        try:
            db = StateDB(cfg.paths.db)
        except StateError as e:
            print(f"wodrop retry: {e}; folders are moved but the state DB is not updated")
    ok, folder = True, FailedFolder(failed)
    try:
        for name in names:
            moved, line = retry_one(name, folder, inbox, db)
            ok &= moved
            print(line)
    finally:
        if db is not None:
            db.close()
    return EXIT_OK if ok else EXIT_FAILED
