"""The bytes of a STORED zip archive, laid out exactly as Python's ``zipfile`` writes them.

Pure functions, no I/O: the batch writer (``wodrop.archive``) puts them on disk. What they produce is
byte for byte what ``zipfile.ZipFile(f, "w", ZIP_STORED, allowZip64=True)`` writes on a POSIX system
for members opened with ``zf.open(info, "w", force_zip64=True)`` (tests/test_ziplayout.py compares
the two), so everything that reads our archives today reads them the same way:

- every local header is the zip64 form: version 4.5, 0xFFFFFFFF in both 32-bit size fields and a
  zip64 extra field (id 1) holding the real sizes. The CRC-32 and sizes are final when the header is
  written: nothing is patched afterwards and there is no data descriptor (flag bit 3);
- a central-directory record carries a zip64 extra field only for what does not fit (sizes, then the
  local header's offset, past ``ZIP64_LIMIT``), and keeps version 4.5 like the local header;
- the zip64 end record and its locator are written when there are more than 65,535 entries or the
  central directory starts or ends past ``ZIP64_LIMIT``.

``ZIP64_LIMIT`` is zipfile's (2 GiB - 1), more cautious than the format's 4 GiB - 1: some readers take
the 32-bit fields as signed.
"""

from __future__ import annotations

import stat
import struct

ZIP64_LIMIT = (1 << 31) - 1  # zipfile.ZIP64_LIMIT
FILECOUNT_LIMIT = (1 << 16) - 1  # zipfile.ZIP_FILECOUNT_LIMIT
ZIP64_VERSION = 45  # 4.5: zip64 extensions
CREATE_SYSTEM = 3  # Unix (zipfile writes 3 everywhere but Windows)
UTF8_NAME = 0x800  # general purpose flag bit 11: the name is UTF-8
FILE_ATTR = (stat.S_IFREG | 0o644) << 16  # external attributes: a regular file, rw-r--r--

_LOCAL = struct.Struct("<4s2B4HL2L2H")  # zipfile.structFileHeader
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # zipfile.structCentralDir
_END = struct.Struct("<4s4H2LH")  # zipfile.structEndArchive
_END64 = struct.Struct("<4sQ2H2L4Q")  # zipfile.structEndArchive64
_LOCATOR64 = struct.Struct("<4sLQL")  # zipfile.structEndArchive64Locator
_LOCAL_EXTRA = struct.Struct("<HHQQ")  # zip64 extra field in a local header: both sizes

LOCAL_HEADER_FIXED = _LOCAL.size + _LOCAL_EXTRA.size  # a local header is this plus the name's length


def encode_name(name: str) -> tuple[bytes, int]:
    """The member name's bytes and the flag bits that go with them (ASCII as is, else UTF-8 and bit
    11). UnicodeEncodeError for a name that is not valid Unicode (a lone surrogate)."""
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), UTF8_NAME


def dos_date_time(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    """(time, date) MS-DOS fields for a (year, month, day, hour, minute, second) from 1980 to 2107;
    seconds are stored halved (an odd second goes down). ValueError outside that range."""
    year, month, day, hour, minute, second = date_time
    if not 1980 <= year <= 2107:
        raise ValueError(f"zip timestamps run from 1980 to 2107, not {year}")
    return hour << 11 | minute << 5 | second // 2, (year - 1980) << 9 | month << 5 | day


def local_header_size(name: bytes) -> int:
    return LOCAL_HEADER_FIXED + len(name)


def local_header(name: bytes, flags: int, crc: int, size: int, dos_time: int, dos_date: int) -> bytes:
    """The local file header of a STORED member of ``size`` bytes whose CRC-32 is ``crc``."""
    extra = _LOCAL_EXTRA.pack(1, _LOCAL_EXTRA.size - 4, size, size)
    fixed = _LOCAL.pack(b"PK\x03\x04", ZIP64_VERSION, 0, flags, 0, dos_time, dos_date, crc,
                        0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra))
    return fixed + name + extra


def central_record(name: bytes, flags: int, crc: int, size: int, dos_time: int, dos_date: int,
                   offset: int, external_attr: int = FILE_ATTR) -> bytes:
    """The central-directory record of a STORED member whose local header is at ``offset``."""
    zip64: list[int] = []
    if size > ZIP64_LIMIT:
        zip64 += [size, size]  # uncompressed, then compressed: the order of the spec (and zipfile)
        size32 = 0xFFFFFFFF
    else:
        size32 = size
    if offset > ZIP64_LIMIT:
        zip64.append(offset)
        offset32 = 0xFFFFFFFF
    else:
        offset32 = offset
    extra = struct.pack(f"<HH{len(zip64)}Q", 1, 8 * len(zip64), *zip64) if zip64 else b""
    fixed = _CENTRAL.pack(b"PK\x01\x02", ZIP64_VERSION, CREATE_SYSTEM, ZIP64_VERSION, 0, flags, 0,
                          dos_time, dos_date, crc, size32, size32, len(name), len(extra), 0, 0, 0,
                          external_attr, offset32)
    return fixed + name + extra


def end_records(count: int, cd_offset: int, cd_size: int) -> bytes:
    """What follows the central directory (``count`` records, ``cd_size`` bytes from ``cd_offset``):
    the zip64 end record and locator when needed, then the end-of-central-directory record."""
    out = b""
    if count > FILECOUNT_LIMIT or cd_offset > ZIP64_LIMIT or cd_size > ZIP64_LIMIT:
        out = _END64.pack(b"PK\x06\x06", _END64.size - 12, ZIP64_VERSION, ZIP64_VERSION, 0, 0,
                          count, count, cd_size, cd_offset)
        out += _LOCATOR64.pack(b"PK\x06\x07", 0, cd_offset + cd_size, 1)
        count, cd_size, cd_offset = (min(count, 0xFFFF), min(cd_size, 0xFFFFFFFF),
                                     min(cd_offset, 0xFFFFFFFF))
    return out + _END.pack(b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)
