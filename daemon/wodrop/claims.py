"""In-flight claims: which work-order ids an instance on the share is sending right now.

The delivered-ids ledger (:mod:`wodrop.ledger`) knows the ids *delivered*. Between packing and the
server's confirmation an id is only in one instance's batch; a copy of the same id that reaches
another instance meanwhile must not be sent too. Appending lines cannot settle who was first (both
instances read, then both write), so a claim is a file, ``done/.wodrop/claims/<sha256 of the id>``,
created with ``O_CREAT | O_EXCL``: atomic on local disks, NFSv3+ and SMB. The instance that creates it
sends the id; every other one refuses its copy as a duplicate.

Lifetime: taken by the batcher just before the work order goes into an archive (taking it again is a
no-op for its holder: a discarded archive is packed again); released when the work order reaches
``done/`` (the ledger has it by then) or ``failed/``; at start-up an instance releases its own claims
for ids it no longer has in flight (a crash between finishing and releasing). A claim names the
``processing/`` folder of its holder: one taken from this instance's own ``processing/`` under an
earlier instance id (the state DB was lost and recovery adopted the folder) is this instance's. A
claim of an instance that is gone for good stays until a person removes the file: the refusal names
it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from wodrop.ledger import LEDGER_DIR
from wodrop.logs import get_logger

log = get_logger("wodrop.claims")
CLAIMS_DIR = "claims"


@dataclass(frozen=True)
class Claim:
    work_order: str
    instance: str
    at: float  # unix time it was taken
    path: Path
    processing: str = ""  # the holder's processing/ folder


class Claims:
    def __init__(self, done_dir: Path, instance: str, processing: Path) -> None:
        self.dir = done_dir / LEDGER_DIR / CLAIMS_DIR
        self.instance = instance
        self.processing = os.path.realpath(processing)

    def _ours(self, held: Claim) -> bool:
        return held.instance == self.instance or held.processing == self.processing

    def path_of(self, work_order: str) -> Path:
        return self.dir / hashlib.sha256(work_order.encode("utf-8", "surrogateescape")).hexdigest()

    def _make_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.dir.is_symlink() or self.dir.parent.is_symlink():
            raise OSError(40, "the claims folder is a symbolic link; wodrop never writes through links",
                          str(self.dir))

    def take(self, work_order: str) -> Claim | None:
        """Claim ``work_order`` for this instance (blocking). ``None`` when this instance holds it now;
        otherwise the other holder's claim. OSError when ``done/`` cannot be written: the caller parks
        the work order and tries again (nothing is sent without a claim)."""
        self._make_dir()
        path = self.path_of(work_order)
        body = json.dumps({"work_order": work_order, "instance": self.instance, "at": time.time(),
                           "processing": self.processing, "pid": os.getpid()},
                          ensure_ascii=False).encode("utf-8", "surrogateescape")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            held = self._read(path, work_order)
            return None if self._ours(held) else held
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        return None

    def _read(self, path: Path, work_order: str) -> Claim:
        """The holder of an existing claim. One that cannot be read (torn by a crash mid-write, a
        planted link) still holds the id, for an unknown instance: sending twice is the worse error."""
        try:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                data = json.loads(f.read(4096))
            return Claim(work_order, str(data["instance"]), float(data["at"]), path,
                         str(data.get("processing", "")))
        except (OSError, ValueError, KeyError, TypeError):
            try:
                at = os.lstat(path).st_mtime
            except OSError:
                at = time.time()
            return Claim(work_order, "unknown", at, path)

    def release(self, work_order: str) -> None:
        """Drop this instance's claim on ``work_order`` (blocking); another instance's is left alone."""
        path = self.path_of(work_order)
        if not os.path.lexists(path) or not self._ours(self._read(path, work_order)):
            return
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def release_stale(self, in_flight: set[str]) -> int:
        """Start-up: release this instance's claims on ids it no longer has in flight; how many."""
        keep = {self.path_of(w).name for w in in_flight}
        released = 0
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return 0
        for e in entries:
            if e.name in keep or not e.is_file(follow_symlinks=False):
                continue
            if self._ours(self._read(Path(e.path), "")):
                try:
                    os.unlink(e.path)
                    released += 1
                except FileNotFoundError:
                    pass
        if released:
            log.info("claims_released", count=released, note="ids this instance no longer has in flight")
        return released
