"""Validate one work-order folder against the platform's batch format (rules and error codes: the
README's "The work-order format").

Every violation is reported, not only the first, each as an ``Issue`` whose message is a sentence for
the person who prepared the folder: which file, what is wrong, what to do. Nothing is followed or
read beyond what a check needs. The folder itself is opened with ``O_DIRECTORY|O_NOFOLLOW`` (a folder
replaced by a symbolic link, say to a private folder, is refused and nothing behind it is read); its
entries are listed from that descriptor and ``lstat``-ed / opened relative to it (``dir_fd``) with
``O_NOFOLLOW`` (and ``O_NONBLOCK``, so a FIFO swapped in after the ``lstat`` cannot hang us), so no
path component inside the work order is ever followed. Images are read only at their ends. Sub-folders
are reported, never entered (no recursion, whatever their depth). Names that are not valid UTF-8 are
shown with ``\\xNN`` escapes, so every report can be printed and encoded as UTF-8 JSON.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wodrop.config import FormatConfig
from wodrop.workorder.images import check_image
from wodrop.workorder.names import (
    JPEG_ALIASES,
    JSON_FILES,
    METADATA,
    PARAMETERS,
    ImageName,
    image_extension,
    is_junk,
    is_temp,
    order_key,
    parse_image_name,
)

MAX_JSON_BYTES = 16 * 1024**2  # metadata/parameters are small dictionaries; refuse to slurp a mistake
_DEFAULT_ID_PATTERN = FormatConfig().work_order_id_pattern
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# A FIFO or a device in place of the folder fails with ENOTDIR before anything is opened.
FOLDER_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OTHER_IMAGE_TYPES = frozenset({"gif", "heic", "heif", "webp", "tif", "tiff", "bmp", "raw", "dng", "avif"})


@dataclass(frozen=True)
class Issue:
    code: str
    file: str | None  # a name inside the folder, or None for the folder itself
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "file": self.file, "message": self.message}


@dataclass(frozen=True)
class FileEntry:
    """One archive member: ``name`` inside the work-order folder ``path.parent``, as validated.

    ``dev``/``ino`` identify the very file the validator checked (None when not known, e.g. a report
    built by hand): the archive writer refuses to pack a different file that took its name since.
    """

    name: str
    path: Path
    size: int
    dev: int | None = None
    ino: int | None = None


@dataclass
class WorkOrderReport:
    """What ``validate_work_order`` found. ``files`` are the archive members, in processing order."""

    id: str
    path: Path
    errors: list[Issue] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def codes(self) -> set[str]:
        return {e.code for e in self.errors}

    def to_dict(self) -> dict[str, Any]:
        """The ``wodrop validate --json`` shape of one work order."""
        return {
            "id": display_name(self.id),
            "path": display_name(str(self.path)),
            "valid": self.valid,
            "errors": [e.to_dict() for e in self.errors],
            "files": [display_name(f.name) for f in self.files],
        }


def display_name(name: str) -> str:
    """A name safe to print and to put in JSON: undecodable bytes shown as ``\\xNN``.

    File names that are not UTF-8 reach Python with their bytes as lone surrogates
    (``surrogateescape``); they are turned back into those bytes, then each shown as ``\\xNN``.
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no file-name byte: show it as \udNNN
        raw = name.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _is_text(name: str) -> bool:
    return display_name(name) == name


def find_work_orders(path: Path, ready_marker: str | None = None) -> list[Path]:
    """``[path]`` when ``path`` directly holds any (non-junk) file, else its sub-folders by name.

    Raises OSError (e.g. NotADirectoryError) when ``path`` cannot be listed.
    """
    with os.scandir(path) as it:
        entries = [e for e in it if not is_junk(e.name, ready_marker)]
    if any(not e.is_dir(follow_symlinks=False) for e in entries):
        return [path]
    return sorted((path / e.name for e in entries), key=lambda p: p.name)


def open_folder(path: Path) -> int:
    """A descriptor of the work-order folder ``path``, never through a symbolic link at its last
    component (``O_DIRECTORY|O_NOFOLLOW``). Raises OSError: ENOTDIR (or ELOOP) for a link, a file, a
    FIFO...; ENOENT, EACCES, ENAMETOOLONG as they come. The caller closes the descriptor."""
    return os.open(path, FOLDER_OPEN_FLAGS)


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _folder_issue(path: Path, e: OSError) -> Issue:
    shown = display_name(path.name or str(path))
    if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(path):
        return Issue("not_a_regular_file", None, f"The work-order folder {shown} is a symbolic link (a "
                     "shortcut to another folder); wodrop never follows links, so nothing behind it was "
                     "read. Put the folder itself here, not a link to it.")
    if e.errno == errno.ENOTDIR:
        return Issue("unreadable", None, f"{shown} is not a folder; a work order is a folder holding "
                     "its files. Put the files in a folder named after the work order.")
    return Issue("unreadable", None, f"The folder {shown} cannot be read ({e.strerror}). "
                 "Check that wodrop may open it.")


def validate_work_order(
    path: Path | str | bytes,
    fmt: FormatConfig,
    *,
    ready_marker: str | None = None,
    is_duplicate: Callable[[str], bool] | None = None,
) -> WorkOrderReport:
    """Check the folder ``path`` (its name is the work-order id); never raises for what it finds.

    Nothing behind a symbolic link is read: the folder is opened with ``O_NOFOLLOW`` (a folder that
    is a link is reported ``not_a_regular_file``) and every entry is looked at relative to it.
    """
    path = Path(os.fsdecode(path))
    report = WorkOrderReport(path.name, path)
    report.errors += _id_issues(path.name, fmt, is_duplicate)
    try:
        fd = open_folder(path)
    except OSError as e:
        report.errors.append(_folder_issue(path, e))
        return report
    try:
        try:
            with os.scandir(fd) as it:
                names = sorted(e.name for e in it)
        except OSError as e:
            report.errors.append(_folder_issue(path, e))
            return report
        scan = _Scan(fmt, path, fd)
        for name in names:
            if not is_junk(name, ready_marker):
                scan.entry(name)
    finally:
        os.close(fd)
    report.errors += scan.issues + scan.folder_issues(path.name)
    report.files = sorted(scan.members, key=lambda f: order_key(f.name))
    return report


def _id_issues(wo: str, fmt: FormatConfig, is_duplicate: Callable[[str], bool] | None) -> list[Issue]:
    issues = []
    if not _is_text(wo) or not re.fullmatch(fmt.work_order_id_pattern, wo):
        rule = (
            "use only letters, digits, '_' and '-', at most 128 characters"
            if fmt.work_order_id_pattern == _DEFAULT_ID_PATTERN
            else f"it must match {fmt.work_order_id_pattern} (format.work_order_id_pattern)"
        )
        issues.append(Issue("bad_work_order_id", None,
                            f"The folder name '{display_name(wo)}' is not a valid work-order id: {rule}. "
                            "Rename the folder."))
    # A name that is not text was never valid, so never uploaded (and a DB could not even look it up).
    if fmt.on_duplicate == "reject" and is_duplicate is not None and _is_text(wo) and is_duplicate(wo):
        issues.append(Issue("duplicate_work_order", None,
                            f"Work order {wo} has already been uploaded; sending it again would process it "
                            "twice. Remove the folder, or rename it if it is a different work order."))
    return issues


class _Scan:
    """Per-file checks of one folder (open as ``fd``), accumulating what the folder-level checks need.
    Every look at an entry is relative to ``fd`` and never follows a link."""

    def __init__(self, fmt: FormatConfig, folder: Path, fd: int) -> None:
        self.fmt, self.folder, self.fd = fmt, folder, fd
        self.issues: list[Issue] = []
        self.members: list[FileEntry] = []
        self.image_files = 0
        self.images: dict[tuple[str, int | None], list[str]] = {}
        self.json: dict[str, dict[str, Any] | None] = {}  # present JSON files -> object (None: invalid)

    def add(self, code: str, name: str, message: str) -> None:
        self.issues.append(Issue(code, display_name(name), message))

    def entry(self, name: str) -> None:
        shown = display_name(name)
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # removed while we looked: the settle stage sees the change
        except OSError as e:
            self.add("unreadable", name, f"{shown} cannot be read ({e.strerror}). Check its permissions.")
            if image_extension(name) is not None:
                self.image_files += 1  # an image we may not read: "unreadable", not "no images" too
            return
        if stat.S_ISDIR(st.st_mode):  # reported, never entered: any depth is fine
            self.add("nested_directory", name, f"{shown} is a folder; a work order must hold files only. "
                     "Move its files up into the work-order folder, or remove it.")
            return
        if not stat.S_ISREG(st.st_mode):
            self._not_regular(name, st.st_mode)
            return
        ext = image_extension(name)
        image = parse_image_name(name) if _is_text(name) else None
        if ext is not None:
            self.image_files += 1
            if image is None:
                self._bad_image_name(name)
            else:
                self._image_name(name, image)
        elif name in JSON_FILES:
            self.json[name] = None  # present; replaced by the object once it parses
        else:
            self._unsupported(name)
            return
        if st.st_size == 0:
            self.add("empty_file", name, f"{shown} is empty (0 bytes). Copy it again, or remove it.")
            self._member(name, image, st)
            return
        self._content(name, image)

    def _member(self, name: str, image: ImageName | None, st: os.stat_result) -> None:
        if image is not None or name in JSON_FILES:
            self.members.append(FileEntry(name, self.folder / name, st.st_size, st.st_dev, st.st_ino))

    def _content(self, name: str, image: ImageName | None) -> None:
        shown = display_name(name)
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                self.add("not_a_regular_file", name, f"{shown} is a shortcut (symbolic link), not a file. "
                         "Put the file itself in the folder.")
            elif e.errno != errno.ENOENT:
                self.add("unreadable", name, f"{shown} cannot be read ({e.strerror}). Check its permissions.")
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._not_regular(name, st.st_mode)
                return
            self._member(name, image, st)
            if name in JSON_FILES:
                self.json[name] = self._json(fd, name, st.st_size)
            else:  # the shown name: its messages must stay printable
                problem = check_image(fd, shown, st.st_size, decode=self.fmt.image_check == "decode")
                if problem:
                    self.add(problem.code, name, problem.message)
        except OSError as e:
            self.add("unreadable", name, f"{shown} cannot be read ({e.strerror}). Check its permissions.")
        finally:
            os.close(fd)

    def _not_regular(self, name: str, mode: int) -> None:
        what = (
            "a shortcut (symbolic link)" if stat.S_ISLNK(mode)
            else "a named pipe" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a device"
        )
        self.add("not_a_regular_file", name, f"{display_name(name)} is {what}, not a file. "
                 "Put the file itself in the folder, or remove it.")

    def _bad_image_name(self, name: str) -> None:
        shown = display_name(name)
        if not _is_text(name):
            why = "contains characters that are not valid text (UTF-8)"
        elif name.rpartition(".")[0].endswith("-"):
            why = "ends with '-' but no photo number after it"
        else:
            why = "has no task-group name"
        self.add("bad_image_name", name, f"{shown} {why}. Name images <task_group>.jpg or "
                 "<task_group>-<number>.jpg, for example task_group_A-0.jpg.")

    def _image_name(self, name: str, image: ImageName) -> None:
        self.images.setdefault((image.task_group, image.suffix), []).append(name)
        groups = self.fmt.task_groups
        if groups and image.task_group not in groups:
            near = [g for g in groups if g.casefold() == image.task_group.casefold()]
            hint = f" Did you mean {near[0]}?" if near else ""
            listed = ", ".join(groups[:10]) + (", ..." if len(groups) > 10 else "")
            self.add("unknown_task_group", name, f"{name} is for task group {image.task_group!r}, which is "
                     f"not one of this application's task groups ({listed}).{hint}")

    def _unsupported(self, name: str) -> None:
        shown = display_name(name)
        ext = name.rpartition(".")[2].lower() if "." in name else ""
        if is_temp(name):
            why = "looks like a file that is still being copied or a temporary file. Wait for the copy " \
                  "to finish, or remove it"
        elif name.lower() in JSON_FILES:
            why = f"must be named {name.lower()} exactly (lower case). Rename it"
        elif ext in JPEG_ALIASES:  # the content is checked once it has a name the platform takes
            stem, _, raw = shown.rpartition(".")
            why = f"is a JPEG photo by its name (.{raw} is JPEG), but the platform takes only .jpg, .jpeg " \
                  f"and .png names. Rename it to {stem}.jpg"
        elif ext in _OTHER_IMAGE_TYPES:
            why = f"is a {ext.upper()} file; the platform accepts only JPEG and PNG. Convert it to JPEG"
        else:
            why = "is not something a work order may hold (only metadata.json, parameters.json and " \
                  "JPEG/PNG images). Remove it"
        self.add("unsupported_file", name, f"{shown} {why}.")

    def _json(self, fd: int, name: str, size: int) -> dict[str, Any] | None:
        """The parsed object, or None after recording an ``invalid_json`` issue."""
        if size > MAX_JSON_BYTES:
            limit = MAX_JSON_BYTES // 1024**2
            self.add("invalid_json", name, f"{name} is {size:,} bytes, far too big for a {name} (at most "
                     f"{limit} MiB). Check that the right file was saved under that name.")
            return None
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_JSON_BYTES + 1)
        problem = _json_problem(data)
        if isinstance(problem, str):
            self.add("invalid_json", name, f"{name} {problem}")
            return None
        return problem

    def folder_issues(self, wo: str) -> list[Issue]:
        issues = []
        for (group, suffix), names in self.images.items():
            first, *others = sorted(names)
            photo = f"photo {suffix} of task group {group!r}" if suffix is not None \
                else f"the un-numbered photo of task group {group!r}"
            for other in others:
                issues.append(Issue("duplicate_image", other, f"{other} and {first} are both {photo}; the "
                                    "platform cannot tell them apart. Rename or remove one of them."))
        fmt = self.fmt
        for fname, required, keys, code in (
            (METADATA, fmt.require_metadata, fmt.required_metadata_keys, "missing_metadata"),
            (PARAMETERS, fmt.require_parameters, fmt.required_parameter_keys, "missing_parameters"),
        ):
            if fname not in self.json:
                if required or keys:
                    holding = f", holding the keys {', '.join(keys)}" if keys else ""
                    issues.append(Issue(code, fname, f"{fname} is missing; this application needs it"
                                        f"{holding}. Add it to the folder."))
                continue
            obj = self.json[fname]
            missing = [k for k in keys if obj is not None and k not in obj]
            if missing:
                s = "s" if len(missing) > 1 else ""
                issues.append(Issue("missing_required_key", fname, f"{fname} is missing the required key{s} "
                                    f"{', '.join(missing)}. Add {'them' if s else 'it'} to the file."))
        if not self.image_files:
            issues.append(Issue("no_images", None, f"Work order {display_name(wo)} has no images; it needs "
                                "at least one JPEG or PNG photo."))
        return issues


def _json_problem(data: bytes) -> dict[str, Any] | str:
    """The JSON object in ``data``, or the end of a sentence saying what is wrong with it."""
    if data.startswith(b"\xef\xbb\xbf"):
        return "starts with an invisible byte-order mark (BOM). Save it as UTF-8 without BOM."
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (byte {e.start + 1} cannot be read). Save it with UTF-8 encoding."

    def no_constants(word: str) -> Any:
        raise ValueError(f"{word} is not allowed in JSON")

    try:
        obj = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        return f"is not valid JSON (line {e.lineno}: {e.msg}). Fix the file and send it again."
    except (ValueError, RecursionError) as e:
        reason = "it is nested too deeply" if isinstance(e, RecursionError) else str(e)
        return f"is not valid JSON ({reason}). Fix the file and send it again."
    if not isinstance(obj, dict):
        return f"must hold a JSON object ({{...}}), not {_json_kind(obj)}. Fix the file and send it again."
    return obj


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "a list"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, bool):
        return "true/false"
    if obj is None:
        return "null"
    return "a number"
