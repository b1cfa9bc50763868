"""Batch archives: one zip per batch, ``<WO>/<file>`` entries, STORED, zip64, in processing order.

Streaming and single-pass: each source file is read once, in 1 MiB chunks, straight into the zip. The
archive's sha256/md5/crc32c are computed while it is written. zipfile seeks back to patch each local
header (CRC and sizes) after the data, so the bytes of an entry are final only once it is closed; a
*hash cursor* therefore trails the write position: after each work order, the newly finalised bytes
(still hot in the page cache) are read back from the cursor to the end and hashed, and at ``close()``
the central directory is. Memory stays flat whatever the sizes.

Sources are read the way the validator read them, never through a link: the work-order folder is
opened with ``O_DIRECTORY|O_NOFOLLOW`` and each file relative to that descriptor (``dir_fd``) with
``O_NOFOLLOW|O_NONBLOCK`` (a FIFO swapped in cannot block), then checked to be the regular file the
validator saw (same device and inode when the report knows them, same size).

A work order is all-or-nothing. When a source turns out to be different from what the validator saw
(size changed, file gone or replaced, the folder replaced by a link: someone is still writing the
folder, or is trying to make wodrop read what it should not), ``SourceChanged`` is raised and
the work order is rolled back: the archive is truncated to where it started, zipfile's entry list is
restored, and the writer can take the next work order (or be closed) as if it had never been offered.
The same rollback happens for any other error while copying (a permission error on a source file).

Blocking by design: the daemon calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
import zipfile
from pathlib import Path

from wodrop.digest import ArchiveDigest, Hashes
from wodrop.fsops import fsync_dir
from wodrop.workorder.validate import FileEntry, WorkOrderReport, open_folder

CHUNK_SIZE = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
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
        self._fp = open(self.path, "x+b")  # noqa: SIM115 (lives until close/abort; "+": read back to hash)
        self._zf = zipfile.ZipFile(self._fp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._hashes = Hashes()
        self._hashed = 0  # the hash cursor: bytes [0, _hashed) are final and hashed
        self._ids: set[str] = set()
        self._buf = bytearray(CHUNK_SIZE)
        self._closed_size: int | None = None

    @property
    def size(self) -> int:
        """Bytes written so far (the final size once closed)."""
        return self._closed_size if self._closed_size is not None else self._hashed

    def add_work_order(self, report: WorkOrderReport) -> int:
        """Append the report's files as ``<id>/<name>``; returns how many bytes the archive grew.

        Files are read from the folder ``report.path`` by their names, never through a symbolic link.
        Raises ``SourceChanged`` (or the OSError met reading a source) after rolling the work order
        back; the writer stays usable. ValueError for an invalid report, an id already in the archive,
        or a file entry that is not a plain name in ``report.path``.
        """
        if not report.valid:
            raise ValueError(f"{report.id} is not valid; only valid work orders go into a batch")
        if report.id in self._ids:
            raise ValueError(f"{report.id} is already in this archive")
        folder = Path(report.path)
        for entry in report.files:
            if entry.name in ("", ".", "..") or "/" in entry.name or Path(entry.path) != folder / entry.name:
                raise ValueError(f"{entry.path} is not a file named {entry.name!r} in {folder}")
        start, entries = self._hashed, len(self._zf.filelist)
        try:
            try:
                dir_fd = open_folder(folder)
            except OSError as e:
                if e.errno in _REPLACED:
                    raise SourceChanged(report.id, None, "the folder is gone, or was replaced by a "
                                        "symbolic link or a file; links are never followed") from None
                raise
            try:
                for entry in report.files:
                    self._copy(report.id, dir_fd, entry)
            finally:
                os.close(dir_fd)
            self._fp.flush()
            hashes = self._hashes.copy()
            end = self._fp.tell()
            self._read_back(hashes, start, end)
        except BaseException:
            self._rollback(start, entries)
            raise
        self._hashes, self._hashed = hashes, end
        self._ids.add(report.id)
        return end - start

    def close(self) -> ArchiveDigest:
        """Write the central directory, fsync, and return the checksums of the whole file."""
        self._zf.close()
        self._fp.flush()
        end = self._fp.tell()
        self._read_back(self._hashes, self._hashed, end)
        os.fsync(self._fp.fileno())  # the archive is uploaded next: a crash must not leave it torn
        self._fp.close()
        fsync_dir(self.path.parent)
        self._hashed = self._closed_size = end
        assert self._hashes.size == end, "every byte of the archive is hashed exactly once"
        return self._hashes.result()

    def abort(self) -> None:
        """Close and delete the partial archive (our own spool/temp file, never a user's)."""
        with contextlib.suppress(Exception):  # a full disk may be why we abort; the file goes anyway
            self._zf.close()
        with contextlib.suppress(OSError):
            self._fp.close()
        self.path.unlink(missing_ok=True)

    def _copy(self, wo: str, dir_fd: int, entry: FileEntry) -> None:
        try:
            fd = os.open(entry.name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in _REPLACED:
                raise SourceChanged(wo, entry.name, "it is gone or was replaced by a link") from None
            raise
        try:
            st = os.fstat(fd)
            _check_same(wo, entry, st)
            src = open(fd, "rb", buffering=0)  # noqa: SIM115 (owns fd from here; closed just below)
        except BaseException:
            os.close(fd)
            raise
        with src:
            info = zipfile.ZipInfo(f"{wo}/{entry.name}", date_time=_zip_time(st.st_mtime))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = entry.size
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            view = memoryview(self._buf)
            with self._zf.open(info, "w", force_zip64=True) as dst:
                left = entry.size
                while left:
                    n = src.readinto(view[: min(left, CHUNK_SIZE)])
                    if not n:
                        raise SourceChanged(wo, entry.name, f"it shrank below {entry.size} bytes")
                    dst.write(view[:n])
                    left -= n
                if src.read(1):
                    raise SourceChanged(wo, entry.name, f"it grew beyond {entry.size} bytes")

    def _read_back(self, hashes: Hashes, start: int, end: int) -> None:
        fd = self._fp.fileno()
        while start < end:
            data = os.pread(fd, min(CHUNK_SIZE, end - start), start)
            if not data:
                raise OSError(errno.EIO, f"{self.path} is shorter than written")
            hashes.update(data)
            start += len(data)

    def _rollback(self, start: int, entries: int) -> None:
        """Forget everything after ``start``: file bytes and zipfile's record of the entries."""
        self._fp.seek(start)
        self._fp.truncate()
        for info in self._zf.filelist[entries:]:
            self._zf.NameToInfo.pop(info.filename, None)
        del self._zf.filelist[entries:]
        self._zf.start_dir = start  # where zipfile writes the next entry / the central directory


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
