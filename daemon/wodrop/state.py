"""The state DB: SQLite (WAL) on local disk, the daemon's memory across crashes.

It records what the filesystem cannot: which batch a work order went into, a batch's checksums, its
remote batch id and upload URL, and the last offset the server confirmed. The filesystem stays the
truth for *where* a folder is; the server stays the truth for *how much* was uploaded (the offset
here is a hint to avoid a status query's round trip being the only source).

Synchronous sqlite3 on purpose: every transaction is small (well under a millisecond on local disk),
so calling it from the event loop is cheaper than a thread hop, and ``wodrop status`` can read it
while the daemon writes (WAL readers never block the writer).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from wodrop.lifecycle import (
    SENT_WORK_ORDER_STATES,
    BatchState,
    FollowupState,
    IllegalTransition,
    Origin,
    WorkOrderState,
    batch_sources,
    followup_sources,
    work_order_sources,
)

SCHEMA_VERSION = 3

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE batches (
        id               INTEGER PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        origin           TEXT NOT NULL DEFAULT 'daemon',   -- daemon | cli
        state            TEXT NOT NULL,
        archive_path     TEXT NOT NULL,
        archive_mtime_ns INTEGER,                          -- cli: to recognise the same file on rerun
        size             INTEGER,
        sha256           TEXT,
        md5              TEXT,
        crc32c           TEXT,
        work_order_count INTEGER NOT NULL DEFAULT 0,
        seal_reason      TEXT,                             -- size | count | age | single | duplicate
        remote_batch_id  TEXT,
        upload_url       TEXT,                             -- secret: never shown, never logged
        committed_offset INTEGER NOT NULL DEFAULT 0,
        attempts         INTEGER NOT NULL DEFAULT 0,
        sessions         INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        created_at       REAL NOT NULL,
        sealed_at        REAL,
        upload_started_at REAL,
        uploaded_at      REAL,
        finished_at      REAL,
        updated_at       REAL NOT NULL
    );
    CREATE INDEX batches_state ON batches(state);
    CREATE TABLE work_orders (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL,
        state        TEXT NOT NULL,
        batch_id     INTEGER REFERENCES batches(id),
        path         TEXT NOT NULL,                        -- where the folder is now
        dest         TEXT,                                 -- where a move in progress is taking it
        bytes        INTEGER NOT NULL DEFAULT 0,
        files        INTEGER NOT NULL DEFAULT 0,
        error_stage  TEXT,
        errors       TEXT,                                 -- JSON list of {code, file, message}
        claimed_at   REAL NOT NULL,
        finished_at  REAL,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX work_orders_state ON work_orders(state);
    CREATE INDEX work_orders_batch ON work_orders(batch_id);
    CREATE INDEX work_orders_name ON work_orders(name);
    """,
    2: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE INDEX batches_origin ON batches(origin, state);
    """,
    # Follow-up of the platform's processing. Batches uploaded before it stay NULL: not followed.
    3: """
    ALTER TABLE batches ADD COLUMN followup TEXT;          -- following | done | failed | timeout | lost
    ALTER TABLE batches ADD COLUMN followup_next_at REAL;  -- unix time of the next poll
    ALTER TABLE batches ADD COLUMN followup_polls INTEGER NOT NULL DEFAULT 0;  -- since the status changed
    ALTER TABLE batches ADD COLUMN followup_misses INTEGER NOT NULL DEFAULT 0; -- 404s in a row
    ALTER TABLE batches ADD COLUMN followup_error TEXT;    -- why the last poll failed
    ALTER TABLE batches ADD COLUMN platform_status TEXT;   -- the platform's last status, as it wrote it
    ALTER TABLE batches ADD COLUMN platform_status_at REAL; -- when that status was first seen
    ALTER TABLE batches ADD COLUMN platform_message TEXT;  -- the platform's errors about the whole batch
    ALTER TABLE batches ADD COLUMN platform_errors INTEGER NOT NULL DEFAULT 0;  -- error entries it listed
    CREATE INDEX batches_followup ON batches(followup, followup_next_at);
    ALTER TABLE work_orders ADD COLUMN platform_errors TEXT;  -- JSON list of {code, file, message}
    ALTER TABLE work_orders ADD COLUMN platform_report TEXT;  -- its done/<WO>.platform.json (ours)
    ALTER TABLE work_orders ADD COLUMN platform_at REAL;
    CREATE INDEX work_orders_platform ON work_orders(platform_at);
    """,
}


@dataclass(frozen=True)
class BatchRow:
    id: int
    name: str
    origin: str
    state: str
    archive_path: str
    archive_mtime_ns: int | None
    size: int | None
    sha256: str | None
    md5: str | None
    crc32c: str | None
    work_order_count: int
    seal_reason: str | None
    remote_batch_id: str | None
    upload_url: str | None
    committed_offset: int
    attempts: int
    sessions: int
    last_error: str | None
    created_at: float
    sealed_at: float | None
    upload_started_at: float | None
    uploaded_at: float | None
    finished_at: float | None
    updated_at: float
    # schema 3 (defaults: what a reader of an older DB sees)
    followup: str | None = None
    followup_next_at: float | None = None
    followup_polls: int = 0
    followup_misses: int = 0
    followup_error: str | None = None
    platform_status: str | None = None
    platform_status_at: float | None = None
    platform_message: str | None = None
    platform_errors: int = 0


@dataclass(frozen=True)
class WorkOrderRow:
    id: int
    name: str
    state: str
    batch_id: int | None
    path: str
    dest: str | None
    bytes: int
    files: int
    error_stage: str | None
    errors: str | None
    claimed_at: float
    finished_at: float | None
    updated_at: float
    # schema 3
    platform_errors: str | None = None
    platform_report: str | None = None
    platform_at: float | None = None

    @property
    def error_list(self) -> list[dict[str, Any]]:
        return json.loads(self.errors) if self.errors else []

    @property
    def platform_error_list(self) -> list[dict[str, Any]]:
        return json.loads(self.platform_errors) if self.platform_errors else []


_Row = TypeVar("_Row", BatchRow, WorkOrderRow)


def _rows(cls: type[_Row], cur: sqlite3.Cursor) -> list[_Row]:
    """Rows as ``cls``; a column an older schema lacks (``wodrop status`` reading the DB of a daemon not
    restarted since the upgrade: read-only, not migrated) keeps the field's default."""
    have = {d[0] for d in cur.description or ()}
    names = [f.name for f in fields(cls) if f.name in have]
    return [cls(**{n: r[n] for n in names}) for r in cur.fetchall()]


class StateError(Exception):
    """The DB cannot be opened, is damaged, read-only, or from a newer wodrop (message for a person)."""


def _placeholders(values: Iterable[object]) -> tuple[str, list[object]]:
    vals = list(values)
    return ",".join("?" * len(vals)), vals


def _create_private(path: Path) -> None:
    """The DB holds upload URLs (bearer capabilities): create it 0600 whatever the umask (SQLite gives
    its -wal and -shm files the same mode)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class StateDB:
    """One connection per process; methods are short transactions."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        #: True when this open created the DB file (recovery warns when it finds work to adopt)
        self.created = False
        if readonly:
            if not path.exists():
                raise StateError(f"{path}: no state DB yet (has the daemon or an upload run here?)")
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not path.exists()
            try:
                _create_private(path)
            except OSError as e:
                raise StateError(f"{path}: cannot create the state DB ({e.strerror})") from None
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                # NORMAL: in WAL mode every commit survives a process crash; the transitions that
                # guard against a double upload also survive power loss (``durable=True``: FULL).
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
            else:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StateError(f"{path}: written by a newer wodrop (schema {version})")
            #: the schema in use: a read-only open of an older daemon's DB is not migrated
            self.schema: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StateError(f"{path}: cannot use state DB ({e})") from None

    def check(self) -> None:
        """Start-up check: the DB is intact (``PRAGMA quick_check``) and writable. Raises StateError
        with what to do, so the daemon refuses to start rather than crash later with folders half-moved."""
        hint = (f"stop wodrop, move {self.path.name} (and its -wal/-shm files) aside, and start again: "
                "wodrop rebuilds its state from processing/, and the delivered-ids ledger under done/ "
                "keeps it from uploading anything twice")
        try:
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as e:
            raise StateError(f"{self.path}: the state DB is damaged ({e}); {hint}") from None
        if problems != ["ok"]:
            raise StateError(f"{self.path}: the state DB is damaged ({'; '.join(problems)}); {hint}")
        try:
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('checked_at', ?)",
                           (str(time.time()),))
        except sqlite3.DatabaseError as e:
            raise StateError(f"{self.path}: the state DB is not writable ({e}); check the file's owner "
                             "and mode, and that its folder is writable (SQLite writes -wal/-shm files next "
                             "to it)") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """``durable``: fsync the WAL at commit (session persisted, sealed, uploaded, finished)."""
        if durable:
            self._db.execute("PRAGMA synchronous = FULL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous = NORMAL")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(f"{self.path}: written by a newer wodrop (schema {version}); upgrade wodrop")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction() as db:
                for stmt in _MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {v}")

    def ok(self) -> bool:
        """For readiness: the DB answers a query."""
        try:
            self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def instance_id(self) -> str:
        """This state folder's instance name (its ledger file under done/ is named after it)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        if row is not None:
            return str(row[0])
        with self.transaction(durable=True) as db:
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('instance', ?)",
                       (uuid.uuid4().hex[:12],))
        return str(self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0])

    # ---- the one place states change --------------------------------------------------------------

    @staticmethod
    def _move(db: sqlite3.Connection, table: str, row_id: int, to: BatchState | WorkOrderState,
              sources: frozenset[Any], values: dict[str, Any]) -> None:
        """``UPDATE table SET state = to, ... WHERE id = ? AND state IN (sources)``; raises
        IllegalTransition when the row is not in an allowed from-state."""
        values = {"state": str(to), **values, "updated_at": time.time()}
        cols = ", ".join(f"{k} = ?" for k in values)
        marks, src = _placeholders(str(s) for s in sorted(sources))
        cur = db.execute(f"UPDATE {table} SET {cols} WHERE id = ? AND state IN ({marks})",
                         (*values.values(), row_id, *src))
        if cur.rowcount != 1:
            now = db.execute(f"SELECT state FROM {table} WHERE id = ?", (row_id,)).fetchone()
            what = "no such row" if now is None else f"it is {now[0]}"
            allowed = ", ".join(sorted(str(s) for s in sources))
            raise IllegalTransition(f"{table} {row_id}: cannot move to {to} ({what}; allowed from {allowed})")

    def _batch_to(self, batch_id: int, to: BatchState, *, durable: bool = False, **values: Any) -> None:
        with self.transaction(durable=durable) as db:
            self._move(db, "batches", batch_id, to, batch_sources(to), values)

    def _work_order_to(self, wo_id: int, to: WorkOrderState, **values: Any) -> None:
        with self.transaction() as db:
            self._move(db, "work_orders", wo_id, to, work_order_sources(to), values)

    # ---- batches -------------------------------------------------------------------------------

    def create_batch(
        self, name: str, archive_path: Path, *, origin: Origin = Origin.DAEMON,
        state: BatchState = BatchState.OPEN, size: int | None = None, archive_mtime_ns: int | None = None,
    ) -> int:
        if state not in (BatchState.OPEN, BatchState.SEALED):
            raise IllegalTransition(f"a batch starts open or sealed, not {state}")
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO batches(name, origin, state, archive_path, archive_mtime_ns, size,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (name, str(origin), str(state), str(archive_path), archive_mtime_ns, size, now, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def _set_batch(self, batch_id: int, where: tuple[BatchState, ...], **values: Any) -> None:
        """Update a batch's fields (no state change) while it is in one of the ``where`` states."""
        values["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in values)
        marks, states = _placeholders(str(s) for s in where)
        with self.transaction() as db:
            cur = db.execute(f"UPDATE batches SET {cols} WHERE id = ? AND state IN ({marks})",
                             (*values.values(), batch_id, *states))
            if cur.rowcount != 1:
                now = "/".join(str(s) for s in where)
                raise IllegalTransition(f"batches {batch_id}: not {now}; {', '.join(values)} not set")

    def batch(self, batch_id: int) -> BatchRow:
        rows = _rows(BatchRow, self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)))
        if not rows:
            raise KeyError(batch_id)
        return rows[0]

    def batches(self, states: Iterable[BatchState] | None = None, *, origin: Origin | None = None,
                limit: int | None = None) -> list[BatchRow]:
        """Batches in ``states`` (all when None), of one ``origin`` (all when None)."""
        sql, args, where = "SELECT * FROM batches", list[object](), list[str]()
        if states is not None:
            marks, vals = _placeholders(str(s) for s in states)
            where.append(f"state IN ({marks})")
            args.extend(vals)
        if origin is not None:
            where.append("origin = ?")
            args.append(str(origin))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC" if limit else " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return _rows(BatchRow, self._db.execute(sql, args))

    def find_cli_batch(self, archive_path: Path, size: int, mtime_ns: int,
                       states: Iterable[BatchState]) -> BatchRow | None:
        """The newest one-shot upload of this very file (same path, size and mtime) in ``states``."""
        marks, vals = _placeholders(str(s) for s in states)
        rows = _rows(
            BatchRow,
            self._db.execute(
                f"SELECT * FROM batches WHERE origin = ? AND archive_path = ? AND size = ?"
                f" AND archive_mtime_ns = ? AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
                (str(Origin.CLI), str(archive_path), size, mtime_ns, *vals),
            ),
        )
        return rows[0] if rows else None

    def seal_batch(
        self, batch_id: int, *, size: int, sha256: str, md5: str | None, crc32c: str | None,
        work_order_count: int, seal_reason: str,
    ) -> None:
        self._batch_to(
            batch_id, BatchState.SEALED, durable=True, size=size, sha256=sha256, md5=md5, crc32c=crc32c,
            work_order_count=work_order_count, seal_reason=seal_reason, sealed_at=time.time(),
        )

    def set_session(self, batch_id: int, remote_batch_id: str | None, upload_url: str) -> None:
        """Persist a new upload session *before* the first PUT (a crash then resumes it)."""
        now = time.time()
        with self.transaction(durable=True) as db:
            upload_started_at = db.execute("SELECT COALESCE(upload_started_at, ?) FROM batches WHERE id = ?",
                                           (now, batch_id)).fetchone()
            self._move(db, "batches", batch_id, BatchState.UPLOADING, batch_sources(BatchState.UPLOADING), {
                "remote_batch_id": remote_batch_id, "upload_url": upload_url, "committed_offset": 0,
                "upload_started_at": upload_started_at[0] if upload_started_at else now,
            })
            db.execute("UPDATE batches SET sessions = sessions + 1 WHERE id = ?", (batch_id,))

    def clear_session(self, batch_id: int, reason: str) -> None:
        """The session expired (404/410): back to ``sealed`` so a new one is created from byte 0."""
        self._batch_to(batch_id, BatchState.SEALED, durable=True, remote_batch_id=None, upload_url=None,
                       committed_offset=0, last_error=reason)

    def set_digest(self, batch_id: int, *, md5: str | None, crc32c: str) -> None:
        """Cache checksums hashed outside the batcher (``wodrop upload``), so a resume need not re-hash."""
        self._set_batch(batch_id, (BatchState.SEALED, BatchState.UPLOADING), md5=md5, crc32c=crc32c)

    def set_offset(self, batch_id: int, offset: int) -> None:
        self._set_batch(batch_id, (BatchState.UPLOADING,), committed_offset=offset)

    def record_error(self, batch_id: int, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET attempts = attempts + 1, last_error = ?, updated_at = ? WHERE id = ?",
                (error, time.time(), batch_id),
            )

    def mark_uploaded(self, batch_id: int, size: int, *, follow_at: float | None = None) -> None:
        """The server holds every byte. ``follow_at``: start the follow-up (first poll at that unix
        time) in the same transaction, so a crash cannot leave an uploaded batch unfollowed."""
        follow = {"followup": str(FollowupState.FOLLOWING), "followup_next_at": follow_at,
                  "followup_polls": 0, "followup_misses": 0} if follow_at is not None else {}
        self._batch_to(batch_id, BatchState.UPLOADED, durable=True, committed_offset=size,
                       uploaded_at=time.time(), last_error=None, **follow)

    def finish_batch(self, batch_id: int, state: BatchState, error: str | None = None) -> None:
        """``done`` (every work order moved) or ``failed`` (refused for good)."""
        if state not in (BatchState.DONE, BatchState.FAILED):
            raise IllegalTransition(f"finish_batch: {state} is not a final outcome (use discard_batch)")
        self._batch_to(batch_id, state, durable=True, finished_at=time.time(),
                       **({"last_error": error} if error else {}))

    def discard_batch(self, batch_id: int, why: str) -> list[int]:
        """Drop a batch whose archive is partial, damaged or lost, and hand its work orders back to
        ``claimed`` to be packed again: one transaction, so a crash can never leave them ``batched``
        in a dead batch (stranded, and counted as sent). Returns their ids. The caller removes the
        archive *after* this commits (a crash in between leaves an orphan that recovery removes)."""
        now = time.time()
        with self.transaction(durable=True) as db:
            self._move(db, "batches", batch_id, BatchState.DISCARDED, batch_sources(BatchState.DISCARDED),
                       {"finished_at": now, "last_error": why})
            ids = [r[0] for r in db.execute(
                "SELECT id FROM work_orders WHERE batch_id = ? AND state = ?",
                (batch_id, str(WorkOrderState.BATCHED)))]
            for wo_id in ids:
                self._move(db, "work_orders", wo_id, WorkOrderState.CLAIMED,
                           work_order_sources(WorkOrderState.CLAIMED), {"batch_id": None})
        return ids

    # ---- follow-up of the platform's processing ----------------------------------------------------

    _FOLLOWED = "origin = 'daemon' AND state = 'done' AND followup = 'following'"

    def followups_due(self, now: float, limit: int = 100) -> list[BatchRow]:
        """Daemon batches being followed (moves finished) whose next poll is due, most overdue first."""
        return _rows(BatchRow, self._db.execute(
            f"SELECT * FROM batches WHERE {self._FOLLOWED} AND COALESCE(followup_next_at, 0) <= ?"
            " ORDER BY followup_next_at, id LIMIT ?", (now, int(limit))))

    def next_followup_at(self) -> float | None:
        """Unix time of the next poll due (None: nothing is followed)."""
        row = self._db.execute(
            f"SELECT MIN(COALESCE(followup_next_at, 0)) FROM batches WHERE {self._FOLLOWED}").fetchone()
        return None if row[0] is None else float(row[0])

    def followup_polled(self, batch_id: int, *, next_at: float, status: str | None = None,
                        error: str | None = None, missed: bool = False) -> None:
        """One poll of a followed batch: the status it read (None: the poll failed, ``error`` says why;
        ``missed``: the platform answered 404) and when to poll next. A new status resets the backoff."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE batches SET"
                " platform_status_at = CASE WHEN ?1 IS NOT NULL AND platform_status IS NOT ?1 THEN ?2"
                "   ELSE platform_status_at END,"
                " followup_polls = CASE WHEN ?1 IS NOT NULL AND platform_status IS NOT ?1 THEN 0"
                "   ELSE followup_polls + 1 END,"
                " platform_status = COALESCE(?1, platform_status),"
                " followup_misses = CASE WHEN ?3 THEN followup_misses + 1 ELSE 0 END,"
                " followup_error = ?4, followup_next_at = ?5, updated_at = ?2"
                " WHERE id = ?6 AND followup = ?7",
                (status, now, missed, error, next_at, batch_id, str(FollowupState.FOLLOWING)))
            if cur.rowcount != 1:
                raise IllegalTransition(f"batches {batch_id}: not being followed; poll not recorded")

    def end_followup(self, batch_id: int, outcome: FollowupState, *, status: str | None = None,
                     message: str | None = None, errors: int | None = None,
                     poll_error: str | None = None) -> None:
        """The follow-up's outcome (``status``: the platform's final one, when it gave one).
        ``poll_error``: why the last poll failed, when it did (else it is cleared: the last poll read)."""
        if outcome == FollowupState.FOLLOWING:
            raise IllegalTransition("end_followup: following is not an outcome")
        now = time.time()
        marks, src = _placeholders(str(s) for s in sorted(followup_sources(outcome)))
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE batches SET followup = ?1, followup_next_at = NULL, followup_error = ?7,"
                " platform_status_at = CASE WHEN ?2 IS NOT NULL AND platform_status IS NOT ?2 THEN ?3"
                "   ELSE COALESCE(platform_status_at, ?3) END,"
                " platform_status = COALESCE(?2, platform_status),"
                " platform_message = COALESCE(?4, platform_message),"
                " platform_errors = COALESCE(?5, platform_errors), updated_at = ?3"
                f" WHERE id = ?6 AND followup IN ({marks})",
                (str(outcome), status, now, message, errors, batch_id, poll_error, *src))
            if cur.rowcount != 1:
                now_row = db.execute("SELECT followup FROM batches WHERE id = ?", (batch_id,)).fetchone()
                what = "no such row" if now_row is None else f"it is {now_row[0]}"
                raise IllegalTransition(f"batches {batch_id}: follow-up cannot end {outcome} ({what})")

    def followup_counts(self) -> dict[str, int]:
        """Followed batches by follow-up state (``following`` and the outcomes)."""
        if self.schema < 3:
            return {}
        return {str(s): int(n) for s, n in self._db.execute(
            "SELECT followup, COUNT(*) FROM batches WHERE followup IS NOT NULL GROUP BY followup")}

    def count_platform_failed_since(self, since: float) -> int:
        """Batches the platform failed as a whole whose verdict came at or after unix time ``since``."""
        if self.schema < 3:
            return 0
        row = self._db.execute("SELECT COUNT(*) FROM batches WHERE followup = ? AND platform_status_at >= ?",
                               (str(FollowupState.FAILED), since)).fetchone()
        return int(row[0])

    def record_platform_errors(self, wo_id: int, errors: list[dict[str, Any]], report: Path) -> None:
        """What the platform reported about a delivered work order, and the report file that says it
        (recorded *before* the file is written: a file at that path is then known to be ours)."""
        with self.transaction() as db:
            db.execute("UPDATE work_orders SET platform_errors = ?, platform_report = ?, platform_at = ?"
                       " WHERE id = ?", (json.dumps(errors), str(report), time.time(), wo_id))

    def platform_reported(self, *, limit: int | None = None,
                          since: float | None = None) -> list[WorkOrderRow]:
        """Work orders the platform reported errors for, newest first."""
        if self.schema < 3:
            return []
        sql, args = "SELECT * FROM work_orders WHERE platform_at IS NOT NULL", list[object]()
        if since is not None:
            sql += " AND platform_at >= ?"
            args.append(since)
        sql += " ORDER BY platform_at DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return _rows(WorkOrderRow, self._db.execute(sql, args))

    def count_platform_reported_since(self, since: float) -> int:
        if self.schema < 3:
            return 0
        row = self._db.execute("SELECT COUNT(*) FROM work_orders WHERE platform_at >= ?", (since,)).fetchone()
        return int(row[0])

    # ---- work orders ---------------------------------------------------------------------------

    def add_work_order(self, name: str, path: Path) -> int:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO work_orders(name, state, path, claimed_at, updated_at) VALUES (?,?,?,?,?)",
                (name, str(WorkOrderState.CLAIMED), str(path), now, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def work_order(self, wo_id: int) -> WorkOrderRow:
        rows = _rows(WorkOrderRow, self._db.execute("SELECT * FROM work_orders WHERE id = ?", (wo_id,)))
        if not rows:
            raise KeyError(wo_id)
        return rows[0]

    def work_orders(
        self, *, states: Iterable[WorkOrderState] | None = None, batch_id: int | None = None,
        name: str | None = None, limit: int | None = None, newest_first: bool = False,
    ) -> list[WorkOrderRow]:
        where: list[str] = []
        args: list[object] = []
        if states is not None:
            marks, vals = _placeholders(str(s) for s in states)
            where.append(f"state IN ({marks})")
            args.extend(vals)
        if batch_id is not None:
            where.append("batch_id = ?")
            args.append(batch_id)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        sql = "SELECT * FROM work_orders" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY " + ("COALESCE(finished_at, updated_at) DESC, id DESC" if newest_first else "id")
        if limit:
            sql += f" LIMIT {int(limit)}"
        return _rows(WorkOrderRow, self._db.execute(sql, args))

    def assign_to_batch(self, wo_id: int, batch_id: int, nbytes: int, nfiles: int) -> None:
        with self.transaction() as db:
            self._move(db, "work_orders", wo_id, WorkOrderState.BATCHED,
                       work_order_sources(WorkOrderState.BATCHED),
                       {"batch_id": batch_id, "bytes": nbytes, "files": nfiles})
            cur = db.execute(
                "UPDATE batches SET work_order_count = work_order_count + 1, updated_at = ?"
                " WHERE id = ? AND state = ?", (time.time(), batch_id, str(BatchState.OPEN)))
            if cur.rowcount != 1:
                raise IllegalTransition(f"batches {batch_id}: not open; cannot take work order {wo_id}")

    def plan_move(self, wo_id: int, dest: Path) -> None:
        """Record where a folder is about to be renamed to, so recovery can tell a done move from a
        pending one after a crash between the rename and :meth:`finish_work_order`."""
        with self.transaction() as db:
            db.execute("UPDATE work_orders SET dest = ?, updated_at = ? WHERE id = ?",
                       (str(dest), time.time(), wo_id))

    def finish_work_order(
        self, wo_id: int, state: WorkOrderState, path: Path, *, stage: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        if state not in (WorkOrderState.DONE, WorkOrderState.FAILED, WorkOrderState.RETRIED):
            raise IllegalTransition(f"finish_work_order: {state} is not a final outcome")
        self._work_order_to(wo_id, state, path=str(path), dest=None, error_stage=stage,
                            errors=json.dumps(errors) if errors else None, finished_at=time.time())

    def is_duplicate(self, name: str, exclude_id: int | None = None) -> bool:
        """True when another work order of this id is in an archive or already uploaded (so a second
        copy dropped while the first is in flight is caught too)."""
        marks, vals = _placeholders(str(s) for s in SENT_WORK_ORDER_STATES)
        row = self._db.execute(
            f"SELECT 1 FROM work_orders WHERE name = ? AND id != ? AND state IN ({marks}) LIMIT 1",
            (name, -1 if exclude_id is None else exclude_id, *vals),
        ).fetchone()
        return row is not None

    def last_uploaded_at(self) -> float | None:
        """Unix time the server last confirmed a whole batch (the metric survives restarts)."""
        row = self._db.execute("SELECT MAX(uploaded_at) FROM batches").fetchone()
        return None if row[0] is None else float(row[0])

    def count_finished_since(self, state: WorkOrderState, since: float) -> int:
        """Work orders that reached ``state`` at or after unix time ``since`` ("failed today")."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM work_orders WHERE state = ? AND finished_at >= ?", (str(state), since)
        ).fetchone()
        return int(row[0])

    def hourly_activity(self, since: float, hours: int) -> dict[str, list[int]]:
        """The status page's chart: for each of ``hours`` hours from unix time ``since``, the bytes
        (``uploaded_bytes``) and batches (``batches_uploaded``) the server confirmed, the work orders
        delivered (``work_orders_done``) and those now in failed/ (``work_orders_failed``, by when they
        failed). A time after the last hour (the clock was set back) counts in the last hour. Cheap
        without an index on the times: delivered work orders are found through the few batches
        finished since then or still moving folders."""
        keys = ("uploaded_bytes", "batches_uploaded", "work_orders_done", "work_orders_failed")
        out = {key: [0] * hours for key in keys}
        hour = "MIN(CAST(({t} - :since) / 3600 AS INTEGER), :last) AS h"
        args = {"since": since, "last": hours - 1, "uploaded": str(BatchState.UPLOADED),
                "done": str(WorkOrderState.DONE), "failed": str(WorkOrderState.FAILED)}
        queries = {
            ("batches_uploaded", "uploaded_bytes"):
                f"SELECT {hour.format(t='uploaded_at')}, COUNT(*), SUM(COALESCE(size, committed_offset))"
                " FROM batches WHERE uploaded_at >= :since GROUP BY h",
            # CROSS JOIN keeps batches the outer loop: never a scan of every work order ever delivered
            ("work_orders_done",):
                f"SELECT {hour.format(t='w.finished_at')}, COUNT(*) FROM batches b CROSS JOIN work_orders w"
                " ON w.batch_id = b.id WHERE (b.finished_at >= :since OR b.state = :uploaded)"
                " AND w.state = :done AND w.finished_at >= :since GROUP BY h",
            ("work_orders_failed",):
                f"SELECT {hour.format(t='finished_at')}, COUNT(*) FROM work_orders"
                " WHERE state = :failed AND finished_at >= :since GROUP BY h",
        }
        for columns, sql in queries.items():
            for h, *values in self._db.execute(sql, args):
                for key, value in zip(columns, values, strict=True):
                    out[key][h] = int(value or 0)
        return out

    def any_claimed(self) -> bool:
        """Some work order is claimed but in no archive yet (being validated or packed, or parked)."""
        row = self._db.execute("SELECT 1 FROM work_orders WHERE state = ? LIMIT 1",
                               (str(WorkOrderState.CLAIMED),)).fetchone()
        return row is not None

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"work_orders": {state: n}, "batches": {state: n}}`` for status and metrics."""
        out: dict[str, dict[str, int]] = {"work_orders": {}, "batches": {}}
        for table in ("work_orders", "batches"):
            for state, n in self._db.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"):
                out[table][state] = n
        return out
