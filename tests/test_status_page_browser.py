"""The status page rendered by a real browser (headless Chromium, no network but loopback)."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from pathlib import Path

import pytest
from helpers.statusdb import API_KEY, UPLOAD_URL, populate
from PIL import Image
from wodrop.status.server import start_status_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WIDTH, HEIGHT = 1280, 900
WARN_AMBER = (0xB3, 0x59, 0x00)

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="chromium is not installed (CI installs it: apt-get install chromium)",
)


async def chromium(tmp: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp}", f"--window-size={WIDTH},{HEIGHT}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def test_status_page_in_chromium(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    fx = populate(tmp_path / "site")
    runner = await start_status_server(fx.runtime, "127.0.0.1:0")
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    try:
        await chromium(tmp_path / "profile-1", f"--screenshot={shot}", url)
        dom = (await chromium(tmp_path / "profile-2", "--dump-dom", url)).decode()
    finally:
        await runner.cleanup()
        fx.db.close()

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    assert struct.unpack(">II", data[16:24]) == (WIDTH, HEIGHT)
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.getpixel((4, 4)) == WARN_AMBER  # the header carries the health colour
        assert len(rgb.getcolors(WIDTH * HEIGHT) or []) > 200  # text and bars, not a blank page

    assert "batch-20240611-0002" in dom
    assert "40%" in dom and "40.0% · 100.0 MiB of 250.0 MiB · 12.3 MiB/s" in dom
    assert "photo.gif is not a JPEG or PNG image" in dom and "empty_file" in dom
    assert "2 work orders failed today" in dom
    assert "WO_bad_&lt;script&gt;" in dom and "<script" not in dom
    for secret in (API_KEY, UPLOAD_URL, "SECRET-UPLOAD-ID"):
        assert secret not in dom
