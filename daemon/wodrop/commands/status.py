"""``wodrop status [--json]``: batches, progress and recent failures, read from the state DB.

The DB is opened read-only; in WAL mode a reader never waits for the daemon's writes, so this works
while the daemon runs. Without a DB there is simply nothing to show yet: that is not a failure.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any

from wodrop.cli import EXIT_FAILED, EXIT_OK, load_cli_config
from wodrop.logs import setup_logging
from wodrop.redact import redact
from wodrop.secrets import SecretError, resolve_api_key
from wodrop.state import StateDB, StateError
from wodrop.status.collect import collect_status, empty_status, platform_text
from wodrop.units import format_duration, format_size

#: the human output lists this many waiting folders (oldest first), then "… and K more"
WAITING_SHOWN = 20


def _clean(value: object) -> str:
    """Redacted, with control characters escaped: folder names must not drive the terminal."""
    text = redact("" if value is None else str(value))
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    return format_duration((datetime.now(UTC) - datetime.fromisoformat(ts)).total_seconds())


def _ago(ts: str | None) -> str:
    return f"{_age(ts)} ago" if ts else "-"


def _waiting(inbox: dict[str, Any] | None) -> list[str]:
    """The folders waiting in the inbox, oldest first: name, for how long, and why."""
    if inbox is None:
        return []  # no daemon has told us (no waiting list in the state folder)
    entries = (inbox.get("waiting") or [])[:WAITING_SHOWN]
    total = max(inbox.get("waiting_total") or 0, len(entries))
    as_of = f", as of {_ago(inbox['waiting_as_of'])}" if inbox.get("waiting_as_of") else ""
    if not total:
        return [f"Waiting in the inbox: none{as_of}", ""]
    lines = [f"Waiting in the inbox ({total}{as_of}):"]
    rows = [[_clean(w["name"]), _age(w["since"]), _clean(w["reason"])] for w in entries]
    lines += ["  " + r for r in _table(["FOLDER", "WAITING", "WHY"], rows)]
    if total > len(entries):
        lines.append(f"  … and {total - len(entries)} more")
    return [*lines, ""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def _sent(b: dict[str, Any]) -> str:
    if not b["bytes_total"]:
        return format_size(b["bytes_sent"]) if b["bytes_sent"] else "-"
    return f"{format_size(b['bytes_sent'])} / {format_size(b['bytes_total'])} ({b['percent']:.0f}%)"


def _destination(dest: dict[str, Any] | None) -> list[str]:
    """One line: where batches go (said loudly when it is not the platform)."""
    if dest is None:
        return []
    if dest["kind"] == "platform":
        return [f"Sends to: the platform at {_clean(dest['api_url'])}"]
    return [f"TEST MODE: nothing is sent to the platform (api.url is not set); batches go to the local "
            f"receiver, archives in {_clean(dest['store'])}"]


def _platform_errors(reported: list[dict[str, Any]]) -> list[str]:
    """Work orders the platform reported errors for after their upload (their done/<WO>.platform.json)."""
    if not reported:
        return []
    lines = ["Platform errors (after upload):"]
    for r in reported:
        lines.append(f"  {_clean(r['work_order'])}  batch {_clean(r['batch'] or '-')}  reported "
                     f"{_ago(r['reported_at'])}  ({_clean(r['report'] or 'no report written')})")
        for e in r["errors"]:
            where = f" [{_clean(e['file'])}]" if e["file"] else ""
            lines.append(f"    - {_clean(e['code'])}{where}: {_clean(e['message'])}")
    return [*lines, ""]


def render_text(status: dict[str, Any]) -> str:
    lines = [f"Health: {_clean(status['health']['reason'])}", *_destination(status["destination"]), ""]
    lines += _waiting(status["inbox"])
    if status["batches"]:
        lines.append("Batches (active first, then recent):")
        rows = [
            [_clean(b["state"]), _clean(b["name"]), _sent(b), str(b["work_orders"]),
             _ago(b["finished_at"] or b["updated_at"]), _clean(platform_text(b)),
             _clean(b["last_error"] or "-")]
            for b in status["batches"]
        ]
        header = ["STATE", "BATCH", "SENT", "WO", "UPDATED", "PLATFORM", "LAST ERROR"]
        lines += ["  " + r for r in _table(header, rows)]
    else:
        lines.append("Batches: none yet")
    lines.append("")
    if status["failures"]:
        lines.append("Recent failures:")
        for f in status["failures"]:
            lines.append(f"  {_clean(f['work_order'])}  {_clean(f['stage'])}  failed {_ago(f['failed_at'])}"
                         f"  ({_clean(f['path'])})")
            for e in f["errors"] or [{"code": "unknown", "file": None, "message": "no reason recorded"}]:
                where = f" [{_clean(e['file'])}]" if e["file"] else ""
                lines.append(f"    - {_clean(e['code'])}{where}: {_clean(e['message'])}")
    else:
        lines.append("Recent failures: none")
    lines.append("")
    lines += _platform_errors(status.get("platform_errors") or [])
    for title, key in (("Batches", "batches"), ("Work orders", "work_orders")):
        counts = status["counts"][key]
        text = ", ".join(f"{_clean(s)} {n}" for s, n in sorted(counts.items())) or "none"
        lines.append(f"{title} by state: {text}")
    lines.append(f"Failed today: {status['failed_today']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    setup_logging("warning")  # a warning (a loose key file) goes to stderr, never into the --json output
    try:  # known secrets get masked wherever they might have slipped into a stored message
        resolve_api_key(cfg)
    except SecretError:
        pass  # reading the key is not needed to show status
    path = cfg.paths.db
    if not path.exists():
        reason = f"no state yet: the daemon has not run with this config (state: {path})"
        empty = empty_status(reason, cfg)
        text = "\n".join([reason, *_destination(empty["destination"])])
        print(json.dumps(empty, indent=2) if args.json else text)
        return EXIT_OK
    try:
        with StateDB(path, readonly=True) as db:
            status = collect_status(db, cfg=cfg)
    except (StateError, sqlite3.Error) as e:
        print(f"wodrop status: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(status, indent=2, ensure_ascii=False) if args.json else render_text(status))
    return EXIT_OK
