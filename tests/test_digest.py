"""The one digest helper: the same answers as hashlib/google_crc32c, copies independent, stoppable."""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wodrop.digest import Hashes, Stopped


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_hashes_fed_in_pieces_match_the_reference(pieces: list[bytes]) -> None:
    h = Hashes()
    for p in pieces:
        h.update(memoryview(p))
    whole = b"".join(pieces)
    d = h.result()
    assert d.size == len(whole)
    assert d.sha256 == hashlib.sha256(whole).hexdigest()
    assert d.md5 == base64.b64encode(hashlib.md5(whole).digest()).decode()
    assert d.crc32c == base64.b64encode(google_crc32c.Checksum(whole).digest()).decode()


def test_a_copy_is_independent() -> None:
    h = Hashes()
    h.update(b"abc")
    c = h.copy()
    c.update(b"def")
    assert h.size == 3 and c.size == 6
    assert h.result().sha256 == hashlib.sha256(b"abc").hexdigest()


def test_of_file_hashes_a_prefix_and_can_be_stopped(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 3_000_000)
    assert Hashes.of_file(f, 10).result().sha256 == hashlib.sha256(b"x" * 10).hexdigest()
    assert Hashes.of_file(f).size == 3_000_000
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        Hashes.of_file(f, stop=stop)


def test_crc32c_of_file_is_what_gcs_reports(tmp_path: Path) -> None:
    from wodrop.digest import crc32c_of_file

    f = tmp_path / "a.bin"
    f.write_bytes(b"0123456789" * 300_000)
    expected = crc32c_of_file(f)
    assert expected.size == 3_000_000 and expected.md5 is None
    assert expected.crc32c == Hashes.of_file(f).crc32c_b64
