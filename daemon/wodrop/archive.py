"""Batch archives: one zip per batch, ``<WO>/<file>`` entries, STORED, zip64, in processing order.

Written strictly sequentially and hashed as it is written: no seek back, no read back of the archive.
A STORED entry's local header holds the CRC-32 and the sizes *before* the data; the size is known
from validation (``FileEntry.size``, checked again with ``fstat``), so only the CRC-32 has to come
from the source before its header is written:

- a file whose header and data fit in what is left of a buffer (``BUFFER_SIZE``: most images) is
  read once, right behind the room for its header, CRC'd there, and the header put in front of it;
  small files share a buffer, i.e. one ``write`` and one hand-over to the hash workers;
- a bigger file takes two passes, ``STREAM_CHUNK`` at a time: the first computes the CRC-32 (zlib,
  ~6 GB/s here; it leaves the file hot in the page cache), the second copies it behind its header
  and computes the CRC-32 again, which must match the first. If it does not, the file changed under
  us: ``SourceChanged``, where the entry would otherwise carry a wrong CRC.

The byte layout is ``wodrop.ziplayout``: exactly what ``zipfile`` writes with ``force_zip64=True``
(the writer used zipfile before), so every reader sees the same archives as before.

Every byte written is handed, in order, to a :class:`~wodrop.digest.HashPipeline`: the archive's
sha256/md5/crc32c are computed by two worker threads while the next bytes are read and written. Its
fixed pool of ``BUFFERS`` buffers is all the memory the copy uses, whatever the sizes (plus ~100
bytes of central directory per entry, as zipfile kept). A third thread starts the disk writes every
``WRITEBACK_EVERY`` bytes, so the ``fsync`` in ``close()`` waits for the last few MiB only.

Sources are read the way the validator read them, never through a link: the work-order folder is
opened with ``O_DIRECTORY|O_NOFOLLOW`` and each file relative to that descriptor (``dir_fd``) with
``O_NOFOLLOW|O_NONBLOCK`` (a FIFO swapped in cannot block), then checked to be the regular file the
validator saw (same device and inode when the report knows them, same size).

A work order is all-or-nothing. When a source turns out to be different from what the validator saw
(size changed, file gone or replaced, the folder replaced by a link, content changed between the two
passes: someone is still writing the folder, or is trying to make wodrop read what it should not),
``SourceChanged`` is raised and the work order is rolled back: the archive is truncated to where it
started, its central-directory records are dropped, the hashes go back to their state at that point,
and the writer can take the next work order (or be closed) as if it had never been offered. The same
rollback happens for any other error while copying (a permission error on a source file).

Blocking by design: the daemon calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
import weakref
import zlib
from pathlib import Path

from wodrop.digest import ArchiveDigest, HashPipeline
from wodrop.fsops import fsync_dir
from wodrop.workorder.validate import FileEntry, WorkOrderReport, open_folder
from wodrop.ziplayout import (
    central_record,
    dos_date_time,
    encode_name,
    end_records,
    local_header,
    local_header_size,
)

# A file whose header and data fit in a buffer is read once; several such files share a buffer, so
# they take one write and one hand-over to the hash workers. Bigger files are read, CRC'd, written
# and hashed STREAM_CHUNK at a time: a piece that size stays in a core's L2 cache through all those
# passes. Measured here (2 MiB of L2 per core): 4 MiB pieces cost ~1 s more CPU per GiB than 1 MiB
# ones, and reading a 4 MB file once into one 4 MiB piece cost more than reading it twice in 1 MiB
# pieces; files up to 2 MiB read once saved ~0.3 s per GiB over two passes.
BUFFER_SIZE = 2 * 1024 * 1024
STREAM_CHUNK = 1024 * 1024
BUFFERS = 6  # in flight at once: one being filled, the others written and waiting to be hashed
WRITEBACK_EVERY = 64 * 1024 * 1024  # start writing the archive to disk every this many bytes
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What opening a validated source fails with when something else took its place (or it went away).
_REPLACED = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip timestamps cannot go earlier (or past 2107)
_ZIP_END = (2107, 12, 31, 23, 59, 58)


class SourceChanged(Exception):
    """A work order's file (or, with ``file`` None, its folder) changed after validation; the work order
    was rolled back out of the archive."""

    def __init__(self, work_order: str, file: str | None, detail: str) -> None:
        what = work_order if file is None else f"{work_order}/{file}"
        super().__init__(f"{what} changed while it was being packed ({detail})")
        self.work_order = work_order
        self.file = file


class BatchArchiveWriter:
    """Writes one new archive at ``path`` (which must not exist: it is never replaced)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, _CREATE_FLAGS, 0o666)
        try:
            self._hashing = HashPipeline(BUFFERS, BUFFER_SIZE)
            self._writeback = _Writeback(self._fd)
        except BaseException:
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
            raise
        # close()/abort() call it; a writer dropped without either still stops its thread, closes its fd
        self._release = weakref.finalize(self, _release, self._writeback, self._fd)
        self._pos = 0  # bytes written to the file, every one of them given to the hash pipeline
        self._buf: bytearray | None = None  # the buffer being filled, taken from the pipeline
        self._fill = 0  # bytes of it filled, not written yet: they go at ``_pos``
        self._central: list[bytes] = []  # one central-directory record per entry, in order
        self._ids: set[str] = set()
        self._closed_size: int | None = None

    @property
    def size(self) -> int:
        """Bytes written so far (the final size once closed)."""
        return self._closed_size if self._closed_size is not None else self._pos

    def add_work_order(self, report: WorkOrderReport) -> int:
        """Append the report's files as ``<id>/<name>``; returns how many bytes the archive grew.

        Files are read from the folder ``report.path`` by their names, never through a symbolic link.
        Raises ``SourceChanged`` (or the OSError met reading a source) after rolling the work order
        back; the writer stays usable. ValueError for an invalid report, an id already in the archive,
        or a file entry that is not a plain name in ``report.path`` (or not valid Unicode).
        """
        if not self._release.alive:
            raise ValueError(f"{self.path} is closed; no more work orders go into it")
        if not report.valid:
            raise ValueError(f"{report.id} is not valid; only valid work orders go into a batch")
        if report.id in self._ids:
            raise ValueError(f"{report.id} is already in this archive")
        folder = Path(report.path)
        for entry in report.files:
            if entry.name in ("", ".", "..") or "/" in entry.name or Path(entry.path) != folder / entry.name:
                raise ValueError(f"{entry.path} is not a file named {entry.name!r} in {folder}")
        names = [encode_name(f"{report.id}/{entry.name}") for entry in report.files]
        start, entries = self._pos, len(self._central)
        self._hashing.mark()
        try:
            try:
                dir_fd = open_folder(folder)
            except OSError as e:
                if e.errno in _REPLACED:
                    raise SourceChanged(report.id, None, "the folder is gone, or was replaced by a "
                                        "symbolic link or a file; links are never followed") from None
                raise
            try:
                for entry, (name, flags) in zip(report.files, names, strict=True):
                    self._copy(report.id, dir_fd, entry, name, flags)
            finally:
                os.close(dir_fd)
            self._flush()
        except BaseException:
            self._rollback(start, entries)
            raise
        self._ids.add(report.id)
        return self._pos - start

    def close(self) -> ArchiveDigest:
        """Write the central directory, fsync, and return the checksums of the whole file."""
        if not self._release.alive:
            raise ValueError(f"{self.path} is already closed")
        cd_offset = self._pos
        end = end_records(len(self._central), cd_offset, sum(map(len, self._central)))
        try:
            for record in [*self._central, end]:
                self._append(record)
            self._flush()
        finally:
            self._put_back()
        hashes = self._hashing.hashes()
        self._hashing.close()
        self._writeback.stop()  # raises what an early write-back met: fsync won't report it again
        os.fsync(self._fd)  # the archive is uploaded next: a crash must not leave it torn
        self._release()
        fsync_dir(self.path.parent)
        self._closed_size = self._pos
        assert hashes.size == self._pos, "every byte of the archive is hashed exactly once"
        return hashes.result()

    def abort(self) -> None:
        """Close and delete the partial archive (our own spool/temp file, never a user's)."""
        self._hashing.close()
        with contextlib.suppress(OSError):  # a failed write-back: the file goes anyway
            self._release()
        self.path.unlink(missing_ok=True)

    def _copy(self, wo: str, dir_fd: int, entry: FileEntry, name: bytes, flags: int) -> None:
        try:
            fd = os.open(entry.name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in _REPLACED:
                raise SourceChanged(wo, entry.name, "it is gone or was replaced by a link") from None
            raise
        try:
            st = os.fstat(fd)
            _check_same(wo, entry, st)
            dos_time, dos_date = dos_date_time(_zip_time(st.st_mtime))
            offset = self._pos + self._fill
            header_size, size = local_header_size(name), entry.size
            if header_size + size <= BUFFER_SIZE:
                # read once, into the buffer right behind the room for its header (a new buffer when
                # this one has no room left); its CRC-32 from there, then the header in front of it
                if self._buf is not None and len(self._buf) - self._fill < header_size + size:
                    self._flush()
                view = self._space()[: header_size + size]
                _read_exactly(wo, fd, entry, view[header_size:])
                _at_end(wo, fd, entry)
                crc = zlib.crc32(view[header_size:])
                view[:header_size] = local_header(name, flags, crc, size, dos_time, dos_date)
                self._fill += header_size + size
            else:
                self._flush()
                crc = self._crc_pass(wo, fd, entry, self._space())  # in a buffer used as scratch
                os.lseek(fd, 0, os.SEEK_SET)
                self._append(local_header(name, flags, crc, size, dos_time, dos_date))
                again, left = 0, size
                while left:  # the copy, CRC'd again: a file rewritten between the passes is caught
                    if self._fill >= STREAM_CHUNK:
                        self._flush()
                    view = self._space()
                    view = view[: min(left, len(view), STREAM_CHUNK)]
                    _read_exactly(wo, fd, entry, view)
                    again = zlib.crc32(view, again)
                    self._fill += len(view)
                    left -= len(view)
                _at_end(wo, fd, entry)
                if again != crc:
                    raise SourceChanged(wo, entry.name, "its content changed while it was being read")
        finally:
            os.close(fd)
        self._central.append(central_record(name, flags, crc, size, dos_time, dos_date, offset))

    @staticmethod
    def _crc_pass(wo: str, fd: int, entry: FileEntry, scratch: memoryview) -> int:
        crc, left = 0, entry.size
        while left:
            view = scratch[: min(left, len(scratch), STREAM_CHUNK)]
            _read_exactly(wo, fd, entry, view)
            crc = zlib.crc32(view, crc)
            left -= len(view)
        _at_end(wo, fd, entry)
        return crc

    def _space(self) -> memoryview:
        """The free part of the buffer being filled; a fresh buffer when it is full (or none is)."""
        if self._buf is not None and self._fill == len(self._buf):
            self._flush()
        if self._buf is None:
            self._buf, self._fill = self._hashing.take(), 0
        return memoryview(self._buf)[self._fill :]

    def _append(self, data: bytes) -> None:
        while data:
            space = self._space()
            n = min(len(data), len(space))
            space[:n] = data[:n]
            self._fill += n
            data = data[n:]

    def _flush(self) -> None:
        """Write what the buffer holds at the end of the archive, then give it to the hash pipeline."""
        if self._buf is None:
            return
        if self._fill:
            with memoryview(self._buf) as view:
                done = 0
                while done < self._fill:
                    done += os.write(self._fd, view[done : self._fill])
            if (self._pos + self._fill) // WRITEBACK_EVERY != self._pos // WRITEBACK_EVERY:
                self._writeback.start()
            self._pos += self._fill
            self._hashing.give(self._buf, self._fill)
            self._buf, self._fill = None, 0
        else:
            self._put_back()

    def _put_back(self) -> None:
        """Drop the buffer being filled (what it holds is not written, nor hashed)."""
        if self._buf is not None:
            self._hashing.put_back(self._buf)
            self._buf, self._fill = None, 0

    def _rollback(self, start: int, entries: int) -> None:
        """Forget everything after ``start``: file bytes, central-directory records, hashed bytes."""
        self._put_back()
        os.ftruncate(self._fd, start)
        os.lseek(self._fd, start, os.SEEK_SET)
        del self._central[entries:]
        self._pos = start
        self._hashing.rewind()


class _Writeback:
    """Writes the archive to disk while it is still being written: asked every ``WRITEBACK_EVERY``
    bytes, a thread ``fdatasync``s the file (the kernel alone would wait until the dirty pages are
    old or many), so the final ``fsync`` in ``close()`` finds the last few MiB to write, not the whole
    archive: the disk works while the sources are read and hashed. What it is asked while it syncs
    is done once, next. The first error it meets is kept and raised by :meth:`stop`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._asked = threading.Event()
        self._stopping = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="archive-writeback", daemon=True)
        self._thread.start()

    def start(self) -> None:
        self._asked.set()

    def stop(self) -> None:
        """Wait for the thread to end (the descriptor may be closed then); raise what it met."""
        self._stopping = True
        self._asked.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as e:
                self._error = self._error or e


def _release(writeback: _Writeback, fd: int) -> None:
    """Stop the write-back thread, then close the archive's descriptor (in that order: the thread
    must never sync a number that was closed and given to another file)."""
    try:
        writeback.stop()
    finally:
        os.close(fd)


def _read_exactly(wo: str, fd: int, entry: FileEntry, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if not n:
            raise SourceChanged(wo, entry.name, f"it shrank below {entry.size} bytes")
        got += n


def _at_end(wo: str, fd: int, entry: FileEntry) -> None:
    if os.read(fd, 1):
        raise SourceChanged(wo, entry.name, f"it grew beyond {entry.size} bytes")


def _check_same(wo: str, entry: FileEntry, st: os.stat_result) -> None:
    """SourceChanged unless ``st`` is the regular file the validator saw (checked before anything is
    read: a folder or a FIFO swapped in is never read, a different file of the same size neither)."""
    if not stat.S_ISREG(st.st_mode):
        raise SourceChanged(wo, entry.name, "it is no longer a regular file")
    same_dev = entry.dev is None or st.st_dev == entry.dev
    same_ino = entry.ino is None or st.st_ino == entry.ino
    if not (same_dev and same_ino):
        raise SourceChanged(wo, entry.name, "it was replaced by another file")
    if st.st_size != entry.size:
        raise SourceChanged(wo, entry.name, f"{entry.size} bytes when checked, {st.st_size} now")


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.localtime(mtime)[:6]
    return max(_ZIP_EPOCH, min(_ZIP_END, (t[0], t[1], t[2], t[3], t[4], t[5])))
