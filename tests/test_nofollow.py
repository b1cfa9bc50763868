"""No link is ever followed, nothing odd on disk crashes the validator or the archive writer.

A work-order folder in ``processing/`` replaced by a symbolic link (to a private folder) must not be
read, neither when it is validated nor when it is packed after validation; a file replaced after
validation is not packed; folders nested 1,500 deep, paths longer than PATH_MAX and names that are
not UTF-8 give reports, never exceptions. Real files in temp folders; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.workorders import jpeg_bytes, make_work_order, png_bytes
from wodrop.archive import BatchArchiveWriter, SourceChanged
from wodrop.cli import main
from wodrop.config import FormatConfig
from wodrop.workorder import FileEntry, WorkOrderReport, find_work_orders, validate_work_order

SECRET = b"PRIVATE-BYTES-THAT-MUST-NEVER-LEAVE-THIS-FOLDER"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def secret_jpeg() -> bytes:
    """A valid JPEG (FF D8 FF ... FF D9) carrying SECRET in a comment segment, to look for in archives."""
    data = jpeg_bytes()
    segment = b"\xff\xfe" + (len(SECRET) + 2).to_bytes(2, "big") + SECRET
    return data[:2] + segment + data[2:]


def check(folder: Path | str | bytes, fmt: FormatConfig | None = None, **kw: object) -> WorkOrderReport:
    return validate_work_order(folder, fmt or FormatConfig(), **kw)  # type: ignore[arg-type]


def codes(report: WorkOrderReport) -> list[tuple[str, str | None]]:
    return [(e.code, e.file) for e in report.errors]


def json_bytes(report: WorkOrderReport) -> bytes:
    """What ``wodrop validate --json`` writes: must encode as strict UTF-8."""
    return json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """``processing/`` and a private folder (mode 700) beside it."""
    processing, private = tmp_path / "processing", tmp_path / "private"
    processing.mkdir()
    private.mkdir(mode=0o700)
    return processing, private


@pytest.fixture
def new_writer() -> Iterator[Callable[[Path], BatchArchiveWriter]]:
    """BatchArchiveWriter, aborted at teardown whatever the test did (a writer left open by a failing
    test would otherwise write its central directory into a closed file from the garbage collector)."""
    made: list[BatchArchiveWriter] = []

    def make(path: Path) -> BatchArchiveWriter:
        made.append(BatchArchiveWriter(path))
        return made[-1]

    yield make
    for writer in made:
        writer.abort()


def _noatime(path: Path) -> bool:
    """Whether reads leave access times alone where ``path`` is (a ``noatime`` mount, or no atime)."""
    probe = path.parent / ".atime-probe"
    probe.write_bytes(b"x")
    try:
        os.utime(probe, (1, probe.stat().st_mtime))
        probe.read_bytes()
        return probe.stat().st_atime == 1
    finally:
        probe.unlink()


def archive_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        return zf.namelist()


# --- the work-order folder is a link -----------------------------------------------------------------


def test_validator_refuses_a_folder_that_is_a_link_and_reads_nothing_behind_it(
        layout: tuple[Path, Path]) -> None:
    processing, private = layout
    target = make_work_order(private, "secret", images=["A-0.jpg", "B.png"], metadata={"k": 1},
                             extra_files={"C.jpg": secret_jpeg()})
    (processing / "WO_1").symlink_to(target, target_is_directory=True)
    behind = [target, *target.iterdir()]
    for p in behind:  # access times far in the past: listing or reading any of them moves them on
        os.utime(p, (1, p.stat().st_mtime))
    report = check(processing / "WO_1")
    assert codes(report) == [("not_a_regular_file", None)]
    assert report.files == [] and report.total_bytes == 0 and not report.valid
    if not _noatime(target):
        assert [p.stat().st_atime for p in behind] == [1] * len(behind), "something behind the link was read"
    message = report.errors[0].message
    assert "symbolic link" in message and "never follows links" in message
    assert message.startswith("The work-order folder WO_1 ")
    # a link whose target is gone or is a file: the same answer, no other error
    (processing / "WO_2").symlink_to(private / "missing")
    (processing / "WO_3").symlink_to(target / "A-0.jpg")
    for name in ("WO_2", "WO_3"):
        assert codes(check(processing / name)) == [("not_a_regular_file", None)]
    # a relative link, given as a str with a trailing slash: still not followed
    (processing / "WO_4").symlink_to(os.path.relpath(target, processing))
    assert codes(check(f"{processing}/WO_4/")) == [("not_a_regular_file", None)]


def test_validate_and_pack_commands_refuse_a_linked_folder(
        layout: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    processing, private = layout
    target = make_work_order(private, "WO_1", images=["A.jpg"], extra_files={"B.jpg": secret_jpeg()})
    (processing / "WO_1").symlink_to(target)
    assert main(["validate", "--json", str(processing / "WO_1")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(e["code"], e["file"]) for e in doc["work_orders"][0]["errors"]] == [("not_a_regular_file", None)]
    assert doc["work_orders"][0]["files"] == []
    out = private.parent / "out.zip"
    assert main(["pack", str(processing / "WO_1"), "-o", str(out)]) == 1
    assert not out.exists()


def test_folder_that_is_a_fifo_or_a_file_is_reported_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "WO_1")  # opening it for reading would block forever
    (tmp_path / "WO_2").write_bytes(jpeg_bytes())
    done: list[WorkOrderReport] = []
    t = threading.Thread(target=lambda: done.extend(check(tmp_path / n) for n in ("WO_1", "WO_2")),
                         daemon=True)
    t.start()
    t.join(10)
    assert len(done) == 2, "validating a FIFO blocked"
    for report in done:
        assert codes(report) == [("unreadable", None)]
        assert "is not a folder" in report.errors[0].message


@pytest.mark.parametrize("same_files", [True, False], ids=["original-moved-away", "private-copy"])
def test_folder_replaced_by_a_link_after_validation_is_not_packed(
        layout: tuple[Path, Path], same_files: bool,
        new_writer: Callable[[Path], BatchArchiveWriter]) -> None:
    """Between validation and packing, processing/WO_2 becomes a link to a private folder holding
    files of the same names and sizes (the very same files, moved there, or others)."""
    processing, private = layout
    before = check(make_work_order(processing, "WO_1", images=["A.jpg"]))
    wo = make_work_order(processing, "WO_2", images=["A.jpg"], extra_files={"B.jpg": secret_jpeg()})
    report = check(wo)
    after = check(make_work_order(processing, "WO_3", images=["A.jpg"]))
    assert before.valid and report.valid and after.valid
    if same_files:
        os.rename(wo, private / "WO_2")  # the same inodes, now in a private folder
    else:
        os.rename(wo, private / "old")
        shutil.copytree(private / "old", private / "WO_2")
    (processing / "WO_2").symlink_to(private / "WO_2", target_is_directory=True)

    out = processing.parent / "batch.zip"
    writer = new_writer(out)
    writer.add_work_order(before)
    size = writer.size
    with pytest.raises(SourceChanged) as exc:
        writer.add_work_order(report)
    assert (exc.value.work_order, exc.value.file) == ("WO_2", None)
    assert "link" in str(exc.value)
    assert writer.size == size == out.stat().st_size  # rolled back: nothing of WO_2 is in the file
    assert SECRET not in out.read_bytes()
    writer.add_work_order(after)  # the writer goes on
    writer.close()
    assert SECRET not in out.read_bytes()
    assert archive_names(out) == ["WO_1/A.jpg", "WO_3/A.jpg"]


def test_folder_gone_or_replaced_by_a_file_after_validation(
        tmp_path: Path, new_writer: Callable[[Path], BatchArchiveWriter]) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    report = check(wo)
    shutil.rmtree(wo)
    wo.write_bytes(jpeg_bytes())
    writer = new_writer(tmp_path / "batch.zip")
    with pytest.raises(SourceChanged):
        writer.add_work_order(report)
    wo.unlink()
    with pytest.raises(SourceChanged):
        writer.add_work_order(report)
    writer.abort()


# --- a file inside is replaced after validation ------------------------------------------------------


def _same_size_secret(file: Path) -> bytes:
    size = file.stat().st_size
    return (SECRET * (size // len(SECRET) + 1))[:size]


def _swap_for_link(file: Path, private: Path) -> None:
    (private / file.name).write_bytes(_same_size_secret(file))  # the same size, in a private folder
    file.unlink()
    file.symlink_to(private / file.name)


def _swap_for_same_size_file(file: Path, private: Path) -> None:
    (file.parent / "new").write_bytes(_same_size_secret(file))  # another file of the same size
    os.rename(file.parent / "new", file)


def _swap_for_fifo(file: Path, private: Path) -> None:
    file.unlink()
    os.mkfifo(file)


def _swap_for_folder(file: Path, private: Path) -> None:
    file.unlink()
    file.mkdir()


@pytest.mark.parametrize("swap", [_swap_for_link, _swap_for_same_size_file, _swap_for_fifo, _swap_for_folder],
                         ids=["symlink", "same-size-file", "fifo", "folder"])
def test_file_replaced_after_validation_is_not_packed(
        layout: tuple[Path, Path], swap: object, new_writer: Callable[[Path], BatchArchiveWriter]) -> None:
    """The second file is replaced: the first is already in the archive when that is found."""
    processing, private = layout
    good = check(make_work_order(processing, "WO_1", images=["A.jpg"]))
    wo = make_work_order(processing, "WO_2", images=["A.jpg", "B.jpg"], image_size=100_000)
    report = check(wo)
    assert report.valid and [f.name for f in report.files] == ["A.jpg", "B.jpg"]
    swap(wo / "B.jpg", private)  # type: ignore[operator]

    out = processing.parent / "batch.zip"
    writer = new_writer(out)
    writer.add_work_order(good)
    size = writer.size
    errors: list[BaseException] = []

    def add() -> None:
        try:
            writer.add_work_order(report)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=add, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "packing blocked"
    assert len(errors) == 1 and isinstance(errors[0], SourceChanged), errors
    assert (errors[0].work_order, errors[0].file) == ("WO_2", "B.jpg")
    assert writer.size == size == out.stat().st_size  # WO_2/A.jpg, already written, rolled back
    writer.close()
    assert archive_names(out) == ["WO_1/A.jpg"]
    assert SECRET not in out.read_bytes()


def test_entries_must_be_plain_names_in_the_report_folder(
        tmp_path: Path, new_writer: Callable[[Path], BatchArchiveWriter]) -> None:
    """A hand-made report cannot make the writer walk a path: names only, in ``report.path``."""
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    report = check(wo)
    entry = report.files[0]
    writer = new_writer(tmp_path / "batch.zip")
    for bad in (
        FileEntry("../WO_1/A.jpg", wo / "../WO_1/A.jpg", entry.size),
        FileEntry("A.jpg", tmp_path / "elsewhere" / "A.jpg", entry.size),
    ):
        with pytest.raises(ValueError, match="is not a file named"):
            writer.add_work_order(WorkOrderReport("WO_1", wo, files=[bad]))
    writer.add_work_order(report)
    writer.close()
    assert archive_names(tmp_path / "batch.zip") == ["WO_1/A.jpg"]


# --- depth and length --------------------------------------------------------------------------------


def _make_chain(top: Path, component: str, depth: int) -> Path | None:
    """``top/component/component/...`` ``depth`` levels deep, made through descriptors (so the path
    may be longer than PATH_MAX). Returns the deepest folder's path when the kernel can still take it."""
    fd = os.open(top, _DIR)
    try:
        for _ in range(depth):
            os.mkdir(component, dir_fd=fd)
            child = os.open(component, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return top.joinpath(*[component] * depth)


def _remove_chain(top: Path, component: str) -> None:
    """Remove such a chain without recursion (shutil.rmtree recurses once per level): move the
    grandchild up, drop the emptied child, again and again; the last level is shallow."""
    fd = os.open(top, _DIR)
    try:
        while True:
            try:
                os.rename(f"{component}/{component}", ".up", src_dir_fd=fd, dst_dir_fd=fd)
            except FileNotFoundError:
                break
            os.rmdir(component, dir_fd=fd)
            os.rename(".up", component, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    shutil.rmtree(top / component, ignore_errors=True)


@pytest.fixture
def chains(tmp_path: Path) -> Iterator[list[tuple[Path, str]]]:
    made: list[tuple[Path, str]] = []
    yield made
    for top, component in made:
        _remove_chain(top, component)


def test_folders_nested_1500_deep_are_reported_not_walked(
        tmp_path: Path, chains: list[tuple[Path, str]]) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    chains.append((wo, "d"))
    _make_chain(wo, "d", 1500)
    report = check(wo)
    assert codes(report) == [("nested_directory", "d")]
    assert [f.name for f in report.files] == ["A.jpg"]
    json_bytes(report)
    assert find_work_orders(wo) == [wo]


def test_work_order_deeper_than_path_max_is_unreadable_not_a_crash(
        tmp_path: Path, chains: list[tuple[Path, str]]) -> None:
    chains.append((tmp_path, "x" * 200))
    deep = _make_chain(tmp_path, "x" * 200, 25)  # over 5,000 characters: more than PATH_MAX
    assert deep is not None and len(os.fsencode(deep)) > 4096
    fd = os.open(tmp_path, _DIR)
    try:  # a work order down there, made through a descriptor
        for _ in range(25):
            child = os.open("x" * 200, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
        os.mkdir("WO_1", dir_fd=fd)
        with open(os.open("WO_1/A.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(jpeg_bytes())
    finally:
        os.close(fd)
    report = check(deep / "WO_1")
    assert codes(report) == [("unreadable", None)]
    assert "too long" in report.errors[0].message
    json_bytes(report)


# --- names that are not UTF-8 ------------------------------------------------------------------------


def test_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    wo = make_work_order(tmp_path, "WO_1", images=["A.jpg"])
    folder = os.fsencode(wo)
    for raw, content in ((b"B\xff.jpg", png_bytes()),          # bad name + content mismatch
                         (b"C\xfe-1.png", png_bytes()[:20]),     # bad name + truncated
                         (b"D\xe9.txt", b"text"),                # unsupported
                         (b"E\xc3.part", b"x")):                 # unsupported (temp), not text
        with open(os.path.join(folder, raw), "wb") as f:
            f.write(content)
    report = check(wo, FormatConfig(image_check="decode"))
    assert sorted(codes(report)) == [
        ("bad_image_name", "B\\xff.jpg"),
        ("bad_image_name", "C\\xfe-1.png"),
        ("image_content_mismatch", "B\\xff.jpg"),
        ("truncated_image", "C\\xfe-1.png"),
        ("unsupported_file", "D\\xe9.txt"),
        ("unsupported_file", "E\\xc3.part"),
    ]
    for issue in report.errors:
        issue.message.encode("utf-8")  # every message is printable text
        assert issue.file is None or issue.file in issue.message
    assert [f.name for f in report.files] == ["A.jpg"]
    doc = json.loads(json_bytes(report))
    assert {e["file"] for e in doc["errors"]} >= {"B\\xff.jpg", "D\\xe9.txt"}


def test_folder_name_that_is_not_utf8(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"WO_\xff1")
    os.mkdir(raw)
    with open(os.path.join(raw, b"A.jpg"), "wb") as f:
        f.write(jpeg_bytes())
    asked: list[str] = []

    def uploaded(name: str) -> bool:
        name.encode("utf-8")  # a state DB can only look up text: this must never get the raw name
        asked.append(name)
        return True

    for given in (raw, os.fsdecode(raw), Path(os.fsdecode(raw))):
        report = check(given, is_duplicate=uploaded)
        assert codes(report) == [("bad_work_order_id", None)]
        assert "'WO_\\xff1'" in report.errors[0].message
        doc = json.loads(json_bytes(report))
        assert doc["id"] == "WO_\\xff1" and doc["path"].endswith("/WO_\\xff1")
        assert doc["files"] == ["A.jpg"]
    assert asked == []


# --- unreadable --------------------------------------------------------------------------------------


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir an unprivileged child can enter (pytest's tmp_path is private to its user)."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        yield Path(d)


def test_unreadable_folder_and_files_as_an_unprivileged_user(shared_tmp: Path) -> None:
    """Root reads everything, so the checks run in a child as ``nobody`` (see test_validate)."""
    from test_validate import _as_unprivileged

    wo = make_work_order(shared_tmp, "WO_1", images=["A.jpg", "B.jpg"])
    os.chmod(wo, 0o444)  # may list the names, may not look at the files (no search permission)
    found = _as_unprivileged(lambda: check(wo).to_dict())
    assert [(e["code"], e["file"]) for e in found["errors"]] == [
        ("unreadable", "A.jpg"), ("unreadable", "B.jpg")]  # not "no images" on top
    os.chmod(wo, 0o311)  # may enter, may not list
    found = _as_unprivileged(lambda: check(wo).to_dict())
    assert [(e["code"], e["file"]) for e in found["errors"]] == [("unreadable", None)]
    assert "Permission denied" in found["errors"][0]["message"]

    # A file that became unreadable after validation: the OSError, rolled back, the writer goes on.
    os.chmod(wo, 0o755)
    report = check(wo)
    os.chmod(wo / "B.jpg", 0)
    spool = shared_tmp / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    out = spool / "batch.zip"

    def pack() -> tuple[str, int, int]:
        writer = BatchArchiveWriter(out)
        try:
            writer.add_work_order(report)
        except OSError as e:
            outcome = f"{type(e).__name__}:{e.errno}:{e.filename}"
        else:
            outcome = "packed"
        size = writer.size
        writer.close()
        return outcome, size, len(archive_names(out))

    outcome, size, members = _as_unprivileged(pack)
    assert outcome == "PermissionError:13:B.jpg"  # the name, so the daemon can say which file
    assert members == 0 and size == 0
    os.chmod(wo, 0o700)  # let TemporaryDirectory clean up
    os.chmod(wo / "B.jpg", 0o600)
