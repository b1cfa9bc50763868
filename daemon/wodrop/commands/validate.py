"""``wodrop validate PATH... [--json]``: check work-order folders, say what to fix, show the order."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from wodrop.cli import EXIT_FAILED, EXIT_OK, UsageError, load_cli_config
from wodrop.config import Config
from wodrop.state import StateDB, StateError
from wodrop.workorder import WorkOrderReport, find_work_orders, validate_work_order
from wodrop.workorder.validate import display_name

SHOWN_FILES = 8  # the full processing order is in --json


def already_sent(cfg: Config) -> Callable[[str], bool] | None:
    """With ``format.on_duplicate: reject``, the state DB (when this config has one) says which ids
    were already sent, so a person checking a folder by hand hears it before dropping it."""
    if cfg.format.on_duplicate != "reject" or not cfg.paths.db.exists():
        return None
    try:
        db = StateDB(cfg.paths.db, readonly=True)
    except StateError:
        return None
    return db.is_duplicate


def collect_work_orders(paths: Sequence[str], ready_marker: str | None) -> list[Path]:
    """The work-order folders named by the command's PATHs; UsageError for a PATH that isn't a folder."""
    folders: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            what = "no such folder" if not path.exists() else "not a folder"
            raise UsageError(f"{raw}: {what} (give a work-order folder, or a folder of them)")
        try:
            found = find_work_orders(path, ready_marker)
        except OSError as e:
            raise UsageError(f"{raw}: cannot read this folder ({e.strerror})") from None
        if not found:
            print(f"{raw}: no work-order folders in it", file=sys.stderr)
        folders += found
    return folders


def print_report(report: WorkOrderReport, width: int, out: TextIO) -> None:
    """``WO_1  OK  (5 files: ...)`` or ``WO_2  INVALID`` and one indented sentence per problem."""
    wo = display_name(report.id).ljust(width)
    if report.valid:
        names = [f.name for f in report.files]
        shown = ", ".join(names[:SHOWN_FILES]) + (f", ... {len(names) - SHOWN_FILES} more"
                                                  if len(names) > SHOWN_FILES else "")
        print(f"{wo}  OK  ({len(names)} file{'s' if len(names) != 1 else ''}: {shown})", file=out)
        return
    print(f"{wo}  INVALID", file=out)
    for issue in report.errors:
        print(f"    - {issue.message}  [{issue.code}]", file=out)


def summary(reports: Sequence[WorkOrderReport]) -> str:
    bad = sum(not r.valid for r in reports)
    n = len(reports)
    return f"{n} work order{'s' if n != 1 else ''}: {n - bad} OK, {bad} invalid"


def run(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    marker = cfg.watch.ready_marker
    folders = collect_work_orders(args.paths, marker)
    sent = already_sent(cfg)
    reports = [validate_work_order(f, cfg.format, ready_marker=marker, is_duplicate=sent) for f in folders]
    if args.json:
        doc = {"work_orders": [r.to_dict() for r in reports]}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        width = max((len(display_name(r.id)) for r in reports), default=0)
        for r in reports:
            print_report(r, width, sys.stdout)
        print(summary(reports) + ".")
    return EXIT_OK if reports and all(r.valid for r in reports) else EXIT_FAILED
