"""Build real work-order folders on disk for tests: real JPEG/PNG bytes (Pillow), JSON files."""

from __future__ import annotations

import io
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image


@cache
def jpeg_bytes(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="JPEG")
    return buf.getvalue()


@cache
def png_bytes(width: int = 8, height: int = 8, color: tuple[int, int, int] = (30, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def image_bytes(name: str, pad_to: int = 0) -> bytes:
    """Valid image content for ``name``'s extension; ``pad_to`` grows a JPEG with an APP15 segment-ish
    comment so its size is about ``pad_to`` bytes while staying a valid, decodable JPEG."""
    ext = name.rsplit(".", 1)[-1].lower()
    data = png_bytes() if ext == "png" else jpeg_bytes()
    if pad_to > len(data) and ext != "png":
        # Insert COM segments (max 65533 payload bytes each) right after SOI.
        extra = pad_to - len(data)
        segs = bytearray()
        while extra > 4:
            n = min(extra - 4, 65533)
            segs += b"\xff\xfe" + (n + 2).to_bytes(2, "big") + b"x" * n
            extra -= n + 4
        data = data[:2] + bytes(segs) + data[2:]
    return data


def make_work_order(
    root: Path,
    name: str,
    images: list[str] | tuple[str, ...] = ("task_A-0.jpg", "task_A-1.jpg", "task_B.png"),
    *,
    metadata: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    image_size: int = 0,
) -> Path:
    """Create ``root/name/`` with valid images (and optional JSON files); returns the folder."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if metadata is not None:
        (folder / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    if parameters is not None:
        (folder / "parameters.json").write_text(json.dumps(parameters), encoding="utf-8")
    for img in images:
        (folder / img).write_bytes(image_bytes(img, image_size))
    for fname, content in (extra_files or {}).items():
        (folder / fname).write_bytes(content)
    return folder


def drop_atomically(staging: Path, inbox: Path, name: str, **kw: Any) -> Path:
    """Build a work order next to the inbox and rename it in (how careful scripts drop folders)."""
    folder = make_work_order(staging, name, **kw)
    dest = inbox / name
    os.rename(folder, dest)
    return dest
