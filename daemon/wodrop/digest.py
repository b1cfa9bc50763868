"""The one digest helper: sha256 + md5 + crc32c fed together, in the forms GCS reports them.

Used by the batch writer (while packing), ``wodrop upload`` (while uploading) and the reference
receiver (while saving). md5 and crc32c come out base64 (crc32c of the big-endian uint32), like GCS's
``md5Hash`` and ``crc32c``; sha256 as hex. The crc32c is kept as the int ``google_crc32c.extend``
folds, so a :class:`Hashes` can be copied (a failed work order or chunk leaves no trace).
:class:`HashPipeline` computes the same :class:`Hashes` on worker threads, beside the caller's I/O.
"""

from __future__ import annotations

import base64
import hashlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

_READ = 1024 * 1024
_CRC_PIECE = 256 * 1024


@dataclass(frozen=True)
class ArchiveDigest:
    """Checksums of a whole archive, in the forms the upload checks compare with the server's answer."""

    size: int
    sha256: str  # hex
    md5: str  # base64, like GCS's md5Hash
    crc32c: str  # base64 of the big-endian uint32, like GCS's crc32c


@dataclass(frozen=True)
class Expected:
    """What the server's copy should be (either checksum may be unknown)."""

    size: int
    md5: str | None
    crc32c: str | None


class Stopped(Exception):
    """Hashing was asked to stop before the end of the file."""


class Hashes:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.crc = 0
        self.size = 0

    def copy(self) -> Hashes:
        other = Hashes.__new__(Hashes)
        other.sha256, other.md5 = self.sha256.copy(), self.md5.copy()
        other.crc, other.size = self.crc, self.size
        return other

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.md5.update(data)
        self.crc = google_crc32c.extend(self.crc, bytes(data) if isinstance(data, memoryview) else data)
        self.size += len(data)

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(self.md5.digest()).decode("ascii")

    @property
    def crc32c_b64(self) -> str:
        return base64.b64encode(self.crc.to_bytes(4, "big")).decode("ascii")

    def result(self) -> ArchiveDigest:
        return ArchiveDigest(self.size, self.sha256.hexdigest(), self.md5_b64, self.crc32c_b64)

    @classmethod
    def of_file(cls, path: Path, length: int | None = None, stop: threading.Event | None = None) -> Hashes:
        """Hash the first ``length`` bytes of ``path`` (all when None) in one streaming pass, flat memory.
        Raises :class:`Stopped` when ``stop`` is set first (a thread cannot be cancelled; exit waits)."""
        h = cls()
        for data in _blocks(path, length, stop):
            h.update(data)
        return h


class HashPipeline:
    """:class:`Hashes` of a stream of buffers, computed by worker threads while the caller goes on
    reading and writing the next ones (hashlib releases the GIL, so the hashes run beside the I/O).

    Two stages, each its own thread, each buffer passing through both in order: md5 (the slowest,
    ~1.2 s per GiB here) alone, then sha256 + crc32c. The buffers come from a fixed pool (``buffers``
    of ``size`` bytes, allocated once): :meth:`take` blocks while all are in flight, which bounds both
    the memory and how far the caller runs ahead. The caller fills a buffer and hands it to
    :meth:`give` (its first ``n`` bytes are hashed, then it returns to the pool), or returns it
    unhashed with :meth:`put_back`; it must not touch a buffer once given.

    :meth:`mark` remembers the state after everything given so far and :meth:`rewind` goes back to
    it (what a rolled-back work order needs); :meth:`hashes` waits for the workers and returns a copy
    of the state. A worker's error is raised by the next :meth:`give`, :meth:`hashes` or
    :meth:`rewind`. Not thread-safe: one caller thread. :meth:`close` stops the workers (also done
    when the pipeline is garbage-collected).
    """

    def __init__(self, buffers: int = 8, size: int = _READ) -> None:
        if buffers < 1 or size < 1:
            raise ValueError("a pipeline needs at least one buffer of at least one byte")
        self.buffer_size = size
        self._state = Hashes()
        self._mark = self._state.copy()
        self._error: list[BaseException] = []  # a worker's first error (a list: shared with workers)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(size))
        first: queue.SimpleQueue[object] = queue.SimpleQueue()
        second: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._inbox = first
        state, mark = self._state, self._mark

        def md5(view: memoryview) -> None:
            state.md5.update(view)

        def mark_md5() -> None:
            mark.md5 = state.md5.copy()

        def rest(view: memoryview) -> None:
            state.sha256.update(view)
            crc = state.crc
            for i in range(0, len(view), _CRC_PIECE):  # it takes bytes only: copy a cache-sized piece
                crc = google_crc32c.extend(crc, bytes(view[i : i + _CRC_PIECE]))
            state.crc = crc
            state.size += len(view)

        def mark_rest() -> None:
            mark.sha256, mark.crc, mark.size = state.sha256.copy(), state.crc, state.size

        free, error = self._free, self._error
        self._threads = [
            threading.Thread(target=_hash_stage, args=(first, md5, mark_md5, second, free, error),
                             name="hash-md5", daemon=True),
            threading.Thread(target=_hash_stage, args=(second, rest, mark_rest, None, free, error),
                             name="hash-sha256", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._finalizer = weakref.finalize(self, first.put, _STOP)  # the threads never refer to self

    def take(self) -> bytearray:
        """A free buffer of ``buffer_size`` bytes; waits while all are being hashed."""
        self._check_open()
        return self._free.get()

    def give(self, buf: bytearray, n: int) -> None:
        """Hash ``buf[:n]`` after everything given before, then return ``buf`` to the pool."""
        self._check_open()
        self._raise()  # before taking it: the caller still owns ``buf`` when this raises
        self._inbox.put((buf, n))

    def put_back(self, buf: bytearray) -> None:
        """Return a taken buffer without hashing it."""
        self._free.put(buf)

    def mark(self) -> None:
        self._check_open()
        self._inbox.put(_MARK)

    def rewind(self) -> None:
        """Back to the state at the last :meth:`mark` (the start when there was none)."""
        self._drain()
        self._raise()
        restored = self._mark.copy()
        self._state.sha256, self._state.md5 = restored.sha256, restored.md5
        self._state.crc, self._state.size = restored.crc, restored.size

    def hashes(self) -> Hashes:
        """Wait until everything given is hashed; a copy of the state then."""
        self._drain()
        self._raise()
        return self._state.copy()

    def close(self) -> None:
        """Stop the workers (after what was given); idempotent."""
        if self._finalizer.detach():
            self._inbox.put(_STOP)
            for t in self._threads:
                t.join()

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise RuntimeError("this HashPipeline is closed")

    def _drain(self) -> None:
        self._check_open()
        done = threading.Event()
        self._inbox.put(done)
        done.wait()

    def _raise(self) -> None:
        if self._error:
            raise self._error[0]


_MARK, _STOP = object(), object()


def _hash_stage(inbox: queue.SimpleQueue[object], update: Callable[[memoryview], None],
                mark: Callable[[], None], nxt: queue.SimpleQueue[object] | None,
                pool: queue.SimpleQueue[bytearray], error: list[BaseException]) -> None:
    """One stage of a :class:`HashPipeline`: feed each buffer to ``update`` and pass everything on to
    ``nxt``; the last stage (``nxt`` None) returns buffers to ``pool`` and sets the drain events."""
    while True:
        item = inbox.get()
        if not error:
            try:
                if isinstance(item, tuple):
                    update(memoryview(item[0])[: item[1]])
                elif item is _MARK:
                    mark()
            except BaseException as e:  # kept for the caller; the buffers keep flowing regardless
                error.append(e)
        if nxt is not None:
            nxt.put(item)
        elif isinstance(item, tuple):
            pool.put(item[0])
        elif isinstance(item, threading.Event):
            item.set()
        if item is _STOP:
            return


def crc32c_of_file(path: Path, stop: threading.Event | None = None) -> Expected:
    """Size and crc32c only: what ``wodrop upload`` checks the server's copy against. crc32c alone
    detects any damage in transit and costs a tenth of md5 + sha256 (about 0.2 s of CPU per GiB)."""
    crc, size = 0, 0
    for data in _blocks(path, None, stop):
        crc = google_crc32c.extend(crc, data)
        size += len(data)
    return Expected(size, None, base64.b64encode(crc.to_bytes(4, "big")).decode("ascii"))


def _blocks(path: Path, length: int | None, stop: threading.Event | None) -> Iterator[bytes]:
    with path.open("rb") as f:
        while length is None or length > 0:
            data = f.read(_READ if length is None else min(_READ, length))
            if not data:
                return
            if stop is not None and stop.is_set():
                raise Stopped(path)
            yield data
            if length is not None:
                length -= len(data)
