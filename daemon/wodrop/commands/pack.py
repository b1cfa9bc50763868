"""``wodrop pack PATH... -o OUT.zip``: validate, then stream the valid work orders into one archive.

The archive is written under a temp name next to OUT.zip and renamed into place only when complete,
with a rename that refuses to replace anything: an existing OUT.zip (a user's file) is never touched.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from wodrop.archive import BatchArchiveWriter, SourceChanged
from wodrop.cli import EXIT_FAILED, EXIT_OK, UsageError, load_cli_config
from wodrop.commands.validate import already_sent, collect_work_orders, print_report, summary
from wodrop.fsops import fsync_dir, rename_noreplace
from wodrop.units import format_size
from wodrop.workorder import Issue, WorkOrderReport, validate_work_order
from wodrop.workorder.validate import display_name


def _exists_message(out: Path) -> str:
    return f"{out} already exists; wodrop never overwrites a file. Choose another name or move it away."


def run(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    out = Path(args.output)
    if os.path.lexists(out):
        raise UsageError(_exists_message(out))
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such folder for the archive")
    marker = cfg.watch.ready_marker
    reports: list[WorkOrderReport] = []
    packed_from: dict[str, Path] = {}
    sent = already_sent(cfg)
    for folder in collect_work_orders(args.paths, marker):
        report = validate_work_order(folder, cfg.format, ready_marker=marker, is_duplicate=sent)
        first = packed_from.get(report.id)
        if first is not None:
            report.errors.append(Issue(
                "duplicate_work_order", None,
                f"Another folder named {report.id} ({first}) is already going into this archive; an "
                "archive holds each work order once. Rename or remove one of them.",
            ))
        elif report.valid:
            packed_from[report.id] = folder
        reports.append(report)
    width = max((len(display_name(r.id)) for r in reports), default=0)
    for r in reports:
        print_report(r, width, sys.stdout)
    print(summary(reports) + ".")
    valid = [r for r in reports if r.valid]
    if not valid:
        print(f"Nothing to pack: no valid work orders. {out} was not written.", file=sys.stderr)
        return EXIT_FAILED
    packed = _pack(valid, out)
    return EXIT_OK if packed == len(reports) else EXIT_FAILED


def _pack(reports: list[WorkOrderReport], out: Path) -> int:
    """Write the archive; returns how many work orders went in (0: nothing written)."""
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
    writer = BatchArchiveWriter(tmp)
    packed = files = 0
    try:
        for r in reports:
            try:
                writer.add_work_order(r)
            except SourceChanged as e:
                print(f"{r.id}  SKIPPED: {e}. Pack it again once the copy has finished.", file=sys.stderr)
                continue
            packed += 1
            files += len(r.files)
        if not packed:
            writer.abort()
            print(f"Nothing packed. {out} was not written.", file=sys.stderr)
            return 0
        digest = writer.close()
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise UsageError(_exists_message(out)) from None
        fsync_dir(out.parent)
    except BaseException:
        writer.abort()
        raise
    print(f"Packed {packed} work order{'s' if packed != 1 else ''} ({files} files) into {out}: "
          f"{digest.size:,} bytes ({format_size(digest.size)})")
    print(f"sha256 {digest.sha256}")
    return packed
