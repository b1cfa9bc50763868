"""The status page rendered by a real browser (headless Chromium, no network but loopback): the status
server on a real state DB with a day of history, in zero-config mode (no ``api.url``)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import time
from datetime import date, datetime
from pathlib import Path

import pytest
from helpers.history import delivered_batch, failed_work_order
from helpers.statusdb import API_KEY, UPLOAD_URL, MiB, StatusFixture, populate
from PIL import Image, ImageChops
from wodrop.status.server import start_status_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WIDTH, HEIGHT = 1280, 1200
WARN_AMBER = (0xB3, 0x59, 0x00)
NOTICE_YELLOW = (0xFF, 0xF8, 0xC5)
NOW_BAND = (0xEE, 0xF4, 0xFB)  # the chart's current-hour shading: finds the plot area in the picture
BLUE, GREEN, RED = (0x09, 0x69, 0xDA), (0x1A, 0x7F, 0x37), (0xC6, 0x28, 0x28)
HOURS = 24

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK) and os.environ.get("CI") != "true",
    reason="chromium is not installed (CI installs it: apt-get install chromium; with CI=true this fails)",
)


async def chromium(tmp: Path, *args: str) -> bytes:
    assert os.access(CHROMIUM, os.X_OK), "CI=true: chromium must be installed (apt-get install chromium)"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp}", f"--window-size={WIDTH},{HEIGHT}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


def add_a_day(fx: StatusFixture) -> tuple[int, int]:
    """Batches in most of the last 23 hours (one huge hour, a quiet night), and an hour in which only
    validation failed. Returns (hours with uploads, hours with failures) besides the current one."""
    now = time.time()
    uploads = 0
    for h in range(1, HOURS):
        if h in (6, 7, 8):
            continue
        size = (2048 if h == 11 else 40 + 37 * (h % 7)) * MiB
        delivered_batch(fx, f"batch-hist-{h:02d}", size, 2 + h % 9, now - h * 3600)
        uploads += 1
    for i in range(5):
        failed_work_order(fx, f"WO_night_{i}", now - 7 * 3600)
    return uploads, 1


def mask(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """White where the picture has exactly this colour, black elsewhere."""
    channels = [band.point(lambda v, want=want: 255 if v == want else 0)
                for band, want in zip(img.split(), colour, strict=True)]
    return ImageChops.multiply(ImageChops.multiply(channels[0], channels[1]), channels[2])


Box = tuple[int, int, int, int]


def count(img: Image.Image, colour: tuple[int, int, int], box: Box | None = None) -> int:
    """Pixels of exactly this colour (in ``box``, when given)."""
    return mask(img.crop(box) if box else img, colour).histogram()[255]


async def test_status_page_in_chromium(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    fx = populate(tmp_path / "site")
    upload_hours, failure_hours = add_a_day(fx)
    runner = await start_status_server(fx.runtime, "127.0.0.1:0")
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    try:
        await chromium(tmp_path / "profile-1", "--hide-scrollbars", f"--screenshot={shot}", url)
        dom = (await chromium(tmp_path / "profile-2", "--dump-dom", url)).decode()
    finally:
        await runner.cleanup()
        fx.db.close()

    # what the browser built: banner, chart (bars, title, description, axis labels), numbers as text
    store = fx.cfg.paths.state / "received"
    assert "Test mode: nothing is sent to the platform." in dom and f"<code>{store}</code>" in dom
    svg = dom[dom.index('<svg xmlns="http://www.w3.org/2000/svg" class="activity"'):dom.index("</svg>")]
    assert len(re.findall(r'<rect class="up"', svg)) == upload_hours + 1  # + populate()'s, this hour
    assert len(re.findall(r'<rect class="failed"', svg)) == failure_hours + 1
    assert len(re.findall(r'<rect class="done"', svg)) == upload_hours + 1
    assert '<title id="activity-title">' in svg and '<desc id="activity-desc">' in svg
    assert ">Uploaded per hour<" in svg and ">Work orders per hour<" in svg and "2 GiB" in svg
    assert "busiest hour" in dom and "<summary>The numbers, hour by hour</summary>" in dom
    assert dom.count("(so far)</td>") == 1

    assert "batch-20240611-0002" in dom
    assert "40%" in dom and "40.0% · 100.0 MiB of 250.0 MiB · 12.3 MiB/s" in dom
    assert "photo.gif is not a JPEG or PNG image" in dom and "empty_file" in dom
    night_is_today = datetime.fromtimestamp(time.time() - 7 * 3600).date() == date.today()
    assert f"{7 if night_is_today else 2} work orders failed today" in dom
    assert "WO_bad_&lt;script&gt;" in dom and "<script" not in dom
    for secret in (API_KEY, UPLOAD_URL, "SECRET-UPLOAD-ID", "history-batch-hist"):
        assert secret not in dom

    # what it painted: a full-size picture with the health colour, the banner, and the chart's bars
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (WIDTH, HEIGHT)
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
    assert rgb.getpixel((4, 4)) == WARN_AMBER  # the header carries the health colour
    assert len(rgb.getcolors(WIDTH * HEIGHT) or []) > 200  # text and bars, not a blank page
    assert count(rgb, NOTICE_YELLOW) > WIDTH * 40  # the banner, across the page
    band = mask(rgb, NOW_BAND).getbbox()
    assert band is not None, "the chart's current-hour band is not on the screenshot"
    left, top, right, bottom = band  # getbbox: right and bottom are exclusive
    plot = (right - (right - left) * HOURS, top, right, bottom)  # 24 hour slots wide
    assert plot[0] > 0
    assert count(rgb, BLUE, plot) > 2000  # upload bars (the tallest alone is ~40 px by ~70 px)
    assert count(rgb, GREEN, plot) > 2000  # delivered work orders
    assert count(rgb, RED, plot) > 1000  # the hour with only failures
