"""The delivered-ids ledger: which work orders reached the platform, known to every instance on a share.

The state DB is local to one instance and can be lost; ``done/`` is shared. Each instance appends one
JSON line per work order it delivered to its own file, ``done/.wodrop/<instance>.ledger``, and reads
everyone's. One writer per file, appends only: no locks, and it works on any share that has ``done/``.

When: after the server confirmed the whole batch, *before* the DB records it ``uploaded``. A crash in
between resumes the upload, finds it complete (status query) and appends again: repeats are harmless.
So a second instance, or this one after its DB was deleted, refuses to upload an id twice
(``format.on_duplicate: reject``) and recovery recognises a folder it adopts as already delivered.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from wodrop.logs import get_logger

log = get_logger("wodrop.ledger")
LEDGER_DIR = ".wodrop"
SUFFIX = ".ledger"


@dataclass(frozen=True)
class Delivery:
    work_order: str
    batch: str  # wodrop's batch name (the archive's stem)
    remote_batch_id: str | None
    at: float  # unix time the server confirmed the batch
    instance: str
    files: int  # what was delivered, to tell the same folder from a new copy of the same id
    bytes: int


class Ledger:
    def __init__(self, done_dir: Path, instance: str) -> None:
        self.dir = done_dir / LEDGER_DIR
        self.path = self.dir / f"{instance}{SUFFIX}"
        self._read: dict[str, int] = {}  # ledger file name -> bytes parsed
        self._delivered: dict[str, Delivery] = {}
        self._lock = threading.Lock()  # refresh runs in worker threads

    def open(self) -> None:
        """Create the folder (hidden: the intake and people's scripts skip dot-names) and read all files.
        A line torn by a crash mid-append is closed with a newline so the next one starts clean."""
        self._make_dir()
        try:
            with open(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        except FileNotFoundError:
            torn = False
        except OSError:  # empty file: seek before the start
            torn = False
        if torn:
            self._append(b"\n")
        self.refresh()

    def _make_dir(self) -> None:
        self.dir.mkdir(exist_ok=True)
        if self.dir.is_symlink():
            raise OSError(40, "the ledger folder is a symbolic link; wodrop never writes through links",
                          str(self.dir))

    def refresh(self) -> None:
        """Read what every instance appended since the last call (cheap: a stat per file)."""
        with self._lock:
            try:
                names = [e.name for e in os.scandir(self.dir) if e.name.endswith(SUFFIX)]
            except FileNotFoundError:
                return
            for name in names:
                self._read_new(name)

    def _read_new(self, name: str) -> None:
        start = self._read.get(name, 0)
        try:
            with open(os.open(self.dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError as e:
            log.warning("ledger_unreadable", file=name, error=e.strerror)
            return
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                d = Delivery(**json.loads(line))
            except (ValueError, TypeError) as e:
                log.warning("ledger_line_skipped", file=name, error=str(e))
                continue
            self._delivered.setdefault(d.work_order, d)
        self._read[name] = start + end

    def record(self, deliveries: Iterable[Delivery]) -> None:
        """Append and fsync (blocking: call from a thread). Raises OSError when ``done/`` is not
        writable: the caller keeps the batch ``uploading`` and tries again, so nothing is lost."""
        items = list(deliveries)
        if not items:
            return
        self._make_dir()  # done/ may have been replaced while we ran (a clean-up, a re-mounted share)
        self._append(b"".join(json.dumps(asdict(d), ensure_ascii=False).encode() + b"\n" for d in items))
        with self._lock:
            for d in items:
                self._delivered.setdefault(d.work_order, d)

    def _append(self, data: bytes) -> None:
        # O_NOFOLLOW: done/ is shared; a link planted in place of the ledger is refused, not written through
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:  # whole lines in (usually) one write; a reader keeps a partial tail for later
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def delivered(self, work_order: str) -> Delivery | None:
        return self._delivered.get(work_order)

    def __len__(self) -> int:
        return len(self._delivered)
