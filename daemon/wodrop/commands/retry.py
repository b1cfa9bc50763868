"""``wodrop retry WO… | --all``: move failed work orders back into the inbox for another try.

Order, so that a crash at any point loses nothing: (1) rename ``failed/<folder>`` to
``inbox/<id>`` with a no-clobber rename (never merged into or replacing a folder already there);
(2) only then remove wodrop's own report ``failed/<folder>.error.json``; (3) mark the DB row
``retried``. A crash after (1) leaves a report without a folder, which is harmless: later moves into
failed/ pick a name whose report slot is free too.
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import re
from pathlib import Path

from wodrop.cli import EXIT_FAILED, EXIT_OK, load_cli_config
from wodrop.fsops import REPORT_SUFFIX, fsync_dir, rename_noreplace, report_path
from wodrop.lifecycle import WorkOrderState
from wodrop.state import StateDB, StateError

# The collision suffix fsops adds in done/ and failed/: ``.<UTC yyyymmddTHHMMSS>`` then ``-2``, ``-3``...
_STAMP = re.compile(r"\.\d{8}T\d{6}(?:-\d+)?$")


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def original_id(folder: Path) -> str:
    """The id the folder had in the inbox: the report's ``work_order``, else the name minus a stamp."""
    try:
        wo = json.loads(report_path(folder).read_text(encoding="utf-8"))
        if isinstance(wo, dict) and _plain_name(wo.get("work_order")):
            return str(wo["work_order"])
    except (OSError, ValueError):
        pass
    return _STAMP.sub("", folder.name)


def _mark_retried(db: StateDB | None, wo_id: str, old: Path, new: Path) -> None:
    if db is None:
        return
    rows = db.work_orders(states=[WorkOrderState.FAILED], name=wo_id, newest_first=True)
    row = next((r for r in rows if Path(r.path).name == old.name), rows[0] if rows else None)
    if row is not None:  # keep the reasons: the history says why it was retried
        db.finish_work_order(row.id, WorkOrderState.RETRIED, new, stage=row.error_stage,
                             errors=row.error_list or None)


def retry_one(name: str, failed: Path, inbox: Path, db: StateDB | None) -> tuple[bool, str]:
    """Move one failed work order back; (moved, one line for the operator)."""
    src = failed / name
    if not _plain_name(name) or name.endswith(REPORT_SUFFIX) or not src.is_dir() or src.is_symlink():
        similar = sorted(p.name for p in failed.glob(f"{glob.escape(name)}.*") if p.is_dir()) \
            if _plain_name(name) else []
        hint = f" (did you mean {', '.join(similar)}?)" if similar else ""
        return False, f"{name}: no such work order folder in {failed}{hint}; not moved"
    wo_id = original_id(src)
    dst = inbox / wo_id
    try:
        rename_noreplace(src, dst)
    except FileExistsError:
        return False, f"{name}: {inbox.name}/{wo_id} already exists; not moved"
    except OSError as e:
        why = "inbox is on another filesystem" if e.errno == errno.EXDEV else e.strerror
        return False, f"{name}: cannot move to {dst} ({why}); not moved"
    fsync_dir(inbox)
    fsync_dir(failed)
    report_path(failed / name).unlink(missing_ok=True)
    _mark_retried(db, wo_id, src, dst)
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
    ok = True
    try:
        for name in names:
            moved, line = retry_one(name, failed, inbox, db)
            ok &= moved
            print(line)
    finally:
        if db is not None:
            db.close()
    return EXIT_OK if ok else EXIT_FAILED
