"""A bandwidth limit that changes while uploads run: ``Bandwidth.set_rate`` on waiters already sleeping,
the ``Throttle`` that follows ``upload.max_bandwidth``'s timetable, what the status shows, and a real
daemon whose upload is released by a SIGHUP that lifts the limit.

The token-bucket tests run on an event loop with a virtual clock (time jumps to the next timer when
every task waits), shared with ``Bandwidth(clock=loop.time)``: paces and wake-ups are exact, and no
test waits for real time to pass.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
import yaml
from helpers.daemon import DaemonProcess, received_work_orders, write_config
from helpers.files import free_port
from helpers.receiver import ReceiverThread
from helpers.statusdb import StatusFixture, populate
from helpers.workorders import drop_atomically
from wodrop.status import collect_status
from wodrop.status.page import render_page
from wodrop.upload.bandwidth import Bandwidth, Throttle
from wodrop.upload.schedule import parse_bandwidth

KiB, MiB = 1024, 1024**2
T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` only moves when every task waits: it jumps to the next timer at once."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        select = self._selector.select  # type: ignore[attr-defined]

        def virtual_select(timeout: float | None = None) -> Any:
            events = select(0)
            if not events and timeout is None:
                raise RuntimeError("deadlock: every task waits and no timer is set")
            if not events and timeout:
                self._now += timeout
            return events

        self._selector.select = virtual_select  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._now


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


# ---- Bandwidth.set_rate --------------------------------------------------------------------------


def test_set_rate_changes_the_pace_of_a_running_acquire_loop() -> None:
    """One sender, 1000 bytes at a time: 10 kB/s for 10 s, then 40 kB/s for 10 s, then no limit."""

    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        bw = Bandwidth(10_000, burst=1_000, clock=loop.time)
        sent: list[tuple[float, int]] = [(0.0, 0)]

        async def sender() -> None:
            while sent[-1][1] < 1_000_000:
                await bw.acquire(1_000)
                sent.append((loop.time(), sent[-1][1] + 1_000))

        task = asyncio.create_task(sender())
        await asyncio.sleep(10)
        bw.set_rate(40_000)
        await asyncio.sleep(10)
        bw.set_rate(None)
        await task
        return sent

    sent = run_virtual(main)

    def sent_before(t: float) -> int:
        return max(n for when, n in sent if when < t - 1e-6)

    assert sent_before(10) == pytest.approx(1_000 + 10 * 10_000, abs=1_000)  # the burst, then 10 kB/s
    assert sent_before(20) - sent_before(10) == pytest.approx(10 * 40_000, abs=1_000)  # 40 kB/s
    assert sent[-1] == (pytest.approx(20.0), 1_000_000)  # then the other half at once


@pytest.mark.parametrize(("new_rate", "done_at"), [(4_000, 4.0), (250, 34.0), (None, 2.0)])
def test_a_waiting_acquire_pays_the_rest_of_its_debt_at_the_new_rate(new_rate: float | None,
                                                                     done_at: float) -> None:
    """10 kB owed at 1 kB/s (10 s); at 2 s, 8 kB are left: 2 s at 4 kB/s, 32 s at 250 B/s, none unlimited."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        bw = Bandwidth(1_000, burst=1_000, clock=loop.time)
        await bw.acquire(1_000)  # the burst, at once
        assert loop.time() == 0
        waiting = asyncio.create_task(bw.acquire(10_000))
        await asyncio.sleep(2)
        assert not waiting.done()
        bw.set_rate(new_rate)
        await waiting
        return loop.time()

    assert run_virtual(main) == pytest.approx(done_at)


def test_lifting_the_limit_releases_every_waiter_at_once() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        bw = Bandwidth(1_000, burst=1_000, clock=loop.time)
        finished: list[float] = []

        async def send(n: int) -> None:
            await bw.acquire(n)
            finished.append(loop.time())

        tasks = [asyncio.create_task(send(50_000)) for _ in range(3)]  # 50 s, 100 s, 150 s in turn
        await asyncio.sleep(1)
        bw.set_rate(None)
        await asyncio.gather(*tasks)
        return finished

    assert run_virtual(main) == [1.0, 1.0, 1.0]


def test_from_no_limit_to_a_limit() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        bw = Bandwidth(clock=loop.time)
        assert bw.rate is None
        await bw.acquire(10**12)  # no limit: at once
        times = [loop.time()]
        bw.set_rate(100_000)  # a quarter second of burst, at least 64 KiB: 65536 bytes
        await bw.acquire(65_536)
        times.append(loop.time())
        await bw.acquire(100_000)
        times.append(loop.time())
        return times

    assert run_virtual(main) == [0.0, 0.0, pytest.approx(1.0)]


@pytest.mark.parametrize("rate", [0, -1, float("nan")])
def test_a_rate_is_positive_or_none(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        Bandwidth(rate)
    with pytest.raises(ValueError, match="rate must be > 0"):
        Bandwidth(1000).set_rate(rate)


# ---- Throttle: following the timetable -----------------------------------------------------------

MONDAY_MORNING = datetime(2024, 5, 6, 7, 59, 30)


def virtual_local_clock(start: datetime) -> Callable[[], datetime]:
    """The local time ``start`` (naive, read in the system's zone) plus the virtual loop's seconds."""
    aware = start.astimezone()
    loop = asyncio.get_running_loop()
    return lambda: aware + timedelta(seconds=loop.time())


def local(*args: int) -> datetime:
    return datetime(*args).astimezone()  # type: ignore[arg-type]


def test_throttle_sets_the_rate_at_each_change_time() -> None:
    async def main() -> list[dict[str, Any]]:
        with structlog.testing.capture_logs() as logs:
            throttle = Throttle(parse_bandwidth("08:00,1MiB 19:00,off"),
                                now=virtual_local_clock(MONDAY_MORNING))
            assert throttle.limiter.rate is None  # 07:59:30: last night's "off"
            assert throttle.next_change_at == local(2024, 5, 6, 8, 0) and throttle.next_rate == MiB
            task = asyncio.create_task(throttle.run())
            await asyncio.sleep(29.5)
            assert throttle.limiter.rate is None
            await asyncio.sleep(1)  # 08:00:00.5
            assert throttle.limiter.rate == MiB
            assert throttle.next_change_at == local(2024, 5, 6, 19, 0) and throttle.next_rate is None
            await asyncio.sleep(11 * 3600 - 1)  # 18:59:59.5
            assert throttle.limiter.rate == MiB
            await asyncio.sleep(1)  # 19:00:00.5
            assert throttle.limiter.rate is None
            assert throttle.next_change_at == local(2024, 5, 7, 8, 0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return [e for e in logs if e["event"] == "bandwidth_changed"]

    events = run_virtual(main)
    assert [(e["reason"], e["limit_bytes_per_s"]) for e in events] == [("start", None), ("schedule", MiB),
                                                                       ("schedule", None)]
    assert events[1]["limit"] == "1.0 MiB/s" and events[1]["schedule"] == "08:00,1MiB 19:00,off"
    assert events[1]["next_change_at"] == local(2024, 5, 6, 19, 0).isoformat()
    assert events[1]["next_limit"] == "no limit"


def test_throttle_slows_an_upload_under_way_when_the_limit_starts() -> None:
    """A sender going flat out before 08:00 is held to the timetable's rate from 08:00 on."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        throttle = Throttle(parse_bandwidth("08:00,100KiB 19:00,off"),
                            now=virtual_local_clock(MONDAY_MORNING), limiter=Bandwidth(clock=loop.time))
        runner = asyncio.create_task(throttle.run())
        sent = 0

        async def sender() -> None:
            nonlocal sent
            while True:
                await throttle.limiter.acquire(1024)
                sent += 1024
                await asyncio.sleep(0.001)  # a network that does 1 MiB/s

        task = asyncio.create_task(sender())
        await asyncio.sleep(30.5)  # 08:00:00.5
        at_eight = sent
        await asyncio.sleep(10)
        in_ten_seconds = sent - at_eight
        for t in (task, runner):
            t.cancel()
        await asyncio.gather(task, runner, return_exceptions=True)
        return at_eight, in_ten_seconds

    at_eight, in_ten_seconds = run_virtual(main)
    assert at_eight > 25 * MiB  # unlimited before 08:00
    assert in_ten_seconds == pytest.approx(10 * 100 * KiB, abs=64 * KiB)  # then 100 KiB/s (+ a burst)


def test_replace_applies_at_once_and_the_new_timetable_is_followed() -> None:
    async def main() -> list[dict[str, Any]]:
        with structlog.testing.capture_logs() as logs:
            throttle = Throttle(parse_bandwidth("00:00,16KiB"), now=virtual_local_clock(MONDAY_MORNING))
            task = asyncio.create_task(throttle.run())
            await asyncio.sleep(5)
            assert throttle.limiter.rate == 16 * KiB and throttle.next_change_at is None
            throttle.replace(parse_bandwidth("off"))  # SIGHUP
            assert throttle.limiter.rate is None and throttle.next_change_at is None
            throttle.replace(parse_bandwidth("08:01,2MiB 12:00,off"))  # 07:59:35 now
            assert throttle.limiter.rate is None and throttle.next_change_at == local(2024, 5, 6, 8, 1)
            await asyncio.sleep(90)  # 08:01:05: the sleeping run() woke up for the new timetable
            assert throttle.limiter.rate == 2 * MiB
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return [e for e in logs if e["event"] == "bandwidth_changed"]

    events = run_virtual(main)
    assert [(e["reason"], e["limit_bytes_per_s"]) for e in events] == [
        ("start", 16 * KiB), ("reload", None), ("reload", None), ("schedule", 2 * MiB)]
    assert events[1]["previous_bytes_per_s"] == 16 * KiB and events[1]["schedule"] is None
    assert events[2]["schedule"] == "08:01,2MiB 12:00,off"  # same rate, but a new timetable: said so


def test_following_runs_the_timetable_for_the_block_only() -> None:
    """``wodrop upload``: the one-shot upload follows the timetable while it runs, and leaves no task."""

    async def main() -> None:
        throttle = Throttle(parse_bandwidth("08:00,1MiB 19:00,off"), now=virtual_local_clock(MONDAY_MORNING))
        async with throttle.following() as limiter:
            assert limiter is throttle.limiter and limiter.rate is None
            await asyncio.sleep(31)
            assert limiter.rate == MiB
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run_virtual(main)


# ---- status --------------------------------------------------------------------------------------


@pytest.fixture
def fx(tmp_path: Path) -> StatusFixture:
    return populate(tmp_path)


def test_status_shows_the_limit_and_the_next_change(fx: StatusFixture) -> None:
    noon = datetime(2024, 5, 6, 12, 0).astimezone()
    fx.runtime.bandwidth = Throttle(parse_bandwidth("08:00,1MiB 19:00,off"), now=lambda: noon)
    status = collect_status(fx.db, fx.runtime)
    seven_pm = datetime(2024, 5, 6, 19, 0).astimezone().astimezone(UTC)
    assert status["daemon"]["bandwidth"] == {
        "limit_bytes_per_s": MiB,
        "schedule": "08:00,1MiB 19:00,off",
        "next_change_at": seven_pm.isoformat().replace("+00:00", "Z"),
        "next_limit_bytes_per_s": None,
    }
    page = render_page(status)
    tile = page.split('id="bandwidth"', 1)[1].split("</div></div>", 1)[0]
    assert "1.0 MiB/s" in tile and "upload limit · no limit from Mon 19:00" in tile
    assert 'title="upload.max_bandwidth: 08:00,1MiB 19:00,off (local time)"' in page


def test_status_without_a_limit(fx: StatusFixture) -> None:
    fx.runtime.bandwidth = Throttle(parse_bandwidth(None))
    status = collect_status(fx.db, fx.runtime)
    assert status["daemon"]["bandwidth"] == {"limit_bytes_per_s": None, "schedule": None,
                                             "next_change_at": None, "next_limit_bytes_per_s": None}
    assert 'id="bandwidth"' not in render_page(status)
    fx.runtime.bandwidth = None  # before uploads are set up
    assert collect_status(fx.db, fx.runtime)["daemon"]["bandwidth"] is None


# ---- end to end ----------------------------------------------------------------------------------


def _api_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def test_sighup_lifts_a_timetable_limit_from_an_upload_under_way(tmp_path: Path) -> None:
    """A timetable holds the upload at 16 KiB/s (about two minutes for this batch); a SIGHUP with
    ``max_bandwidth: off`` releases the very same upload, which then finishes at once."""
    now = datetime.now()
    # 16 KiB/s since 6 hours ago, off from 6 hours from now: no change while the test runs
    slow_since, off_from = (f"{now + timedelta(hours=h):%H:%M}" for h in (-6, 6))
    timetable = " ".join(f"{t},{r}" for t, r in sorted([(slow_since, "16KiB"), (off_from, "off")]))
    port = free_port()
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, upload={"max_bandwidth": timetable},
                           status={"listen": f"127.0.0.1:{port}"})
        with DaemonProcess(cfg) as d:
            (start,) = d.wait_for_event("bandwidth_changed", timeout=30)
            assert (start["reason"], start["limit_bytes_per_s"], start["schedule"]) == ("start", 16 * KiB,
                                                                                        timetable)
            change = datetime.fromisoformat(start["next_change_at"])
            assert timedelta(hours=5, minutes=58) < change - now.astimezone() <= timedelta(hours=6)

            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_BW", images=("A-0.jpg", "A-1.jpg"),
                            image_size=1_000_000)
            (started,) = d.wait_for_event("upload_started", timeout=30)
            assert started["size"] > 1_900_000  # about two minutes at 16 KiB/s
            d.wait_for(lambda: rx.stats["bytes_received"] >= 64 * KiB, timeout=30, what="upload under way")
            bw = _api_status(port)["daemon"]["bandwidth"]
            assert (bw["limit_bytes_per_s"], bw["schedule"]) == (16 * KiB, timetable)
            assert bw["next_limit_bytes_per_s"] is None
            assert datetime.fromisoformat(bw["next_change_at"]) == change
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                page = r.read().decode()
            assert "16.0 KiB/s" in page.split('id="bandwidth"', 1)[1].split("</div></div>")[0]
            # held by the limit: nowhere near finished
            assert d.count_events("batch_uploaded") == 0 and rx.stats["bytes_received"] < started["size"] // 2

            config = yaml.safe_load(cfg.read_text())
            config["upload"]["max_bandwidth"] = "off"
            cfg.write_text(yaml.safe_dump(config))
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            lifted = d.wait_for_event("bandwidth_changed", count=2, timeout=30)[1]
            assert (lifted["reason"], lifted["limit_bytes_per_s"], lifted["previous_bytes_per_s"]) == (
                "reload", None, 16 * KiB)
            # at 16 KiB/s the rest would take well over a minute; lifted, it is sent at once
            (uploaded,) = d.wait_for_event("batch_uploaded", timeout=30)
            assert uploaded["batch"] == started["batch"] and d.count_events("upload_started") == 1
            assert _api_status(port)["daemon"]["bandwidth"] == {
                "limit_bytes_per_s": None, "schedule": None, "next_change_at": None,
                "next_limit_bytes_per_s": None}
            d.wait_for_finished(timeout=30)
    assert received_work_orders(rx.store) == ["WO_BW"]


@pytest.mark.slow
def test_the_daemon_lifts_the_limit_at_the_timetables_time(tmp_path: Path) -> None:
    """The timetable's own change, in a real daemon: 16 KiB/s until the next minute (or the one after,
    late in a minute), then off; the upload held until then finishes after it. Up to ~75 s of waiting
    for the clock, hence ``slow``."""
    now = datetime.now()
    change = now.replace(second=0, microsecond=0) + timedelta(minutes=1 if now.second < 45 else 2)
    timetable = " ".join(f"{t:%H:%M},{r}" for t, r in sorted([(now, "16KiB"), (change, "off")],
                                                               key=lambda e: e[0].strftime("%H:%M")))
    with ReceiverThread(tmp_path / "rx") as rx:
        cfg = write_config(tmp_path, rx.url, upload={"max_bandwidth": timetable})
        with DaemonProcess(cfg) as d:
            (start,) = d.wait_for_event("bandwidth_changed", timeout=30)
            assert (start["reason"], start["limit_bytes_per_s"]) == ("start", 16 * KiB)
            assert datetime.fromisoformat(start["next_change_at"]) == change.astimezone()
            drop_atomically(tmp_path / "staging", d.paths["inbox"], "WO_TT", images=("A-0.jpg", "A-1.jpg"),
                            image_size=1_000_000)
            (started,) = d.wait_for_event("upload_started", timeout=30)
            assert started["size"] > 1_900_000  # about two minutes at 16 KiB/s: still going at the change
            lifted = d.wait_for_event("bandwidth_changed", count=2, timeout=120)[1]
            assert (lifted["reason"], lifted["limit_bytes_per_s"], lifted["previous_bytes_per_s"]) == (
                "schedule", None, 16 * KiB)
            assert datetime.fromisoformat(lifted["timestamp"]) >= change.astimezone()
            (uploaded,) = d.wait_for_event("batch_uploaded", timeout=30)
            assert uploaded["batch"] == started["batch"]
            events = [e["event"] for e in d.events()]
            assert events.index("batch_uploaded") > [i for i, e in enumerate(events)
                                                     if e == "bandwidth_changed"][1]
            d.wait_for_finished(timeout=30)
    assert received_work_orders(rx.store) == ["WO_TT"]
