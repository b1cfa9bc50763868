"""The batch archive writer: round trip, order, checksums, rollback, flat memory, zip64 past 4 GiB."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import google_crc32c
import pytest
from helpers.workorders import make_work_order
from wodrop.archive import CHUNK_SIZE, BatchArchiveWriter, SourceChanged
from wodrop.config import FormatConfig
from wodrop.digest import ArchiveDigest
from wodrop.workorder import FileEntry, WorkOrderReport, validate_work_order

UNZIP = shutil.which("unzip")


def digest_of(path: Path) -> ArchiveDigest:
    """Checksums of a finished file computed independently of the writer."""
    sha, md5, crc = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
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


def test_round_trip_order_junk_and_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    wo1 = make_work_order(src, "WO_1", images=["B.jpg", "A-10.jpg", "A-2.png", "C-0.JPG"],
                          metadata={"a": 1}, parameters={"b": 2}, image_size=300_000,
                          extra_files={".DS_Store": b"junk", "._A-2.png": b"junk", ".ready": b""})
    (wo1 / "@eaDir").mkdir()
    wo2 = make_work_order(src, "WO_2", images=["task_A-0.jpg"], image_size=CHUNK_SIZE * 3 + 17)
    reports = [validated(wo1), validated(wo2)]

    out = tmp_path / "batch.zip"
    writer = BatchArchiveWriter(out)
    grew = [writer.add_work_order(r) for r in reports]
    assert writer.size == sum(grew) == out.stat().st_size
    digest = writer.close()

    assert digest == digest_of(out)
    assert digest.size == writer.size
    unzip_test(out)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [
            "WO_1/metadata.json", "WO_1/parameters.json", "WO_1/C-0.JPG", "WO_1/A-2.png", "WO_1/A-10.jpg",
            "WO_1/B.jpg", "WO_2/task_A-0.jpg",
        ]
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert zf.read(info) == (src / info.filename).read_bytes()
            # local header: version 4.5 and a zip64 extra field (id 1), as forced
            assert zf.fp is not None
            zf.fp.seek(info.header_offset)
            header = zf.fp.read(30 + len(info.filename.encode()) + 20)
            version, = struct.unpack("<H", header[4:6])
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            extra = header[30 + name_len:]
            assert version >= 45 and extra_len >= 20 and extra[:2] == b"\x01\x00"


def test_source_changed_rolls_back_and_writer_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    good = validated(make_work_order(src, "WO_1", images=["A.jpg"], image_size=50_000))
    grows = validated(make_work_order(src, "WO_2", images=["A.jpg", "B.jpg"], image_size=2 * CHUNK_SIZE))
    shrinks = validated(make_work_order(src, "WO_3", images=["A.jpg"], image_size=50_000))
    gone = validated(make_work_order(src, "WO_4", images=["A.jpg", "B.jpg"]))
    late = validated(make_work_order(src, "WO_5", images=["A.jpg"]))

    writer = BatchArchiveWriter(tmp_path / "batch.zip")
    writer.add_work_order(good)
    size = writer.size
    with open(src / "WO_2" / "B.jpg", "ab") as f:  # the second file: the first is already in
        f.write(b"more")
    with open(src / "WO_3" / "A.jpg", "r+b") as f:
        f.truncate(10_000)
    (src / "WO_4" / "B.jpg").unlink()
    for report, file in ((grows, "B.jpg"), (shrinks, "A.jpg"), (gone, "B.jpg")):
        with pytest.raises(SourceChanged) as exc:
            writer.add_work_order(report)
        assert (exc.value.work_order, exc.value.file) == (report.id, file)
        assert writer.size == size == (tmp_path / "batch.zip").stat().st_size
    writer.add_work_order(late)
    digest = writer.close()

    assert digest == digest_of(tmp_path / "batch.zip")
    unzip_test(tmp_path / "batch.zip")
    with zipfile.ZipFile(tmp_path / "batch.zip") as zf:
        assert zf.testzip() is None
        assert zf.namelist() == ["WO_1/A.jpg", "WO_5/A.jpg"]
        assert zf.read("WO_5/A.jpg") == (src / "WO_5" / "A.jpg").read_bytes()


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
    with zipfile.ZipFile(tmp_path / "batch.zip") as zf:
        assert zf.namelist() == ["WO_1/A.jpg"]


def test_abort_removes_the_partial_archive(tmp_path: Path) -> None:
    writer = BatchArchiveWriter(tmp_path / "batch.zip")
    writer.add_work_order(validated(make_work_order(tmp_path, "WO_1", images=["A.jpg"])))
    writer.abort()
    assert not (tmp_path / "batch.zip").exists()


def test_memory_stays_flat(tmp_path: Path) -> None:
    """A 96 MiB source file (sparse: cheap to make) is streamed, not loaded."""
    big = tmp_path / "WO_1" / "A.jpg"
    big.parent.mkdir()
    size = 96 * CHUNK_SIZE
    with open(big, "wb") as f:
        f.truncate(size)
    report = WorkOrderReport("WO_1", big.parent, files=[FileEntry("A.jpg", big, size)])
    writer = BatchArchiveWriter(tmp_path / "batch.zip")
    tracemalloc.start()
    try:
        writer.add_work_order(report)
        digest = writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * CHUNK_SIZE, f"peak {peak} bytes while packing {size}"
    assert digest.size > size


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

    with zipfile.ZipFile(out) as zf:
        first, second = zf.infolist()
        assert second.header_offset > 2 * 1024**3 and first.file_size == second.file_size == part
        assert zf.fp is not None
        zf.fp.seek(second.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", zf.fp.read(4))
        zf.fp.seek(name_len + extra_len + part - 4, os.SEEK_CUR)
        assert zf.fp.read(4) == b"A-1."  # the data is where the zip64 central directory says
    if UNZIP:  # unzip's own zip64 reading (-lv: the central directory; -t would re-read 4 GiB)
        listing = subprocess.run([UNZIP, "-lv", str(out)], capture_output=True, text=True, check=False)
        assert listing.returncode == 0 and "WO_1/A-1.jpg" in listing.stdout, listing.stdout + listing.stderr
