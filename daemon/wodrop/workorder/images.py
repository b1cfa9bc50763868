"""Cheap image checks: the first and last bytes of a file, never the whole image in memory.

A JPEG starts ``FF D8 FF`` and ends with the EOI marker ``FF D9``; a PNG starts with its 8-byte
signature and ends with the fixed 12-byte ``IEND`` chunk. Some cameras pad files with zeros after the
end marker, so trailing zeros are skipped. A file whose tail is all zeros is what Windows leaves while
it copies (it pre-sizes the file, then fills it): that is reported as ``truncated_image`` so the daemon
keeps waiting instead of failing the work order.

``decode`` mode also decodes the image with Pillow (bounded by Pillow's decompression-bomb guard),
which catches images that are well framed but corrupt inside.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

from PIL import Image

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
TAIL_BYTES = 64 * 1024  # zero padding longer than this is treated as a copy in progress

_KINDS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}
_SIGNATURES = {"JPEG": (JPEG_START, JPEG_END), "PNG": (PNG_START, PNG_END)}
# What a mislabelled file most often really is, for a helpful message.
_OTHER_KINDS = (
    (JPEG_START, "a JPEG image"),
    (PNG_START, "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
)


class ImageProblem(NamedTuple):
    code: str
    message: str


def _describe(head: bytes) -> str:
    if head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:8] == b"ftyp":
        return "an HEIC/HEIF photo or a video (iPhone format)"
    for magic, what in _OTHER_KINDS:
        if head.startswith(magic):
            return what
    return "something else"


def check_image(fd: int, name: str, size: int, *, decode: bool = False) -> ImageProblem | None:
    """Check the open regular file ``fd`` (``size`` bytes, > 0) named ``name`` (.jpg/.jpeg/.png)."""
    kind = _KINDS[name.rpartition(".")[2].lower()]
    start, end = _SIGNATURES[kind]
    head = os.pread(fd, 16, 0)
    if not head.strip(b"\x00") or (len(head) < len(start) and start.startswith(head)):
        return ImageProblem(
            "truncated_image",
            f"{name} has no image data yet (it looks like a copy that has not finished). "
            "Wait for the copy to finish, or copy the file again.",
        )
    if not head.startswith(start):
        return ImageProblem(
            "image_content_mismatch",
            f"{name} is named like a {kind} image but its content is {_describe(head)}. "
            f"Export it as {kind} or give it the right extension.",
        )
    tail_len = min(size, TAIL_BYTES)
    tail = os.pread(fd, tail_len, size - tail_len).rstrip(b"\x00")
    if not tail.endswith(end):
        return ImageProblem(
            "truncated_image",
            f"{name} is cut short: the end of the image is missing (the copy may not have finished). "
            "Wait for the copy to finish, or copy the file again.",
        )
    if decode:
        return _decode(fd, name)
    return None


def _decode(fd: int, name: str) -> ImageProblem | None:
    with open(fd, "rb", closefd=False) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(f) as img:
                img.load()
        except Image.DecompressionBombError:
            return ImageProblem(
                "image_content_mismatch",
                f"{name} has far too many pixels to be a photo. Resize it before sending it.",
            )
        except Exception as e:  # corrupt data raises many types: OSError, SyntaxError, struct.error...
            return ImageProblem(
                "truncated_image",
                f"{name} is damaged and cannot be opened as an image ({e}). Copy or export it again.",
            )
    return None
