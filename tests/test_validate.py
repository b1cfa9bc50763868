"""The validator against real folders on disk: every error code, several at once, image edge cases."""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.workorders import image_bytes, jpeg_bytes, make_work_order, png_bytes
from PIL import Image
from wodrop.config import FormatConfig
from wodrop.workorder import WorkOrderReport, find_work_orders, validate_work_order

DEFAULT = FormatConfig()


def codes(report: WorkOrderReport) -> list[tuple[str, str | None]]:
    return [(e.code, e.file) for e in report.errors]


def only(report: WorkOrderReport, code: str, file: str | None) -> str:
    """Assert the report holds exactly this one problem; return its message."""
    assert codes(report) == [(code, file)], report.errors
    assert not report.valid
    return report.errors[0].message


def check(folder: Path, fmt: FormatConfig = DEFAULT, **kw: object) -> WorkOrderReport:
    return validate_work_order(folder, fmt, **kw)  # type: ignore[arg-type]


def test_valid_folder_and_processing_order(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["B.jpg", "A-10.JPG", "A-2.png", "C-0.jpeg"],
                         metadata={"a": 1}, parameters={"b": 2})
    report = check(wo)
    assert report.valid and report.errors == []
    assert [f.name for f in report.files] == [
        "metadata.json", "parameters.json", "C-0.jpeg", "A-2.png", "A-10.JPG", "B.jpg"]
    assert report.total_bytes == sum((wo / f.name).stat().st_size for f in report.files)
    assert all(f.path == wo / f.name for f in report.files)
    assert report.to_dict() == {
        "id": "WO_1", "path": str(wo), "valid": True, "errors": [],
        "files": [f.name for f in report.files],
    }


def test_junk_and_ready_marker_are_ignored_and_not_archived(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"], extra_files={
        ".DS_Store": b"x", "Thumbs.db": b"x", "desktop.ini": b"x", "._A.jpg": b"x", ".ready": b""})
    (wo / "@eaDir").mkdir()
    (wo / "@eaDir" / "A.jpg@SynoEAStream").write_bytes(b"x")
    (wo / "#recycle").mkdir()
    report = check(wo, ready_marker=".ready")
    assert report.valid, report.errors
    assert [f.name for f in report.files] == ["A.jpg"]
    # without the marker configured, .ready is an ordinary (unsupported, empty) file
    assert ("unsupported_file", ".ready") in codes(check(wo))


def test_bad_work_order_id(tmp_path: Path) -> None:
    msg = only(check(make_work_order(tmp_path, "WO 1", images=["A.jpg"])), "bad_work_order_id", None)
    assert "'WO 1'" in msg and "Rename the folder" in msg
    custom = FormatConfig(work_order_id_pattern=r"WO_\d+")
    assert check(make_work_order(tmp_path, "WO_12", images=["A.jpg"]), custom).valid
    # fullmatch, not search
    report = check(make_work_order(tmp_path, "WO_12x", images=["A.jpg"]), custom)
    msg = only(report, "bad_work_order_id", None)
    assert r"WO_\d+" in msg


@pytest.mark.parametrize(("name", "why"), [
    ("-1.jpg", "no task-group name"),
    (".jpg", "no task-group name"),
    ("A-.PNG", "ends with '-'"),
])
def test_bad_image_name(tmp_path: Path, name: str, why: str) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg", name])
    assert why in only(check(wo), "bad_image_name", name)


@pytest.mark.parametrize(("name", "hint"), [
    ("notes.txt", "Remove it"),
    ("A-1.jpg.part", "still being copied"),
    ("~$sheet.xlsx", "still being copied"),
    ("Metadata.json", "metadata.json exactly"),
    ("A.gif", "accepts only JPEG and PNG"),
    ("A.HEIC", "accepts only JPEG and PNG"),
    ("B-2.jfif", "B-2.jfif is a JPEG photo by its name (.jfif is JPEG), but the platform takes only .jpg, "
                 ".jpeg and .png names. Rename it to B-2.jpg."),
    ("B.JPE", "Rename it to B.jpg."),
])
def test_unsupported_file(tmp_path: Path, name: str, hint: str) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"], extra_files={name: b"data"})
    assert hint in only(check(wo), "unsupported_file", name)


def test_a_jfif_photo_renamed_as_suggested_is_valid(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=[], extra_files={"A-1.jfif": jpeg_bytes()})
    report = check(wo)
    assert codes(report) == [("unsupported_file", "A-1.jfif"), ("no_images", None)]
    assert report.errors[0].message.endswith("Rename it to A-1.jpg.")
    (wo / "A-1.jfif").rename(wo / "A-1.jpg")
    assert check(wo).valid


def test_unknown_task_group(tmp_path: Path) -> None:
    fmt = FormatConfig(task_groups=["task_A", "task_B"])
    wo = make_work_order(tmp_path, "WO_1", images=["task_A-0.jpg", "Task_B.jpg", "task_C-1.png"])
    report = check(wo, fmt)
    assert codes(report) == [("unknown_task_group", "Task_B.jpg"), ("unknown_task_group", "task_C-1.png")]
    assert "Did you mean task_B?" in report.errors[0].message
    assert "task_A, task_B" in report.errors[1].message
    assert check(wo).valid  # an empty list means any task group


@pytest.mark.parametrize("names", [
    ["A-1.jpg", "A-1.png"],
    ["A.jpg", "A.png"],
    ["A-1.jpg", "A-01.jpg"],
    ["A-1.jpg", "A-1.JPEG"],
])
def test_duplicate_image(tmp_path: Path, names: list[str]) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=names)
    first, second = sorted(names)
    assert first in only(check(wo), "duplicate_image", second)


def test_same_number_in_different_groups_is_fine(tmp_path: Path) -> None:
    assert check(make_work_order(tmp_path, "WO_1", images=["A-1.jpg", "B-1.jpg", "A.jpg", "A-2.png"])).valid


@pytest.mark.parametrize(("name", "content", "found"), [
    ("A.jpg", png_bytes(), "a PNG image"),
    ("A.png", jpeg_bytes(), "a JPEG image"),
    ("A.jpg", b"GIF89a" + b"x" * 50, "a GIF image"),
    ("A.jpeg", b"\x00\x00\x00\x18ftypheic" + b"x" * 50, "HEIC"),
    ("A.png", b"<html>not an image</html>", "something else"),
])
def test_image_content_mismatch(tmp_path: Path, name: str, content: bytes, found: str) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=[], extra_files={name: content})
    assert found in only(check(wo), "image_content_mismatch", name)


@pytest.mark.parametrize(("name", "content"), [
    ("A.jpg", jpeg_bytes()[:-2]),                        # EOI missing
    ("A.jpg", jpeg_bytes()[: len(jpeg_bytes()) // 2]),   # half a JPEG
    ("A.png", png_bytes()[:-12]),                        # IEND missing
    ("A.png", png_bytes()[:20]),
    ("A.jpg", b"\xff\xd8"),                              # shorter than the signature
    ("A.jpg", bytes(5000)),                              # pre-sized, nothing written yet
])
def test_truncated_image(tmp_path: Path, name: str, content: bytes) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=[], extra_files={name: content})
    only(check(wo), "truncated_image", name)


@pytest.mark.parametrize("name", ["A.jpg", "A.png"])
def test_windows_presized_copy_in_progress_is_truncated(tmp_path: Path, name: str) -> None:
    """Explorer sizes the file first, then fills it: right size, real head, zero tail."""
    full = image_bytes(name, pad_to=200_000) if name.endswith("jpg") else png_bytes(400, 400)
    wo = make_work_order(tmp_path, "WO_1", images=[], extra_files={name: full})
    assert check(wo).valid
    with open(wo / name, "r+b") as f:
        f.seek(len(full) // 3)
        f.write(bytes(len(full) - len(full) // 3))
    assert (wo / name).stat().st_size == len(full)
    only(check(wo), "truncated_image", name)


def test_jpeg_and_png_with_trailing_zero_padding_are_accepted(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=[], extra_files={
        "A.jpg": jpeg_bytes() + bytes(3000), "B.png": png_bytes() + bytes(100)})
    assert check(wo).valid
    assert check(wo, FormatConfig(image_check="decode")).valid


def _corrupt_png() -> bytes:
    """Signature and IEND intact, IDAT data garbage (with a valid CRC, so only decoding notices)."""
    import struct
    import zlib
    raw = png_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    garbage = b"\x78\x9c" + b"\xde\xad\xbe\xef" * 8
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + garbage))
    idat = struct.pack(">I", len(garbage)) + b"IDAT" + garbage + crc
    return raw[:ihdr_end] + idat + raw[-12:]


@pytest.mark.parametrize(("name", "content"), [
    ("A.jpg", b"\xff\xd8\xff\xe0" + os.urandom(2000).replace(b"\xff", b"\x00") + b"\xff\xd9"),
    ("A.png", _corrupt_png()),
])
def test_decode_mode_rejects_corrupt_but_well_framed(tmp_path: Path, name: str, content: bytes) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=[], extra_files={name: content})
    assert check(wo).valid  # the markers are right...
    msg = only(check(wo, FormatConfig(image_check="decode")), "truncated_image", name)
    assert "damaged" in msg  # ...but it does not decode


def test_decode_mode_accepts_real_images(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buf, format="PNG")
    wo = make_work_order(tmp_path, "WO_1", images=["A-0.jpg", "B.png"], extra_files={"C.PNG": buf.getvalue()})
    assert check(wo, FormatConfig(image_check="decode")).valid


def test_empty_file(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"], extra_files={"B-1.png": b""})
    assert "0 bytes" in only(check(wo), "empty_file", "B-1.png")


@pytest.mark.parametrize(("content", "says"), [
    (b'{\n  "a": 1\n  "b": 2\n}', "metadata.json is not valid JSON (line 3: Expecting ',' delimiter)"),
    (b"[1, 2]", "metadata.json must hold a JSON object ({...}), not a list"),
    (b'"text"', "not a string"),
    (b"\xef\xbb\xbf{}", "byte-order mark"),
    (b'{"a": "caf\xe9"}', "is not UTF-8 text"),
    (b'{"a": NaN}', "NaN is not allowed"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_invalid_json(tmp_path: Path, content: bytes, says: str) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"], extra_files={"metadata.json": content})
    assert says in only(check(wo), "invalid_json", "metadata.json")


def test_missing_metadata_and_parameters(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    fmt = FormatConfig(require_metadata=True, require_parameters=True)
    assert codes(check(wo, fmt)) == [
        ("missing_metadata", "metadata.json"), ("missing_parameters", "parameters.json")]
    # required keys imply the file is required
    report = check(wo, FormatConfig(required_parameter_keys=["site"]))
    assert "holding the keys site" in only(report, "missing_parameters", "parameters.json")
    # present but broken: the JSON error, not "missing" too
    (wo / "metadata.json").write_bytes(b"")
    assert codes(check(wo, FormatConfig(require_metadata=True))) == [("empty_file", "metadata.json")]


def test_missing_required_key(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"], metadata={"site": 1}, parameters={"x": 1})
    fmt = FormatConfig(required_metadata_keys=["site"], required_parameter_keys=["date", "x", "tech"])
    msg = only(check(wo, fmt), "missing_required_key", "parameters.json")
    assert "required keys date, tech" in msg


def test_no_images(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=[], metadata={"a": 1})
    assert "at least one JPEG or PNG" in only(check(wo), "no_images", None)


def test_nested_directory(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    (wo / "photos").mkdir()
    (wo / "photos" / "B.jpg").write_bytes(jpeg_bytes())
    only(check(wo), "nested_directory", "photos")


def test_symlinks_are_refused_and_never_followed(tmp_path: Path) -> None:
    outside = make_work_order(tmp_path, "elsewhere", images=["A.jpg"])
    wo = make_work_order(tmp_path, "WO_1", images=["B.jpg"])
    (wo / "A.jpg").symlink_to(outside / "A.jpg")
    (wo / "C.jpg").symlink_to(tmp_path / "missing.jpg")
    (wo / "sub").symlink_to(outside, target_is_directory=True)
    report = check(wo)
    assert codes(report) == [("not_a_regular_file", n) for n in ("A.jpg", "C.jpg", "sub")]
    assert "symbolic link" in report.errors[0].message
    assert [f.name for f in report.files] == ["B.jpg"]


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["B.jpg"])
    os.mkfifo(wo / "A.jpg")  # opening it for reading would block forever
    assert "named pipe" in only(check(wo), "not_a_regular_file", "A.jpg")


def _as_unprivileged(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a child process as ``nobody`` when we are root (root ignores file permissions)."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir an unprivileged child can enter (pytest's tmp_path is private to its user)."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        yield Path(d)


def test_unreadable(shared_tmp: Path) -> None:
    wo = make_work_order(shared_tmp, "WO_1", images=["A.jpg", "B.jpg"])
    os.chmod(wo, 0o755)
    os.chmod(wo / "B.jpg", 0)
    report = _as_unprivileged(lambda: check(wo).to_dict())
    assert [(e["code"], e["file"]) for e in report["errors"]] == [("unreadable", "B.jpg")]
    assert "Permission denied" in report["errors"][0]["message"]
    os.chmod(wo, 0)
    report = _as_unprivileged(lambda: check(wo).to_dict())
    assert [(e["code"], e["file"]) for e in report["errors"]] == [("unreadable", None)]


def test_duplicate_work_order(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    asked: list[str] = []

    def uploaded(name: str) -> bool:
        asked.append(name)
        return True

    assert "already been uploaded" in only(check(wo, is_duplicate=uploaded), "duplicate_work_order", None)
    assert asked == ["WO_1"]
    assert check(wo, FormatConfig(on_duplicate="allow"), is_duplicate=uploaded).valid
    assert asked == ["WO_1"]  # not even asked when duplicates are allowed
    assert check(wo, is_duplicate=lambda name: False).valid


def test_every_problem_of_a_folder_is_reported(tmp_path: Path) -> None:
    fmt = FormatConfig(task_groups=["A", "B"], require_parameters=True, required_metadata_keys=["site"])
    wo = make_work_order(tmp_path, "WO 9", images=["A-1.jpg", "A-01.png", "-3.jpg", "Z.jpg"], extra_files={
        "metadata.json": b'{"other": 1}', "readme.txt": b"hi", "B.png": jpeg_bytes(), "B-2.jpg": b"",
        "B-3.jpg": jpeg_bytes()[:-2]})
    (wo / "sub").mkdir()
    (wo / "B-4.jpg").symlink_to(wo / "A-1.jpg")
    report = check(wo, fmt, is_duplicate=lambda n: True)
    assert sorted(codes(report), key=str) == sorted([
        ("bad_work_order_id", None),
        ("duplicate_work_order", None),
        ("bad_image_name", "-3.jpg"),
        ("empty_file", "B-2.jpg"),
        ("truncated_image", "B-3.jpg"),
        ("not_a_regular_file", "B-4.jpg"),
        ("image_content_mismatch", "B.png"),
        ("unknown_task_group", "Z.jpg"),
        ("unsupported_file", "readme.txt"),
        ("nested_directory", "sub"),
        ("duplicate_image", "A-1.jpg"),
        ("missing_parameters", "parameters.json"),
        ("missing_required_key", "metadata.json"),
    ], key=str)
    doc = report.to_dict()
    assert doc["valid"] is False and len(doc["errors"]) == 13
    assert all(set(e) == {"code", "file", "message"} and e["message"].endswith(".") for e in doc["errors"])
    json.dumps(doc)


def test_undecodable_names_are_reported_printably(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    raw = os.path.join(os.fsencode(wo), b"B\xff.jpg")
    with open(raw, "wb") as f:
        f.write(jpeg_bytes())
    report = check(wo)
    assert codes(report) == [("bad_image_name", "B\\xff.jpg")]
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")


def test_find_work_orders(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    for name in ("WO_2", "WO_1", "WO_10"):
        make_work_order(inbox, name, images=["A.jpg"])
    (inbox / ".DS_Store").write_bytes(b"x")
    (inbox / "@eaDir").mkdir()
    assert find_work_orders(inbox) == [inbox / "WO_1", inbox / "WO_10", inbox / "WO_2"]
    assert find_work_orders(inbox / "WO_1") == [inbox / "WO_1"]
    wo = inbox / "WO_2"
    (wo / "sub").mkdir()
    assert find_work_orders(wo) == [wo]  # holds files: a work order (its sub-folder is an error)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_work_orders(empty) == []
    with pytest.raises(NotADirectoryError):
        find_work_orders(wo / "A.jpg")
