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
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

SCHEMA_VERSION = 1

# Batch states, in life order. ``open``: archive being written; ``sealed``: complete, no session yet;
# ``uploading``: remote session persisted; ``uploaded``: server confirmed every byte, folder moves
# pending; ``done``/``failed``: final; ``discarded``: an open archive dropped at recovery (rebuilt).
BATCH_STATES = ("open", "sealed", "uploading", "uploaded", "done", "failed", "discarded")
ACTIVE_BATCH_STATES = ("open", "sealed", "uploading", "uploaded")
# Work-order states: ``claimed`` (in processing/, not yet in an archive), ``batched`` (in an archive),
# ``done``, ``failed``, ``retried`` (sent back to the inbox by ``wodrop retry``).
WORK_ORDER_STATES = ("claimed", "batched", "done", "failed", "retried")

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

    @property
    def error_list(self) -> list[dict[str, Any]]:
        return json.loads(self.errors) if self.errors else []


_Row = TypeVar("_Row", BatchRow, WorkOrderRow)


def _rows(cls: type[_Row], cur: sqlite3.Cursor) -> list[_Row]:
    names = [f.name for f in fields(cls)]
    return [cls(**{n: r[n] for n in names}) for r in cur.fetchall()]


class StateError(Exception):
    """The DB cannot be opened or is from a newer wodrop."""


class StateDB:
    """One connection per process; methods are short transactions."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            if not path.exists():
                raise StateError(f"{path}: no state DB yet (has the daemon or an upload run here?)")
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
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
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StateError(f"{path}: cannot use state DB ({e})") from None

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

    # ---- batches -------------------------------------------------------------------------------

    def create_batch(
        self, name: str, archive_path: Path, *, origin: str = "daemon", state: str = "open",
        size: int | None = None, archive_mtime_ns: int | None = None,
    ) -> int:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO batches(name, origin, state, archive_path, archive_mtime_ns, size,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (name, origin, state, str(archive_path), archive_mtime_ns, size, now, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def _update_batch(self, batch_id: int, *, durable: bool = False, **values: Any) -> None:
        values["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.transaction(durable=durable) as db:
            db.execute(f"UPDATE batches SET {cols} WHERE id = ?", (*values.values(), batch_id))

    def batch(self, batch_id: int) -> BatchRow:
        rows = _rows(BatchRow, self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)))
        if not rows:
            raise KeyError(batch_id)
        return rows[0]

    def batches(self, states: Iterable[str] | None = None, *, limit: int | None = None) -> list[BatchRow]:
        sql, args = "SELECT * FROM batches", list[str]()
        if states is not None:
            st = list(states)
            sql += f" WHERE state IN ({','.join('?' * len(st))})"
            args.extend(st)
        sql += " ORDER BY id DESC" if limit else " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return _rows(BatchRow, self._db.execute(sql, args))

    def find_cli_batch(self, archive_path: Path, size: int, mtime_ns: int) -> BatchRow | None:
        """The unfinished one-shot upload of this very file (same path, size and mtime), if any."""
        rows = _rows(
            BatchRow,
            self._db.execute(
                "SELECT * FROM batches WHERE origin = 'cli' AND archive_path = ? AND size = ?"
                " AND archive_mtime_ns = ? AND state IN ('sealed', 'uploading') ORDER BY id DESC LIMIT 1",
                (str(archive_path), size, mtime_ns),
            ),
        )
        return rows[0] if rows else None

    def seal_batch(
        self, batch_id: int, *, size: int, sha256: str, md5: str | None, crc32c: str | None,
        work_order_count: int, seal_reason: str,
    ) -> None:
        self._update_batch(
            batch_id, durable=True, state="sealed", size=size, sha256=sha256, md5=md5, crc32c=crc32c,
            work_order_count=work_order_count, seal_reason=seal_reason, sealed_at=time.time(),
        )

    def set_session(self, batch_id: int, remote_batch_id: str | None, upload_url: str) -> None:
        """Persist a new upload session *before* the first PUT (a crash then resumes it)."""
        with self.transaction(durable=True) as db:
            db.execute(
                "UPDATE batches SET state = 'uploading', remote_batch_id = ?, upload_url = ?,"
                " committed_offset = 0, sessions = sessions + 1,"
                " upload_started_at = COALESCE(upload_started_at, ?), updated_at = ? WHERE id = ?",
                (remote_batch_id, upload_url, time.time(), time.time(), batch_id),
            )

    def clear_session(self, batch_id: int, reason: str) -> None:
        """The session expired (404/410): back to ``sealed`` so a new one is created from byte 0."""
        self._update_batch(
            batch_id, durable=True, state="sealed", remote_batch_id=None, upload_url=None, committed_offset=0,
            last_error=reason,
        )

    def set_digest(self, batch_id: int, *, md5: str, crc32c: str) -> None:
        """Cache checksums hashed outside the batcher (``wodrop upload``), so a resume need not re-hash."""
        self._update_batch(batch_id, md5=md5, crc32c=crc32c)

    def set_offset(self, batch_id: int, offset: int) -> None:
        self._update_batch(batch_id, committed_offset=offset)

    def record_error(self, batch_id: int, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET attempts = attempts + 1, last_error = ?, updated_at = ? WHERE id = ?",
                (error, time.time(), batch_id),
            )

    def mark_uploaded(self, batch_id: int, size: int) -> None:
        self._update_batch(batch_id, durable=True, state="uploaded", committed_offset=size,
                           uploaded_at=time.time(), last_error=None)

    def finish_batch(self, batch_id: int, state: str, error: str | None = None) -> None:
        assert state in ("done", "failed", "discarded")
        self._update_batch(batch_id, durable=True, state=state, finished_at=time.time(),
                           **({"last_error": error} if error else {}))

    # ---- work orders ---------------------------------------------------------------------------

    def add_work_order(self, name: str, path: Path) -> int:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO work_orders(name, state, path, claimed_at, updated_at) VALUES (?,?,?,?,?)",
                (name, "claimed", str(path), now, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def work_order(self, wo_id: int) -> WorkOrderRow:
        rows = _rows(WorkOrderRow, self._db.execute("SELECT * FROM work_orders WHERE id = ?", (wo_id,)))
        if not rows:
            raise KeyError(wo_id)
        return rows[0]

    def work_orders(
        self, *, states: Iterable[str] | None = None, batch_id: int | None = None,
        name: str | None = None, limit: int | None = None, newest_first: bool = False,
    ) -> list[WorkOrderRow]:
        where: list[str] = []
        args: list[object] = []
        if states is not None:
            st = list(states)
            where.append(f"state IN ({','.join('?' * len(st))})")
            args.extend(st)
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
            db.execute(
                "UPDATE work_orders SET state = 'batched', batch_id = ?, bytes = ?, files = ?, updated_at = ?"
                " WHERE id = ?",
                (batch_id, nbytes, nfiles, time.time(), wo_id),
            )
            db.execute(
                "UPDATE batches SET work_order_count = work_order_count + 1, updated_at = ? WHERE id = ?",
                (time.time(), batch_id),
            )

    def unassign_batch(self, batch_id: int) -> list[int]:
        """A discarded batch's work orders go back to ``claimed`` to be packed again; returns their ids."""
        with self.transaction() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM work_orders WHERE batch_id = ? AND state = 'batched'", (batch_id,))]
            db.execute(
                "UPDATE work_orders SET state = 'claimed', batch_id = NULL, updated_at = ?"
                " WHERE batch_id = ? AND state = 'batched'",
                (time.time(), batch_id),
            )
        return ids

    def plan_move(self, wo_id: int, dest: Path) -> None:
        """Record where a folder is about to be renamed to, so recovery can tell a done move from a
        pending one after a crash between the rename and :meth:`finish_work_order`."""
        with self.transaction() as db:
            db.execute("UPDATE work_orders SET dest = ?, updated_at = ? WHERE id = ?",
                       (str(dest), time.time(), wo_id))

    def finish_work_order(
        self, wo_id: int, state: str, path: Path, *, stage: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        assert state in ("done", "failed", "retried")
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE work_orders SET state = ?, path = ?, dest = NULL, error_stage = ?, errors = ?,"
                " finished_at = ?, updated_at = ? WHERE id = ?",
                (state, str(path), stage, json.dumps(errors) if errors else None, now, now, wo_id),
            )

    def is_duplicate(self, name: str, exclude_id: int | None = None) -> bool:
        """True when another work order of this id is in an archive or already uploaded (so a second
        copy dropped while the first is in flight is caught too)."""
        row = self._db.execute(
            "SELECT 1 FROM work_orders WHERE name = ? AND id != ? AND state IN ('batched', 'done') LIMIT 1",
            (name, -1 if exclude_id is None else exclude_id),
        ).fetchone()
        return row is not None

    def last_uploaded_at(self) -> float | None:
        """Unix time the server last confirmed a whole batch (the metric survives restarts)."""
        row = self._db.execute("SELECT MAX(uploaded_at) FROM batches").fetchone()
        return None if row[0] is None else float(row[0])

    def count_finished_since(self, state: str, since: float) -> int:
        """Work orders that reached ``state`` at or after unix time ``since`` ("failed today")."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM work_orders WHERE state = ? AND finished_at >= ?", (state, since)
        ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"work_orders": {state: n}, "batches": {state: n}}`` for status and metrics."""
        out: dict[str, dict[str, int]] = {"work_orders": {}, "batches": {}}
        for table in ("work_orders", "batches"):
            for state, n in self._db.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"):
                out[table][state] = n
        return out
