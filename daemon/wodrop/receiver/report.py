"""The batch's errors file (``{batch_id}.json``): what the platform would say about each work order.

A real upload server does not look inside the archive; the platform does afterwards, and lists per work
order what it could not process. This is a small, independent version of those format checks, so a dry
run shows which work orders the platform would refuse.
"""

from __future__ import annotations

import importlib
import json
import re
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wodrop.digest import Hashes
from wodrop.receiver.store import Session

WORK_ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
JSON_FILES = ("metadata.json", "parameters.json")
_MAGIC = {"jpg": b"\xff\xd8\xff", "jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
_FALLBACK_IMAGE = re.compile(r"(?P<group>.+?)(?:-(?P<n>[0-9]+))?\.(?P<ext>jpe?g|png)", re.IGNORECASE)

ImageKey = tuple[str, int | None, str]  # task group, suffix, lower-case extension


def _image_parser() -> Callable[[str], ImageKey | None]:
    """The work-order package's own name parser when it is installed, else a minimal equivalent."""
    try:
        names = importlib.import_module("wodrop.workorder.names")
    except ImportError:
        return _fallback_parse

    def parse(name: str) -> ImageKey | None:
        parsed = names.parse_image_name(name)
        return None if parsed is None else (parsed.task_group, parsed.suffix, parsed.ext)

    return parse


def _fallback_parse(name: str) -> ImageKey | None:
    m = _FALLBACK_IMAGE.fullmatch(name)
    if not m or m.group("group").endswith("-"):
        return None
    n = m.group("n")
    return (m.group("group"), int(n) if n is not None else None, m.group("ext").lower())


def _issue(code: str, file: str | None, message: str) -> dict[str, Any]:
    return {"code": code, "file": file, "message": message}


def _metadata_keys(metadata: object, required: Sequence[str]) -> list[dict[str, Any]]:
    """An error per key of ``--require-metadata-key`` that the work order's metadata.json lacks."""
    if not isinstance(metadata, dict):
        return [_issue("missing_metadata_key", "metadata.json",
                       f"there is no metadata.json object, and it must hold the key '{k}'") for k in required]
    return [_issue("missing_metadata_key", "metadata.json", f"metadata.json has no key '{k}'")
            for k in required if k not in metadata]


def _check_work_order(zf: zipfile.ZipFile, wo: str, entries: list[zipfile.ZipInfo],
                      required_keys: Sequence[str] = ()) -> dict[str, Any]:
    parse = _image_parser()
    errors: list[dict[str, Any]] = []
    metadata: object = None
    if not WORK_ORDER_ID.fullmatch(wo):
        errors.append(_issue("bad_work_order_id", None, f"'{wo}' is not a valid work-order id"))
    seen: dict[tuple[str, int | None], str] = {}
    images = 0
    for info in entries:
        rel = info.filename[len(wo) + 1 :]
        if not rel:
            continue
        if "/" in rel.rstrip("/"):
            errors.append(_issue("nested_directory", rel, "sub-directories are not allowed"))
            continue
        if info.is_dir():
            errors.append(_issue("nested_directory", rel.rstrip("/"), "sub-directories are not allowed"))
            continue
        if info.file_size == 0:
            errors.append(_issue("empty_file", rel, "the file is empty"))
            continue
        if rel in JSON_FILES:
            try:
                data = json.loads(zf.read(info).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                data = None
            if not isinstance(data, dict):
                errors.append(_issue("invalid_json", rel, "not a UTF-8 JSON object"))
            elif rel == "metadata.json":
                metadata = data
            continue
        key = parse(rel)
        if key is None:
            looks_image = rel.rpartition(".")[2].lower() in _MAGIC
            code = "bad_image_name" if looks_image else "unsupported_file"
            errors.append(_issue(code, rel, "not named <task_group>[-<N>].jpg|jpeg|png"))
            continue
        images += 1
        group, suffix, ext = key
        if (group, suffix) in seen:
            first = seen[group, suffix]
            errors.append(_issue("duplicate_image", rel, f"same task group and suffix as {first}"))
        seen.setdefault((group, suffix), rel)
        with zf.open(info) as f:
            if not f.read(8).startswith(_MAGIC[ext]):
                errors.append(_issue("image_content_mismatch", rel, f"content is not {ext.upper()}"))
    if not images:
        errors.append(_issue("no_images", None, "the work order has no images"))
    if required_keys:
        errors += _metadata_keys(metadata, required_keys)
    return {"id": wo, "valid": not errors, "errors": errors}


def check_archive(path: Path, required_keys: Sequence[str] = ()) -> tuple[list[dict[str, Any]],
                                                                           list[dict[str, Any]]]:
    """(batch-level errors, per-work-order results) for the archive at ``path``; ``required_keys``: what
    each work order's metadata.json must hold (``--require-metadata-key``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            groups: dict[str, list[zipfile.ZipInfo]] = {}
            batch_errors = []
            for info in zf.infolist():
                top, sep, _ = info.filename.partition("/")
                if not sep:
                    message = "files must be inside a work-order folder"
                    batch_errors.append(_issue("unexpected_file", top, message))
                    continue
                groups.setdefault(top, []).append(info)
            results = [_check_work_order(zf, wo, entries, required_keys) for wo, entries in groups.items()]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return [_issue("not_a_zip", None, f"the archive cannot be read as a zip file: {e}")], []
    if not results and not batch_errors:
        batch_errors.append(_issue("empty_batch", None, "the archive holds no work orders"))
    return batch_errors, results


def build_report(path: Path, session: Session, digest: Hashes, size: int,
                 required_keys: Sequence[str] = ()) -> dict[str, Any]:
    """The ``{batch_id}.json`` contents for a completed upload stored at ``path``."""
    errors, work_orders = check_archive(path, required_keys)
    return {
        "batch_id": session.batch_id,
        "filename": session.filename,
        "size": size,
        "md5": digest.md5_b64,
        "crc32c": digest.crc32c_b64,
        "sha256": digest.sha256.hexdigest(),
        "received_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "errors": errors,
        "work_orders": work_orders,
    }
