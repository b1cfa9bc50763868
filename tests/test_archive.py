"""The batch archive writer: round trip, order, checksums, rollback, flat memory, zip64 past 4 GiB.

The archive must be the one zipfile would write (byte for byte), readable by zipfile and ``unzip -t``,
and its digest that of the finished file, computed here independently. Files that fit in one buffer
take the one-read path, bigger ones the two-pass one; both are covered, and the boundary between.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import google_crc32c
import pytest
from helpers.workorders import make_work_order
from wodrop.archive import BUFFER_SIZE, BUFFERS, BatchArchiveWriter, SourceChanged
from wodrop.config import FormatConfig
from wodrop.digest import ArchiveDigest, Hashes, HashPipeline
from wodrop.workorder import FileEntry, WorkOrderReport, validate_work_order
from wodrop.ziplayout import FILE_ATTR, LOCAL_HEADER_FIXED

UNZIP = shutil.which("unzip")


def digest_of(path: Path) -> ArchiveDigest:
    """Checksums of a finished file computed independently of the writer."""
    sha, md5, crc = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            crc = google_crc32c.extend(crc, chunk)
    return ArchiveDigest(
        path.stat().st_size, sha.hexdigest(), base64.b64encode(md5.digest()).decode(),
        base64.b64encode(crc.to_bytes(4, "big")).decode(),
    )


def unzip_test(path: Path) -> None:
    if UNZIP:
        out = subprocess.run([UNZIP, "-t", str(path)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout + out.stderr


def validated(folder: Path) -> WorkOrderReport:
    report = validate_work_order(folder, FormatConfig(), ready_marker=".ready")
    assert report.valid, report.errors
    return report


def by_zipfile(reports: list[WorkOrderReport], out: Path) -> bytes:
    """The archive zipfile writes from the same sources, the way the writer used to call it."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for report in reports:
            for entry in report.files:
                t = time.localtime(entry.path.stat().st_mtime)[:6]
                info = zipfile.ZipInfo(f"{report.id}/{entry.name}", date_time=t)
                info.compress_type = zipfile.ZIP_STORED
                info.file_size = entry.size
                info.external_attr = FILE_ATTR
                with zf.open(info, "w", force_zip64=True) as dst:
                    dst.write(entry.path.read_bytes())
    return out.read_bytes()


def numbered(size: int, seed: int) -> bytes:
    """``size`` bytes that differ from one 8-byte word to the next (a misplaced byte shows)."""
    words = b"".join(struct.pack("<Q", seed << 40 | i) for i in range(size // 8 + 1))
    return words[:size]


def hand_made(folder: Path, files: dict[str, bytes]) -> WorkOrderReport:
    """A report for raw files (no validation: any content, any size)."""
    folder.mkdir(parents=True)
    entries = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        entries.append(FileEntry(name, folder / name, len(data)))
    return WorkOrderReport(folder.name, folder, files=entries)


def test_round_trip_order_junk_and_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    wo1 = make_work_order(src, "WO_1", images=["B.jpg", "A-10.jpg", "A-2.png", "C-0.JPG"],
                          metadata={"a": 1}, parameters={"b": 2}, image_size=300_000,
                          extra_files={".DS_Store": b"junk", "._A-2.png": b"junk", ".ready": b""})
    (wo1 / "@eaDir").mkdir()
    wo2 = make_work_order(src, "WO_2", images=["task_A-0.jpg"], image_size=BUFFER_SIZE * 3 + 17)
    reports = [validated(wo1), validated(wo2)]

    out = tmp_path / "batch.zip"
    writer = BatchArchiveWriter(out)
    grew = [writer.add_work_order(r) for r in reports]
    assert writer.size == sum(grew) == out.stat().st_size
    digest = writer.close()

    assert digest == digest_of(out)
    assert digest.size == writer.size
    assert out.read_bytes() == by_zipfile(reports, tmp_path / "reference.zip")
    unzip_test(out)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [
            "WO_1/metadata.json", "WO_1/parameters.json", "WO_1/C-0.JPG", "WO_1/A-2.png", "WO_1/A-10.jpg",
            "WO_1/B.jpg", "WO_2/task_A-0.jpg",
        ]
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits & 0x08 == 0  # no data descriptor: CRC and sizes are in the header
            assert zf.read(info) == (src / info.filename).read_bytes()
            # local header: version 4.5 and a zip64 extra field (id 1), as zipfile forced it
            assert zf.fp is not None
            zf.fp.seek(info.header_offset)
            header = zf.fp.read(30 + len(info.filename.encode()) + 20)
            version, = struct.unpack("<H", header[4:6])
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            extra = header[30 + name_len:]
            assert version >= 45 and extra_len >= 20 and extra[:2] == b"\x01\x00"


def test_sizes_around_the_buffer_boundary(tmp_path: Path) -> None:
    """One read when header + data fit in a buffer, two passes from one byte more; files that just
    fill what is left of a buffer, or do not fit in it; empty files; a UTF-8 name."""
    header = LOCAL_HEADER_FIXED + len("WO_1/a.jpg")  # 60 bytes, for every name below but the last
    fits = BUFFER_SIZE - header
    sizes = {
        "a.jpg": fits,  # exactly one buffer
        "b.jpg": fits + 1,  # two passes; leaves 1 byte in a buffer
        "c.jpg": 0,
        "d.jpg": fits - 1,  # does not fit behind b and c: a new buffer, filled but for 1 byte
        "e.jpg": 1,
        "f.jpg": 2 * BUFFER_SIZE,  # two passes; leaves 60 bytes in a buffer
        "g.jpg": 1000,
        "h.jpg": BUFFER_SIZE - 60 - (header + 1000) - header,  # fills what f and g left
        "Ä-0.jpg": 3,
    }
    report = hand_made(tmp_path / "WO_1", {n: numbered(s, i) for i, (n, s) in enumerate(sizes.items())})
    small = hand_made(tmp_path / "WO_2", {"x.jpg": b"x" * 10})
    out = tmp_path / "batch.zip"
    writer = BatchArchiveWriter(out)
    writer.add_work_order(report)
    writer.add_work_order(small)
    digest = writer.close()
    assert digest == digest_of(out)
    assert out.read_bytes() == by_zipfile([report, small], tmp_path / "reference.zip")
    unzip_test(out)


def test_source_changed_rolls_back_and_writer_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    good = validated(make_work_order(src, "WO_1", images=["A.jpg"], image_size=50_000))
    grows = validated(make_work_order(src, "WO_2", images=["A.jpg", "B.jpg"], image_size=2 * 2**20))
    shrinks = validated(make_work_order(src, "WO_3", images=["A.jpg"], image_size=50_000))
    gone = validated(make_work_order(src, "WO_4", images=["A.jpg", "B.jpg"]))
    # big files (two passes): the first is in the archive, written and hashed, when the second fails
    big_grows = validated(make_work_order(src, "WO_6", images=["A.jpg", "B.jpg"], image_size=3 * BUFFER_SIZE))
    big_shrinks = validated(make_work_order(src, "WO_7", images=["A.jpg", "B.jpg"],
                                            image_size=3 * BUFFER_SIZE))
    late = validated(make_work_order(src, "WO_5", images=["A.jpg"]))

    writer = BatchArchiveWriter(tmp_path / "batch.zip")
    writer.add_work_order(good)
    size = writer.size
    with open(src / "WO_2" / "B.jpg", "ab") as f:  # the second file: the first is already in
        f.write(b"more")
    with open(src / "WO_3" / "A.jpg", "r+b") as f:
        f.truncate(10_000)
    (src / "WO_4" / "B.jpg").unlink()
    with open(src / "WO_6" / "B.jpg", "ab") as f:
        f.write(b"more")
    with open(src / "WO_7" / "B.jpg", "r+b") as f:
        f.truncate(BUFFER_SIZE + 5)
    for report, file in ((grows, "B.jpg"), (shrinks, "A.jpg"), (gone, "B.jpg"), (big_grows, "B.jpg"),
                         (big_shrinks, "B.jpg")):
        with pytest.raises(SourceChanged) as exc:
            writer.add_work_order(report)
        assert (exc.value.work_order, exc.value.file) == (report.id, file)
        assert writer.size == size == (tmp_path / "batch.zip").stat().st_size
    writer.add_work_order(late)
    digest = writer.close()

    assert digest == digest_of(tmp_path / "batch.zip")  # the hashes were rolled back too
    unzip_test(tmp_path / "batch.zip")
    with zipfile.ZipFile(tmp_path / "batch.zip") as zf:
        assert zf.testzip() is None
        assert zf.namelist() == ["WO_1/A.jpg", "WO_5/A.jpg"]
        assert zf.read("WO_5/A.jpg") == (src / "WO_5" / "A.jpg").read_bytes()


def test_a_big_file_rewritten_while_it_is_packed_never_gives_a_wrong_crc(tmp_path: Path) -> None:
    """A big file's CRC-32 comes from a first pass; when the copy (second pass) reads other bytes, the
    work order is rolled back. Another process keeps rewriting the file (same size) meanwhile: each
    attempt either packs bytes that match the header's CRC or raises SourceChanged, and at least one
    attempt must catch the change (without the second check, that attempt leaves a corrupt entry)."""
    folder = tmp_path / "WO_1"
    report = hand_made(folder, {"A.jpg": numbered(3 * BUFFER_SIZE, 1)})
    rewriter = subprocess.Popen([sys.executable, "-c", f"""
import os
versions = [bytes([v]) * {BUFFER_SIZE} for v in (2, 3)]
fd = os.open({str(folder / "A.jpg")!r}, os.O_WRONLY)
i = 0
while True:  # the middle third, in place, until killed
    os.pwrite(fd, versions[i % 2], {BUFFER_SIZE})
    i += 1
"""])
    caught = packed = 0
    try:
        for attempt in range(50):
            out = tmp_path / f"batch-{attempt}.zip"
            writer = BatchArchiveWriter(out)
            try:
                writer.add_work_order(report)
                packed += 1
            except SourceChanged as e:
                assert "content changed" in str(e)
                caught += 1
            writer.close()
            assert writer.size == out.stat().st_size
            with zipfile.ZipFile(out) as zf:
                assert zf.testzip() is None  # whatever happened, no entry with a wrong CRC
            out.unlink()
            if caught >= 3:
                break
    finally:
        rewriter.kill()
        rewriter.wait()
    assert caught, f"the file never changed between the passes in {packed} attempts"


def test_refuses_invalid_reports_duplicates_and_existing_files(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    existing = tmp_path / "mine.zip"
    existing.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError):
        BatchArchiveWriter(existing)
    assert existing.read_bytes() == b"a user's file"

    writer = BatchArchiveWriter(tmp_path / "batch.zip")
    writer.add_work_order(validated(wo))
    with pytest.raises(ValueError, match="already in this archive"):
        writer.add_work_order(validated(wo))
    (wo / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not valid"):
        writer.add_work_order(validate_work_order(wo, FormatConfig()))
    writer.close()
    (wo / "notes.txt").unlink()
    with pytest.raises(ValueError, match="is closed"):
        writer.add_work_order(validated(wo))
    with zipfile.ZipFile(tmp_path / "batch.zip") as zf:
        assert zf.namelist() == ["WO_1/A.jpg"]


def test_abort_removes_the_partial_archive_and_stops_the_threads(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    writer = BatchArchiveWriter(tmp_path / "batch.zip")
    writer.add_work_order(validated(make_work_order(tmp_path, "WO_1", images=["A.jpg"])))
    assert len(set(threading.enumerate()) - before) == 3  # md5, sha256 + crc32c, write-back
    writer.abort()
    assert not (tmp_path / "batch.zip").exists()
    assert set(threading.enumerate()) - before == set()


def test_a_forgotten_writer_does_not_leave_threads_or_descriptors_behind(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    fds = set(os.listdir("/proc/self/fd"))
    writer = BatchArchiveWriter(tmp_path / "batch.zip")
    writer.add_work_order(validated(make_work_order(tmp_path, "WO_1", images=["A.jpg"])))
    threads = set(threading.enumerate()) - before
    assert len(threads) == 3
    del writer
    gc.collect()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert set(os.listdir("/proc/self/fd")) <= fds


def test_hash_pipeline_hashes_in_order_rewinds_and_bounds_its_buffers() -> None:
    pipe = HashPipeline(buffers=3, size=1000)
    reference = Hashes()
    seen: set[int] = set()
    pieces = [numbered(n, n) for n in (1000, 1, 0, 999, 500, 1000, 7)]
    for i, data in enumerate(pieces):
        if i == 3:
            pipe.mark()
            mark = reference.copy()
        buf = pipe.take()
        seen.add(id(buf))
        assert len(buf) == 1000
        buf[: len(data)] = data
        pipe.give(buf, len(data))
        reference.update(data)
    assert pipe.hashes().result() == reference.result()
    pipe.rewind()
    assert pipe.hashes().result() == mark.result()
    buf = pipe.take()
    buf[:3] = b"abc"
    pipe.give(buf, 3)
    mark.update(b"abc")
    assert pipe.hashes().result() == mark.result()
    pipe.put_back(pipe.take())
    assert len(seen) <= 3  # the same few buffers, over and over
    pipe.close()
    with pytest.raises(RuntimeError, match="closed"):
        pipe.hashes()  # instead of waiting forever for threads that are gone


def test_memory_stays_flat(tmp_path: Path) -> None:
    """A 96 MiB source file (sparse: cheap to make) is streamed through the writer's fixed buffers."""
    big = tmp_path / "WO_1" / "A.jpg"
    big.parent.mkdir()
    size = 96 * 2**20
    with open(big, "wb") as f:
        f.truncate(size)
    report = WorkOrderReport("WO_1", big.parent, files=[FileEntry("A.jpg", big, size)])
    tracemalloc.start()
    try:
        writer = BatchArchiveWriter(tmp_path / "batch.zip")
        writer.add_work_order(report)
        digest = writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BUFFERS * BUFFER_SIZE + 2**20, f"peak {peak} bytes while packing {size}"
    assert digest.size > size


@pytest.mark.slow
def test_more_than_65535_entries(tmp_path: Path) -> None:
    folder = tmp_path / "WO_1"
    report = hand_made(folder, {f"{i:05d}.jpg": b"%d" % i for i in range(65_540)})
    out = tmp_path / "batch.zip"
    writer = BatchArchiveWriter(out)
    writer.add_work_order(report)
    digest = writer.close()
    assert digest == digest_of(out)
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        assert len(infos) == 65_540
        assert zf.read(infos[-1]) == b"65539"
    unzip_test(out)


@pytest.mark.slow
def test_archive_past_4gib_is_valid_zip64(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two 2.1 GiB sparse files: every size and offset past 4 GiB needs zip64 fields."""
    if shutil.disk_usage(tmp_path).free < 10 * 1024**3:
        pytest.skip("needs 10 GiB free for a > 4 GiB archive")
    folder = tmp_path / "WO_1"
    folder.mkdir()
    part = int(2.1 * 1024**3)
    files = []
    for name in ("A-0.jpg", "A-1.jpg"):
        with open(folder / name, "wb") as f:
            f.truncate(part)
            f.seek(part - 4)
            f.write(name.encode()[:4])  # a distinct tail to find again
        files.append(FileEntry(name, folder / name, part))
    out = tmp_path / "big.zip"
    request.addfinalizer(lambda: out.unlink(missing_ok=True))  # pytest keeps tmp dirs: free 4 GiB now
    writer = BatchArchiveWriter(out)
    writer.add_work_order(WorkOrderReport("WO_1", folder, files=files))
    digest = writer.close()
    assert digest.size == out.stat().st_size > 4 * 1024**3
    assert digest == digest_of(out)

    with zipfile.ZipFile(out) as zf:
        first, second = zf.infolist()
        assert second.header_offset > 2 * 1024**3 and first.file_size == second.file_size == part
        assert zf.fp is not None
        zf.fp.seek(second.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", zf.fp.read(4))
        zf.fp.seek(name_len + extra_len + part - 4, os.SEEK_CUR)
        assert zf.fp.read(4) == b"A-1."  # the data is where the zip64 central directory says
        with zf.open(second) as f:  # and its CRC-32 in the header is right (checked at the end)
            while f.read(16 * 2**20):
                pass
    if UNZIP:  # unzip's own zip64 reading (-lv: the central directory; -t would re-read 4 GiB)
        listing = subprocess.run([UNZIP, "-lv", str(out)], capture_output=True, text=True, check=False)
        assert listing.returncode == 0 and "WO_1/A-1.jpg" in listing.stdout, listing.stdout + listing.stderr
