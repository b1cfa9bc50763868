"""The "last 24 hours" chart: the pure SVG/table rendering (no server), and the per-hour numbers it is
fed from a real state DB, with where batches go (the local-receiver banner)."""

from __future__ import annotations

import itertools
import re
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers.history import backdate, delivered_batch, failed_work_order, uploaded_batch
from helpers.statusdb import MiB, StatusFixture, populate
from wodrop.config import load_config
from wodrop.lifecycle import BatchState, WorkOrderState
from wodrop.status.chart import MIN_BAR, PANEL_HEIGHT, Hour, render_svg, render_table, summary
from wodrop.status.collect import ACTIVITY_HOURS, collect_status, destination
from wodrop.status.page import render_page

SVG = "{http://www.w3.org/2000/svg}"
PARIS = ZoneInfo("Europe/Paris")
TiB = 2**40


def day(end_utc: datetime, tz: ZoneInfo = PARIS, **per_hour: dict[int, int]) -> list[Hour]:
    """24 hours ending with the one that starts at ``end_utc``; ``per_hour[field] = {index: value}``."""
    last = end_utc.timestamp()
    return [
        Hour(start=datetime.fromtimestamp(last - 3600 * (23 - i), tz),
             **{field: values.get(i, 0) for field, values in per_hour.items()})
        for i in range(24)
    ]


def svg(hours: list[Hour]) -> ET.Element:
    """The chart parsed as XML: it must be well-formed to be drawn inline."""
    return ET.fromstring(render_svg(hours))


def bars(root: ET.Element, cls: str) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if r.get("class") == cls]


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def height(rect: ET.Element) -> float:
    return float(rect.get("height", "0"))


def table_rows(hours: list[Hour]) -> list[list[str]]:
    return [re.findall(r"<td>(.*?)</td>", row) for row in render_table(hours).split("<tr>")[2:]]


NOON = datetime(2024, 6, 11, 12, tzinfo=UTC)


def test_no_data() -> None:
    hours = day(NOON)
    root = svg(hours)
    assert not bars(root, "up") and not bars(root, "done") and not bars(root, "failed")
    assert "nothing uploaded" in texts(root) and "no work order finished" in texts(root)
    assert root.find(f"{SVG}title").text == "Uploads and work orders per hour, the last 24 hours"
    assert root.find(f"{SVG}desc").text == summary(hours) == (
        "Nothing was uploaded and no work order finished in the last 24 hours.")
    assert root.get("role") == "img" and root.get("aria-labelledby") == "activity-title activity-desc"
    rows = table_rows(hours)
    assert len(rows) == 24 and rows[0] == ["14:00-15:00 (so far)", "0", "0", "0", "0"]
    assert rows[-1][0] == "15:00-16:00"  # newest first, in Paris time (UTC+2 in June)
    assert "hour starting, local time (UTC+02:00)" in texts(root)
    assert svg([]).find(f"{SVG}desc") is not None  # even no hours at all renders


def test_one_hour() -> None:
    hours = [Hour(start=datetime(2024, 6, 11, 9, tzinfo=UTC), uploaded_bytes=5 * MiB, batches=1, done=3)]
    root = svg(hours)
    (up,), (done,) = bars(root, "up"), bars(root, "done")
    assert height(up) == PANEL_HEIGHT  # 5 MiB is a round top: the bar reaches it
    assert "5 MiB" in texts(root) and "2.5 MiB" in texts(root)
    tips = [t.text for t in root.iter(f"{SVG}title")]
    assert "09:00-10:00: 5.0 MiB in 1 batch (about 1.4 KiB/s)" in tips
    assert "09:00-10:00: 3 delivered, 0 failed" in tips
    assert height(done) == pytest.approx(PANEL_HEIGHT * 3 / 5)  # axis 0..5
    assert summary(hours) == ("In the last hour: 5.0 MiB uploaded in 1 batch (busiest hour 09:00: "
                              "5.0 MiB); 3 work orders delivered, 0 failed.")


def test_a_huge_hour_keeps_the_small_ones_visible() -> None:
    hours = day(NOON, uploaded_bytes={i: MiB for i in range(24)} | {7: 3 * TiB},
                batches={i: 1 for i in range(24)}, done={i: 1 for i in range(24)} | {7: 40_000})
    root = svg(hours)
    up, done = bars(root, "up"), bars(root, "done")
    assert len(up) == 24 and len(done) == 24
    assert max(height(r) for r in up) == pytest.approx(PANEL_HEIGHT * 3 / 5)  # axis up to 5 TiB
    assert min(height(r) for r in up) == MIN_BAR and min(height(r) for r in done) == MIN_BAR
    assert {"5 TiB", "50000"} <= set(texts(root))
    assert "busiest hour 22:00: 3.0 TiB" in summary(hours)  # 20:00 UTC
    # beyond the last round step the axis is the peak itself
    root = svg(day(NOON, uploaded_bytes={3: 900 * 2**50}))
    assert height(bars(root, "up")[0]) == PANEL_HEIGHT


def test_hours_with_only_failures() -> None:
    hours = day(NOON, failed={20: 4, 21: 1}, done={21: 1})
    root = svg(hours)
    failed, done = bars(root, "failed"), bars(root, "done")
    assert len(failed) == 2 and len(done) == 1
    bottom = float(done[0].get("y")) + height(done[0])
    alone = failed[0]  # hour 20: nothing delivered, the red bar stands on the axis
    assert float(alone.get("y")) + height(alone) == pytest.approx(bottom)
    stacked = failed[1]  # hour 21: red on top of green
    assert float(stacked.get("y")) + height(stacked) == pytest.approx(float(done[0].get("y")))
    assert "nothing uploaded" in texts(root) and "no work order finished" not in texts(root)
    assert summary(hours).endswith("1 work order delivered, 5 failed.")


def test_clock_set_back_in_autumn() -> None:
    # 27 Oct 2024: at 03:00 CEST Paris clocks go back to 02:00 CET, so 02:00 starts twice
    hours = day(datetime(2024, 10, 27, 10, tzinfo=UTC), done={13: 2, 14: 3})
    starts = [row[0] for row in table_rows(hours)][::-1]
    assert starts[12:16] == ["01:00-02:00 (UTC+02:00)", "02:00-02:00 (UTC+02:00)",
                             "02:00-03:00 (UTC+01:00)", "03:00-04:00 (UTC+01:00)"]
    root = svg(hours)
    tips = [t.text for t in root.iter(f"{SVG}title")]
    assert "02:00-02:00 (UTC+02:00): 2 delivered, 0 failed" in tips
    assert "02:00-03:00 (UTC+01:00): 3 delivered, 0 failed" in tips
    assert "hour starting, local time (UTC+01:00, the clock changed)" in texts(root)


def test_clock_set_forward_in_spring() -> None:
    # 31 Mar 2024: at 02:00 CET Paris clocks jump to 03:00 CEST: no hour starts at 02:00, and the
    # last 24 hours run from 14:00 yesterday to 14:00 today
    hours = day(datetime(2024, 3, 31, 12, tzinfo=UTC))
    starts = [row[0].split("-")[0] for row in table_rows(hours)]
    assert "02:00" not in starts and starts[0] == starts[-1] == "14:00" and len(set(starts)) == 23
    assert table_rows(hours)[11][0] == "03:00-04:00 (UTC+02:00)"
    assert table_rows(hours)[12][0] == "01:00-03:00 (UTC+01:00)"  # CET 01:00 ends at CEST 03:00


# ---- fed from a real state DB ---------------------------------------------------------------------


@pytest.fixture
def fx(tmp_path: Path) -> StatusFixture:
    return populate(tmp_path)


def test_hourly_activity_from_the_state_db(fx: StatusFixture) -> None:
    db = fx.db
    since = time.time() - 10 * 3600  # hour i covers [since + i h, since + (i+1) h)
    at = {i: since + 3600 * i + 600 for i in range(10)}
    for row in db.work_orders(states=[WorkOrderState.FAILED]):  # populate()'s, stamped now
        backdate(fx, "work_orders", row.id, finished_at=since - 60)

    delivered_batch(fx, "old", 7 * MiB, 2, since - 7200)  # the day before: not counted
    two, two_wos = uploaded_batch(fx, "two", 30 * MiB, 3)  # uploaded in hour 2, moved in hours 2 and 3
    for wo, hour in zip(two_wos, (2, 2, 3), strict=True):
        db.finish_work_order(wo, WorkOrderState.DONE, fx.cfg.paths.done / str(wo))
        backdate(fx, "work_orders", wo, finished_at=at[hour])
    db.finish_batch(two, BatchState.DONE)
    backdate(fx, "batches", two, uploaded_at=at[2], finished_at=at[3])

    moving, moving_wos = uploaded_batch(fx, "moving", 5 * MiB, 2)  # uploaded, one folder moved so far
    db.finish_work_order(moving_wos[0], WorkOrderState.DONE, fx.cfg.paths.done / "m0")
    backdate(fx, "work_orders", moving_wos[0], finished_at=at[5])
    backdate(fx, "batches", moving, uploaded_at=at[5])

    for hour, name in ((4, "F1"), (4, "F2"), (7, "F3")):
        failed_work_order(fx, name, at[hour])
    retried = failed_work_order(fx, "F4", at[7])  # sent back to the inbox: no longer in failed/
    db.finish_work_order(retried, WorkOrderState.RETRIED, fx.cfg.paths.inbox / "F4")
    backdate(fx, "work_orders", retried, finished_at=at[7])

    future, _ = uploaded_batch(fx, "future", MiB, 1)  # the clock was set back since: counts as now
    backdate(fx, "batches", future, uploaded_at=time.time() + 5400)
    backdate(fx, "batches", fx.done_id, uploaded_at=since - 60, finished_at=since - 60)
    for row in db.work_orders(states=[WorkOrderState.DONE], batch_id=fx.done_id):
        backdate(fx, "work_orders", row.id, finished_at=since - 60)

    got = db.hourly_activity(since, 10)
    assert got == {
        "uploaded_bytes": [0, 0, 30 * MiB, 0, 0, 5 * MiB, 0, 0, 0, MiB],
        "batches_uploaded": [0, 0, 1, 0, 0, 1, 0, 0, 0, 1],
        "work_orders_done": [0, 0, 2, 1, 0, 1, 0, 0, 0, 0],
        "work_orders_failed": [0, 0, 0, 0, 2, 0, 0, 1, 0, 0],
    }


def test_status_activity_is_24_local_hours_ending_now(fx: StatusFixture) -> None:
    activity = collect_status(fx.db, fx.runtime)["activity"]
    assert len(activity) == ACTIVITY_HOURS
    starts = [datetime.fromisoformat(a["start"]).timestamp() for a in activity]
    assert all(b - a == 3600 for a, b in itertools.pairwise(starts))
    assert starts[-1] <= time.time() < starts[-1] + 3600
    assert datetime.fromtimestamp(starts[-1]).minute == 0  # on the local clock's hour
    # populate(): one batch of 10 MiB confirmed, 3 work orders delivered and 2 failed, all just now
    totals = {key: sum(a[key] for a in activity) for key in activity[0] if key != "start"}
    assert totals == {"uploaded_bytes": 10 * MiB, "batches_uploaded": 1, "work_orders_done": 3,
                      "work_orders_failed": 2}
    assert activity[-1]["work_orders_done"] in (0, 3)  # 0 only if an hour began since populate()


def test_destination_and_banner(fx: StatusFixture, tmp_path: Path) -> None:
    status = collect_status(fx.db, fx.runtime)
    store = fx.cfg.paths.state / "received"
    assert status["destination"] == {"kind": "local_receiver", "store": str(store),
                                     "config_file": str(fx.config_path)}
    page = render_page(status)
    banner = page[page.index('<div class="notice" id="destination"'):page.index("<main>")]
    assert "nothing is sent to the platform" in banner and str(store) in banner
    assert f"<code>{fx.config_path}</code>" in banner and "api.url" in banner
    assert '<figure class="chart" id="activity"><svg' in page and "<details>" in page

    config = tmp_path / "platform.yaml"
    config.write_text("api:\n  url: https://api.site-1.customers.example.test/v0.2?token=SECRET-IN-QUERY#x\n")
    cfg = load_config(config, environ={})
    assert destination(cfg) == {"kind": "platform", "api_url": "https://api.site-1.customers.example.test/v0.2"}
    fx.runtime.cfg = cfg
    page = render_page(collect_status(fx.db, fx.runtime))
    assert 'id="destination"' not in page and "SECRET-IN-QUERY" not in page
    assert "uploading to https://api.site-1.customers.example.test/v0.2" in page


def _tiles(page: str) -> dict[str, str]:
    """The page's tiles: label -> number."""
    found = re.findall(r'<div class="n">([^<]*)</div><div class="l">([^<]*)</div>', page)
    return {label: n for n, label in found}


def test_counts_on_the_page_agree_with_their_nouns(fx: StatusFixture) -> None:
    """Not "1 work orders delivered": each count's noun agrees with it, on the tiles and the batches."""
    status = collect_status(fx.db, fx.runtime)
    status["counts"]["work_orders"]["done"] = 1
    page = render_page(status)
    assert _tiles(page)["batch uploading"] == "1" and _tiles(page)["work order delivered"] == "1"
    assert "2 work orders · sealed by size · 1 failed attempt" in page  # the uploading batch
    status["counts"]["work_orders"]["done"] = 2
    status["batches"] = [{**b, "state": "uploading"} for b in status["batches"]]
    tiles = _tiles(render_page(status))
    assert tiles["batches uploading"] == "2" and tiles["work orders delivered"] == "2"
