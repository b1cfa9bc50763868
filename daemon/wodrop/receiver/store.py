"""The receiver's disk: one ``.part`` file per session plus a small sidecar, both restart-proof.

Layout under the store directory, per batch ``B``:

- ``B.session.json``: the session (filename, upload token, declared total, status, when the upload
  completed), written atomically;
- ``B.zip.part``: the bytes received so far. Its length *is* the committed offset (nothing else is
  trusted after a restart), always a multiple of 262144 until the upload is complete;
- ``B.zip`` and ``B.json`` (see :mod:`wodrop.receiver.report`) once complete.

Everything here blocks; the app calls it through threads.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wodrop.digest import Hashes

ALIGN = 262144  # GCS: every chunk but the last is a multiple of 256 KiB


@dataclass
class Session:
    """One batch and its resumable upload session."""

    batch_id: str
    filename: str
    token: str
    created_at: str
    status: str = "created"  # created -> uploading -> uploaded; or expired / cancelled
    total: int | None = None
    object_meta: dict[str, Any] | None = None  # the GCS-style answer once uploaded
    uploaded_at: float | None = None  # unix time the upload completed: the emulated processing starts
    verdict: str | None = None  # "done"/"failed": what the emulated processing ends with (its errors file)
    committed: int = field(default=0, compare=False)
    digest: Hashes | None = field(default=None, compare=False, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, compare=False, repr=False)

    _PERSISTED = ("batch_id", "filename", "token", "created_at", "status", "total", "object_meta",
                  "uploaded_at", "verdict")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._PERSISTED}


class Store:
    """Paths and blocking file operations of one store directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def part(self, bid: str) -> Path:
        return self.root / f"{bid}.zip.part"

    def archive(self, bid: str) -> Path:
        return self.root / f"{bid}.zip"

    def report(self, bid: str) -> Path:
        return self.root / f"{bid}.json"

    def sidecar(self, bid: str) -> Path:
        return self.root / f"{bid}.session.json"

    def batch_ids(self) -> list[str]:
        return sorted(p.name.removesuffix(".session.json") for p in self.root.glob("*.session.json"))

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Atomic: a crash leaves the old file or the new one, never half of one."""
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def read_report(self, bid: str) -> dict[str, Any] | None:
        """The batch's errors file, or None when it is missing or unreadable."""
        try:
            data = json.loads(self.report(bid).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, s: Session) -> None:
        self.write_json(self.sidecar(s.batch_id), s.to_json())

    def load(self, bid: str) -> Session | None:
        """The session from its sidecar, its committed offset from the data on disk.

        A ``.part`` cut mid-block by a crash is trimmed back to the last 262144 boundary (unless it
        already holds the whole declared total), so the offset reported is always one GCS could."""
        try:
            data = json.loads(self.sidecar(bid).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        s = Session(**{k: data.get(k) for k in Session._PERSISTED if k in data})
        part, archive = self.part(bid), self.archive(bid)
        if part.exists():
            size = part.stat().st_size
            if size != s.total and size % ALIGN:
                os.truncate(part, size - size % ALIGN)
                size -= size % ALIGN
            s.committed = size
        elif archive.exists():
            s.committed = archive.stat().st_size
        return s

    def delete(self, bid: str) -> None:
        for p in (self.part(bid), self.sidecar(bid)):
            p.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartWriter:
    """Appends one request's new bytes to a ``.part`` file without blocking the event loop.

    Only whole 262144-byte blocks are written while the body streams in, so a connection that drops
    leaves an aligned prefix on disk, as GCS does; the sub-block tail is written only by
    ``finish(final=True)``. One batch of pieces is in flight in a worker thread (write, then hash:
    hashlib and crc32c release the GIL) while the loop keeps reading the socket. Pieces are passed as
    received, never joined: no copy of the body beyond the socket's own."""

    BLOCK = 4 * 1024 * 1024  # how much to hand to the worker at once; an ALIGN multiple

    def __init__(self, path: Path, digest: Hashes, *, limit: int | None = None) -> None:
        self.path = path
        self.digest = digest
        self.limit = limit  # save at most this many bytes (a partial-save fault)
        self.written = 0
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._pending: asyncio.Future[None] | None = None
        self._fd: int | None = None

    async def feed(self, data: bytes) -> None:
        if self.limit is not None:
            data = data[: max(0, self.limit - self.written - self._buffered)]
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered >= self.BLOCK:
            await self._flush(self._buffered - self._buffered % ALIGN)

    async def finish(self, *, final: bool) -> int:
        """Write what is buffered (the aligned part, or all of it when ``final``), fsync, and return
        the bytes this request added."""
        n = self._buffered if final else self._buffered - self._buffered % ALIGN
        if n:
            await self._flush(n)
        await self._close()
        return self.written

    async def abort(self, committed: int) -> None:
        """Undo this request: the file goes back to ``committed`` bytes (the caller restores the
        digest it copied before feeding)."""
        await self._close()
        if self.written:
            await asyncio.to_thread(os.truncate, self.path, committed)
        self.written = 0

    async def _close(self) -> None:
        await self._wait()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await asyncio.to_thread(_sync_close, fd)

    async def _flush(self, n: int) -> None:
        """Hand the first ``n`` buffered bytes to the worker (after the previous batch is done)."""
        batch, size = [], 0
        while size < n:
            piece = self._pieces.popleft()
            if size + len(piece) > n:
                piece, rest = piece[: n - size], piece[n - size :]
                self._pieces.appendleft(rest)
            batch.append(piece)
            size += len(piece)
        self._buffered -= n
        await self._wait()
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            self._fd = await asyncio.to_thread(os.open, self.path, flags, 0o644)
        self._pending = asyncio.get_running_loop().run_in_executor(
            None, _write_and_hash, self._fd, batch, self.digest
        )
        self.written += n

    async def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending


def _write_and_hash(fd: int, pieces: list[bytes], digest: Hashes) -> None:
    for piece in pieces:
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]
    for piece in pieces:
        digest.update(piece)


def _sync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
