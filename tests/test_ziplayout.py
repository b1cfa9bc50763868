"""The zip byte layout: byte for byte what Python's zipfile writes, and read back by zipfile (and unzip).

zipfile is the reference twice over: its writer (``zf.open(info, "w", force_zip64=True)``, what the
batch writer used before it wrote zips itself) must produce the very same bytes, and its reader must
read what we lay out, zip64 fields included (offsets past 4 GiB in a sparse file, more than 65,535
entries).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wodrop.ziplayout import (
    FILE_ATTR,
    UTF8_NAME,
    ZIP64_LIMIT,
    central_record,
    dos_date_time,
    encode_name,
    end_records,
    local_header,
    local_header_size,
)

DateTime = tuple[int, int, int, int, int, int]
Member = tuple[str, DateTime, bytes]
UNZIP = shutil.which("unzip")


def by_zipfile(members: list[Member]) -> bytes:
    """What zipfile writes for these members, opened the way the batch writer used to open them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, date_time, data in members:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = len(data)
            info.external_attr = FILE_ATTR
            with zf.open(info, "w", force_zip64=True) as f:
                f.write(data)
    return out.getvalue()


def by_layout(members: list[Member]) -> bytes:
    out, central = bytearray(), []
    for name, date_time, data in members:
        raw, flags = encode_name(name)
        dos_time, dos_date = dos_date_time(date_time)
        crc = zlib.crc32(data)
        central.append(central_record(raw, flags, crc, len(data), dos_time, dos_date, len(out)))
        header = local_header(raw, flags, crc, len(data), dos_time, dos_date)
        assert len(header) == local_header_size(raw)
        out += header + data
    directory = b"".join(central)
    return bytes(out + directory + end_records(len(central), len(out), len(directory)))


class _At(io.BytesIO):
    """A file that says it is ``base`` bytes further on than it is: zipfile's central directory for
    offsets past 4 GiB without writing 4 GiB first."""

    def __init__(self, base: int) -> None:
        super().__init__()
        self.base = base

    def tell(self) -> int:
        return self.base + super().tell()


def zipfile_directory(entries: list[tuple[str, int, int, int]], cd_offset: int) -> bytes:
    """zipfile's central directory and end records for entries (name, size, crc, header offset) whose
    directory starts at ``cd_offset``: the ZipInfo objects as zf.open(..., force_zip64=True) leaves
    them, then its (private) end-record writer, into a file positioned at ``cd_offset``."""
    zf = zipfile.ZipFile(io.BytesIO(), "w", allowZip64=True)
    for name, size, crc, offset in entries:
        info = zipfile.ZipInfo(name, date_time=(2024, 2, 29, 13, 37, 42))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = info.compress_size = size
        info.CRC, info.header_offset, info.external_attr = crc, offset, FILE_ATTR
        info.FileHeader(zip64=True)  # what zf.open(force_zip64=True) does: versions become 4.5
        zf.filelist.append(info)
    zf.fp, zf.start_dir = _At(cd_offset), cd_offset
    zf._write_end_record()
    written = zf.fp.getvalue()
    zf.fp = None  # closed: nothing more to write
    return written


def our_directory(entries: list[tuple[str, int, int, int]], cd_offset: int) -> bytes:
    dos_time, dos_date = dos_date_time((2024, 2, 29, 13, 37, 42))
    records = []
    for name, size, crc, offset in entries:
        raw, flags = encode_name(name)
        records.append(central_record(raw, flags, crc, size, dos_time, dos_date, offset))
    directory = b"".join(records)
    return directory + end_records(len(records), cd_offset, len(directory))


_names = st.text(st.sampled_from("abcXYZ019_-./ é日本"), min_size=1, max_size=40).filter(
    lambda n: not n.startswith("/"))
_times = st.tuples(st.integers(1980, 2107), st.integers(1, 12), st.integers(1, 31), st.integers(0, 23),
                   st.integers(0, 59), st.integers(0, 59))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_names, _times, st.binary(max_size=2000)), max_size=6, unique_by=lambda m: m[0]))
def test_an_archive_is_byte_for_byte_what_zipfile_writes(members: list[Member]) -> None:
    ours = by_layout(members)
    assert ours == by_zipfile(members)
    with zipfile.ZipFile(io.BytesIO(ours)) as zf:
        assert zf.testzip() is None
        assert [(i.filename, i.date_time[:5], zf.read(i)) for i in zf.infolist()] == [
            (n, dt[:5], data) for n, dt, data in members]


@pytest.mark.parametrize("size", [0, 5, ZIP64_LIMIT, ZIP64_LIMIT + 1, 2**32 - 1, 2**32, 2**32 + 7, 2**40])
def test_local_header_is_zipfiles_at_any_size(size: int) -> None:
    """Always the zip64 form (sizes in the extra field), CRC and sizes final: nothing to patch later."""
    info = zipfile.ZipInfo("WO_1/Ä-1.jpg", date_time=(2001, 9, 9, 1, 46, 41))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = info.compress_size = size
    info.CRC = 0xDEADBEEF
    raw, flags = encode_name(info.filename)
    assert flags == UTF8_NAME
    assert local_header(raw, flags, 0xDEADBEEF, size, *dos_date_time(info.date_time)) == info.FileHeader(True)


@pytest.mark.parametrize(("entries", "cd_offset"), [
    pytest.param([("a", 1, 1, 0), ("b", 2, 2, 60)], 200, id="small"),
    pytest.param([("a", 3 * 2**30, 1, 0), ("b", 2, 2, 3 * 2**30 + 60)], 3 * 2**30 + 120, id="big-size"),
    pytest.param([("a", 1, 1, ZIP64_LIMIT), ("b", 1, 1, ZIP64_LIMIT + 1)], ZIP64_LIMIT + 100,
                 id="offsets-at-the-limit"),
    pytest.param([("a", 5 * 2**30, 1, 0), ("b", 2**32, 2, 5 * 2**30 + 60), ("c", 0, 0, 9 * 2**30 + 200)],
                 9 * 2**30 + 300, id="sizes-and-offsets-past-4GiB"),
    pytest.param([("a", 1, 1, 0)], ZIP64_LIMIT - 10, id="directory-just-below-the-limit"),
    pytest.param([(f"{i:05d}", 0, 0, 56 * i) for i in range(70_000)], 56 * 70_000, id="70000-entries"),
])
def test_central_directory_and_end_records_are_zipfiles(entries: list[tuple[str, int, int, int]],
                                                        cd_offset: int) -> None:
    assert our_directory(entries, cd_offset) == zipfile_directory(entries, cd_offset)


def test_more_than_65535_entries_are_read_back() -> None:
    members: list[Member] = [(f"WO_{i // 100:04d}/{i % 100:02d}.jpg", (2020, 1, 1, 0, 0, 0), b"")
                             for i in range(65_536)]
    members.append(("WO_last/x.jpg", (2020, 1, 1, 0, 0, 0), b"tail"))
    ours = by_layout(members)
    assert b"PK\x06\x06" in ours[-200:]  # the zip64 end record is there
    with zipfile.ZipFile(io.BytesIO(ours)) as zf:
        names = zf.namelist()
        assert len(names) == 65_537 and names[-1] == "WO_last/x.jpg"
        assert zf.read("WO_last/x.jpg") == b"tail"


def test_offsets_past_4gib_are_read_back_by_zipfile_and_unzip(tmp_path: Path) -> None:
    """A sparse file: a member, a hole up to 5 GiB, a member there, then the central directory."""
    path = tmp_path / "sparse.zip"
    dos_time, dos_date = dos_date_time((2024, 5, 6, 7, 8, 10))
    records = []
    with open(path, "wb") as f:
        for name, data, offset in (("WO_1/A.jpg", b"first", 0), ("WO_2/B.jpg", b"second", 5 * 2**30)):
            raw, flags = encode_name(name)
            crc = zlib.crc32(data)
            f.seek(offset)
            f.write(local_header(raw, flags, crc, len(data), dos_time, dos_date) + data)
            records.append(central_record(raw, flags, crc, len(data), dos_time, dos_date, offset))
        cd_offset = f.tell()
        directory = b"".join(records)
        f.write(directory + end_records(len(records), cd_offset, len(directory)))
    with zipfile.ZipFile(path) as zf:
        first, second = zf.infolist()
        assert second.header_offset == 5 * 2**30
        assert zf.read(first) == b"first" and zf.read(second) == b"second"  # CRCs checked
        assert second.date_time == (2024, 5, 6, 7, 8, 10)
    if UNZIP:
        out = subprocess.run([UNZIP, "-p", str(path), "WO_2/B.jpg"], capture_output=True, check=False)
        assert out.returncode == 0 and out.stdout == b"second", out.stderr


def test_names_and_times() -> None:
    assert encode_name("WO_1/A-0.jpg") == (b"WO_1/A-0.jpg", 0)
    assert encode_name("WO_é/日本.jpg") == ("WO_é/日本.jpg".encode(), UTF8_NAME)
    with pytest.raises(UnicodeEncodeError):
        encode_name("WO_1/\udcff.jpg")  # a name that was not UTF-8 on disk (surrogateescape)
    # zip times: 2-second resolution (an odd second goes down), 1980 to 2107 only
    assert dos_date_time((1980, 1, 1, 0, 0, 1)) == (0, 1 << 5 | 1)
    assert dos_date_time((2107, 12, 31, 23, 59, 59)) == (23 << 11 | 59 << 5 | 29, 127 << 9 | 12 << 5 | 31)
    for year in (1979, 2108):
        with pytest.raises(ValueError, match="1980 to 2107"):
            dos_date_time((year, 1, 1, 0, 0, 0))
