"""File names inside a work-order folder: image names, processing order, junk and temp files.

Image names follow the platform's convention ``<task_group>[-<N>].<ext>``: the *last* ``-<digits>``
before the extension is the suffix (``task-group-2.jpg`` is task group ``task-group``, N=2). N is
compared as a number, so ``A-01.jpg`` and ``A-1.jpg`` both have N=1 (the validator calls that a
duplicate). Photos with a suffix are processed before photos without one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import NamedTuple

METADATA = "metadata.json"
PARAMETERS = "parameters.json"
JSON_FILES = (METADATA, PARAMETERS)
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png"})
#: other extensions of JPEG files (Windows saves web images as .jfif): the platform takes only the above
JPEG_ALIASES = frozenset({"jfif", "jpe", "jif", "jfi"})

# Written by macOS, Windows and Synology/QNAP NAS boxes: never part of a work order.
_JUNK_NAMES = frozenset(n.casefold() for n in (".DS_Store", "Thumbs.db", "desktop.ini", "@eaDir", "#recycle"))
# Names copy tools, browsers, editors and sync tools give files that are still being written.
TEMP_PATTERNS = ("*.part", "*.partial", "*.tmp", "*.filepart", "*.crdownload", "*.download", "~$*", ".~*",
                 ".syncthing.*")
# Greedy group + fullmatch: the suffix is the last ``-<ASCII digits>`` of the stem.
_SUFFIX = re.compile(r"(.*)-([0-9]+)", re.DOTALL)


class ImageName(NamedTuple):
    task_group: str
    suffix: int | None
    ext: str  # lower case, without the dot


def image_extension(name: str) -> str | None:
    """The lower-cased extension when ``name`` ends in .jpg/.jpeg/.png (any case), else None."""
    _, dot, ext = name.rpartition(".")
    ext = ext.lower()
    return ext if dot and ext in IMAGE_EXTENSIONS else None


def parse_image_name(name: str) -> ImageName | None:
    """``ImageName`` for a well-formed image name; None when it is not one (wrong extension, empty
    task group as in ``-1.jpg``, or a dangling hyphen as in ``A-.jpg``)."""
    ext = image_extension(name)
    if ext is None:
        return None
    stem = name[: -len(ext) - 1]
    m = _SUFFIX.fullmatch(stem)
    group, suffix = (m.group(1), int(m.group(2))) if m else (stem, None)
    if not group or group.endswith("-"):
        return None
    return ImageName(group, suffix, ext)


def order_key(name: str) -> tuple[int, int, str]:
    """Sort key of the processing order: metadata.json, parameters.json, images with a suffix by
    (N, name), images without a suffix by name (anything else last, by name)."""
    if name in JSON_FILES:
        return (JSON_FILES.index(name), 0, name)
    image = parse_image_name(name)
    if image is None:
        return (4, 0, name)
    if image.suffix is None:
        return (3, 0, name)
    return (2, image.suffix, name)


def processing_order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=order_key)


def is_junk(name: str, ready_marker: str | None = None) -> bool:
    """OS/NAS litter (and the ready marker): ignored by validation and never archived."""
    return name.casefold() in _JUNK_NAMES or name.startswith("._") or name == ready_marker


def is_temp(name: str, extra_patterns: Iterable[str] = ()) -> bool:
    """A name that says "still being written" (``*.part``, ``~$*``...): the folder is not settled yet.
    Patterns are shell globs, matched case-insensitively (Windows tools vary the case)."""
    folded = name.casefold()
    return any(fnmatchcase(folded, p.casefold()) for p in (*TEMP_PATTERNS, *extra_patterns))
