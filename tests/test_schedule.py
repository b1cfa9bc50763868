"""``upload.max_bandwidth`` timetables: the parser, its field-precise errors, and the evaluator
(``rate_at``, ``next_change_after``) against a plain model of the wall clock, across midnight, the week
and daylight saving time."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wodrop.config import ConfigError, load_config
from wodrop.upload.schedule import (
    DAYS,
    BandwidthSchedule,
    Entry,
    local_instant,
    parse_bandwidth,
)

KiB, MiB = 1024, 1024**2
PARIS = ZoneInfo("Europe/Paris")


def at(hh: int, mm: int = 0, ss: int = 0, day: int = 6) -> datetime:
    """A naive wall-clock time; May 2024: the 6th is a Monday (``day`` 6 -> Monday, 12 -> Sunday)."""
    return datetime(2024, 5, day, hh, mm, ss)


# ---- parsing -------------------------------------------------------------------------------------


def test_the_issue_example() -> None:
    s = parse_bandwidth("08:00,2MiB 19:00,off")
    assert s.entries == (Entry(None, 8 * 60, 2 * MiB), Entry(None, 19 * 60, None))
    assert str(s) == "08:00,2MiB 19:00,off" and s.is_timetable and s.limited
    assert s.rate_at(at(7, 59, 59)) is None  # 19:00's "off" holds overnight, until 08:00
    assert s.rate_at(at(8)) == 2 * MiB
    assert s.rate_at(at(18, 59, 59)) == 2 * MiB
    assert s.rate_at(at(19)) is None
    assert s.next_change_after(at(12)) == at(19)
    assert s.next_change_after(at(19)) == at(8, day=7)  # tomorrow morning
    assert s.next_change_after(at(3, 17, 42)) == at(8)


def test_rclones_documented_example_and_spacing() -> None:
    s = parse_bandwidth("08:00,512k 12:00,10M  13:00 , 512k 18:00,30M 23:00,off")
    assert [(e.when, e.rate) for e in s.entries] == [
        ("08:00", 512_000), ("12:00", 10_000_000), ("13:00", 512_000), ("18:00", 30_000_000), ("23:00", None)]
    assert str(s) == "08:00,512k 12:00,10M 13:00,512k 18:00,30M 23:00,off"
    assert s.rate_at(at(12, 30)) == 10_000_000 and s.rate_at(at(23, 30)) is None


@pytest.mark.parametrize(("value", "constant"), [
    (None, None), (False, None), ("off", None), ("OFF", None), (0, None), ("0", None),
    ("2MiB", 2 * MiB), (2_000_000, 2_000_000), ("1.5MB", 1_500_000), ("1KiB", 1024),
])
def test_constant_rates(value: object, constant: int | None) -> None:
    s = parse_bandwidth(value)
    assert not s.is_timetable and s.constant == constant
    assert s.rate_at(at(3)) == (None if constant is None else float(constant))
    assert s.next_change_after(at(3)) is None


def test_a_list_of_entries_is_a_timetable() -> None:
    assert parse_bandwidth(["08:00,2MiB", "19:00,off"]) == parse_bandwidth("08:00,2MiB 19:00,off")


def test_zero_in_a_timetable_is_off_like_in_rclone() -> None:
    assert parse_bandwidth("08:00,0 19:00,1MiB").entries[0].rate is None


def test_weekly_timetable() -> None:
    s = parse_bandwidth("Mon-08:00,2MiB Fri-19:00,off saturday-10:00,1MiB sun-20:00,off")
    assert [e.when for e in s.entries] == ["Mon-08:00", "Fri-19:00", "Sat-10:00", "Sun-20:00"]
    assert s.rate_at(at(7, 59, day=6)) is None  # Monday before 08:00: Sunday 20:00's off
    assert s.rate_at(at(8, day=6)) == 2 * MiB
    assert s.rate_at(at(3, day=9)) == 2 * MiB  # Thursday night: still Monday's
    assert s.rate_at(at(19, day=10)) is None  # Friday 19:00
    assert s.rate_at(at(12, day=11)) == MiB  # Saturday
    assert s.rate_at(at(21, day=12)) is None  # Sunday evening, until Monday 08:00
    assert s.next_change_after(at(21, day=12)) == at(8, day=13)
    assert s.next_change_after(at(12, day=7)) == at(19, day=10)


@pytest.mark.parametrize(("value", "message"), [
    ("25:00,1MiB", "25:00 is not a time of day (HH:MM)"),
    ("08:60,1MiB", "08:60 is not a time of day (HH:MM)"),
    ("8am,1MiB", "8am is not a time of day (HH:MM)"),
    ("12:00,1MiB 08:00,2MiB", "08:00 is listed after 12:00: list the times in order through the day"),
    ("08:00,1MiB 08:00,2MiB", "08:00 is listed twice"),
    ("Fri-08:00,1MiB Mon-08:00,2MiB", "Mon-08:00 is listed after Fri-08:00: list the times in order "
                                      "through the week, from Mon to Sun"),
    ("Mon-08:00,1MiB 12:00,off", "Mon-08:00 has a day and 12:00 has none: give every entry a day, or none"),
    ("Mnd-08:00,1MiB", "Mnd-08:00: expected a day Mon, Tue, Wed, Thu, Fri, Sat or Sun"),
    ("08:00,fast 19:00,off", "08:00,fast: expected a size like 512MiB, or off"),
    ("08:00,512 19:00,off", "08:00,512: a rate is at least 1KiB"),
    ("08:00,-1MiB", "08:00,-1MiB: expected a size like 512MiB, or off"),
    ("08:00", "08:00: expected entries like 08:00,2MiB separated by spaces"),
    ("08:00 2MiB", "08:00: expected entries like 08:00,2MiB separated by spaces"),
    ("08:00,1MiB,2MiB", "08:00,1MiB,2MiB: expected entries like 08:00,2MiB"),
    ("lots", 'expected a size like 2MiB (bytes per second), off, or a timetable like "08:00,2MiB 19:00,off"'),
    ("512", "expected at least 1KiB (bytes per second: a bare number is bytes, not KiB as in rclone)"),
    ("1M:off", "expected one rate for uploads, not rclone's UP:DOWN pair"),
    (True, "expected a size like 2MiB"),
    (float("nan"), "expected a finite size like 512MiB"),
    (-5, "expected a size like 512MiB, not a negative number"),
])
def test_errors_say_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_bandwidth(value)
    assert message in str(exc.value)


# ---- in the config -------------------------------------------------------------------------------


def _load(tmp_path: Path, yaml_value: str) -> object:
    path = tmp_path / "wodrop.yaml"
    path.write_text(f"upload:\n  max_bandwidth: {yaml_value}\n", encoding="utf-8")
    return load_config(path, environ={}).upload


@pytest.mark.parametrize(("yaml_value", "setting", "text"), [
    ("null", None, "off"),
    ("off", None, "off"),  # YAML 1.1 reads a bare off as false
    ("0", None, "off"),
    ("2MiB", 2 * MiB, str(2 * MiB)),
    ("08:00,2MiB 19:00,off", "08:00,2MiB 19:00,off", "08:00,2MiB 19:00,off"),
    ('"08:00,2MiB   19:00,off"', "08:00,2MiB 19:00,off", "08:00,2MiB 19:00,off"),
    ("[08:00,2MiB, 19:00,off]", None, None),  # a flow list splits on the commas: refused below
    ("\n    - 08:00,2MiB\n    - 19:00,off", "08:00,2MiB 19:00,off", "08:00,2MiB 19:00,off"),
])
def test_config_accepts_sizes_off_and_timetables(tmp_path: Path, yaml_value: str, setting: object,
                                                 text: str | None) -> None:
    if text is None:
        with pytest.raises(ConfigError, match=r"upload\.max_bandwidth: "):
            _load(tmp_path, yaml_value)
        return
    upload = _load(tmp_path, yaml_value)
    assert upload.max_bandwidth == setting  # type: ignore[attr-defined]
    assert str(upload.bandwidth) == text  # type: ignore[attr-defined]


@pytest.mark.parametrize(("value", "message"), [
    ("25:00,1MiB", "upload.max_bandwidth: 25:00 is not a time of day (HH:MM)"),
    ("12:00,1MiB 08:00,2MiB", "upload.max_bandwidth: 08:00 is listed after 12:00"),
    ("08:00,1MiB 08:00,off", "upload.max_bandwidth: 08:00 is listed twice"),
    ("08:00,huge 19:00,off", "upload.max_bandwidth: 08:00,huge: expected a size like 512MiB, or off"),
])
def test_config_errors_name_the_field(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={"WODROP__UPLOAD__MAX_BANDWIDTH": value})
    assert message in str(exc.value)


def test_env_override_with_a_timetable() -> None:
    cfg = load_config(None, environ={"WODROP__UPLOAD__MAX_BANDWIDTH": "08:00,1MiB 18:00,off"})
    assert cfg.upload.bandwidth.rate_at(at(9)) == MiB


# ---- properties ----------------------------------------------------------------------------------

RATES = st.one_of(st.none(), st.integers(min_value=KiB, max_value=10**10))


@st.composite
def daily(draw: st.DrawFn) -> list[tuple[int, int | None]]:
    """(minute of the day, rate) entries in order, 1 to 8 of them."""
    minutes = draw(st.lists(st.integers(0, 24 * 60 - 1), min_size=1, max_size=8, unique=True))
    return [(m, draw(RATES)) for m in sorted(minutes)]


def text_of(entries: list[tuple[int, int | None]], day: str = "") -> str:
    return " ".join(f"{day}{m // 60:02d}:{m % 60:02d},{'off' if r is None else r}" for m, r in entries)


def model_rate(entries: list[tuple[int, int | None]], dt: datetime) -> int | None:
    """The rate by the definition: the last entry at or before the time of day, else the day's last."""
    minute = dt.hour * 60 + dt.minute
    before = [r for m, r in entries if m <= minute]
    return before[-1] if before else entries[-1][1]


WALL = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))


@given(daily(), WALL)
def test_rate_at_follows_the_timetable_and_wraps_at_midnight(entries: list[tuple[int, int | None]],
                                                             dt: datetime) -> None:
    s = parse_bandwidth(text_of(entries))
    expected = model_rate(entries, dt)
    assert s.rate_at(dt) == (None if expected is None else float(expected))
    # piecewise constant: the whole minute has the rate of its start
    assert s.rate_at(dt.replace(second=0, microsecond=0)) == s.rate_at(dt)
    # before the day's first entry, the day's last one applies (it wrapped past midnight)
    first, last = entries[0], entries[-1]
    if first[0] > 0:
        midnight = dt.replace(hour=0, minute=0, second=0, microsecond=0)
        assert s.rate_at(midnight) == s.rate_at(midnight - timedelta(microseconds=1))
        assert s.rate_at(midnight) == (None if last[1] is None else float(last[1]))


@given(daily(), WALL)
def test_next_change_is_the_first_minute_with_another_rate(entries: list[tuple[int, int | None]],
                                                           dt: datetime) -> None:
    s = parse_bandwidth(text_of(entries))
    nxt = s.next_change_after(dt)
    if len({r for _, r in entries}) == 1:
        assert nxt is None  # one rate all day: never changes
        return
    assert nxt is not None and dt < nxt <= dt + timedelta(days=1)
    assert (nxt.second, nxt.microsecond) == (0, 0) and s.rate_at(nxt) != s.rate_at(dt)
    minute = dt.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute < nxt:  # constant until then
        assert s.rate_at(minute) == s.rate_at(dt), minute
        minute += timedelta(minutes=1)


@given(daily(), WALL)
def test_a_daily_timetable_is_a_weekly_one_with_every_day(entries: list[tuple[int, int | None]],
                                                          dt: datetime) -> None:
    plain = parse_bandwidth(text_of(entries))
    weekly = parse_bandwidth(" ".join(text_of(entries, f"{d}-") for d in DAYS))
    assert weekly.rate_at(dt) == plain.rate_at(dt)
    assert weekly.next_change_after(dt) == plain.next_change_after(dt)


@given(daily())
def test_text_round_trips(entries: list[tuple[int, int | None]]) -> None:
    s = parse_bandwidth(text_of(entries))
    assert parse_bandwidth(str(s)) == s
    assert [(e.minute, e.rate) for e in s.entries] == entries


ZONES = st.sampled_from([ZoneInfo(z) for z in ("Europe/Paris", "America/New_York", "Australia/Lord_Howe",
                                               "America/Santiago", "UTC")])


@settings(max_examples=300)
@given(daily(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31),
                             timezones=ZONES, allow_imaginary=False))
def test_aware_next_change_is_the_wall_clock_change_in_that_zone(entries: list[tuple[int, int | None]],
                                                                 dt: datetime) -> None:
    """In a zone with daylight saving time: the instant comes after ``dt``, and reads the wall-clock
    change time, or is the clock's jump over it when that time is skipped."""
    s = parse_bandwidth(text_of(entries))
    wall = s.next_change_after(dt.replace(tzinfo=None))
    nxt = s.next_change_after(dt)
    assert (nxt is None) == (wall is None)
    if nxt is None or wall is None:
        return
    assert nxt.astimezone(UTC) > dt.astimezone(UTC)
    tz = dt.tzinfo
    assert nxt.tzinfo is tz
    read = nxt.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if read != wall:  # skipped: the clock went from before it to after it at nxt
        before = (nxt.astimezone(UTC) - timedelta(seconds=1)).astimezone(tz).replace(tzinfo=None)
        assert before < wall < read


# ---- daylight saving time ------------------------------------------------------------------------


def test_clocks_go_forward_over_an_entry() -> None:
    """Paris, 31 March 2024: 02:00 CET becomes 03:00 CEST. An entry at 02:30 takes effect at the jump."""
    s = parse_bandwidth("01:00,1MiB 02:30,2MiB 05:00,off")
    nxt = s.next_change_after(datetime(2024, 3, 31, 1, 10, tzinfo=PARIS))
    assert nxt is not None and nxt.astimezone(UTC) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert s.rate_at(nxt) == 2 * MiB  # its wall clock reads 03:00


def test_clocks_go_back_and_the_repeated_hour_follows_the_wall_clock() -> None:
    """Paris, 27 October 2024: 03:00 CEST becomes 02:00 CET, so 02:00-03:00 happens twice."""
    s = parse_bandwidth("01:00,1MiB 02:30,2MiB 05:00,off")
    first = s.next_change_after(datetime(2024, 10, 27, 2, 10, tzinfo=PARIS))
    assert first is not None and first.astimezone(UTC) == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    # back at 02:10 on the second pass, the rate is 01:00's again until 02:30 comes round again
    second_pass = datetime(2024, 10, 27, 2, 10, tzinfo=PARIS, fold=1)
    assert s.rate_at(second_pass) == MiB
    again = s.next_change_after(second_pass)
    assert again is not None and again.astimezone(UTC) == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)


@pytest.fixture
def paris_local_time() -> Iterator[None]:
    """The process's local time zone set to Europe/Paris (what TZ= does for the daemon)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("paris_local_time")
def test_local_instant_uses_the_systems_rules() -> None:
    """The daemon's clock is ``datetime.now().astimezone()``: a fixed offset, so the next change's
    wall clock is resolved with the system's rules (local_instant)."""
    now = datetime(2024, 3, 31, 1, 10).astimezone()
    assert now.utcoffset() == timedelta(hours=1)
    s = parse_bandwidth("01:00,1MiB 02:30,2MiB 05:00,off")
    wall = s.next_change_after(now.replace(tzinfo=None))
    assert wall == datetime(2024, 3, 31, 2, 30)  # skipped tonight ...
    jump = local_instant(wall, after=now)
    assert jump == datetime(2024, 3, 31, 3, 0, tzinfo=PARIS)  # ... so it is when the clock jumps
    assert jump.utcoffset() == timedelta(hours=2)
    late = s.next_change_after(datetime(2024, 3, 31, 3, 0))
    assert late is not None and local_instant(late).utcoffset() == timedelta(hours=2)  # summer time
    # the autumn night: the first 02:30 after 02:10 CEST is the one in summer time
    autumn = datetime(2024, 10, 27, 2, 10).astimezone()
    assert local_instant(datetime(2024, 10, 27, 2, 30), after=autumn).utcoffset() == timedelta(hours=2)
    second = datetime(2024, 10, 27, 0, 40, tzinfo=UTC)  # 01:40 CET, the second pass
    assert local_instant(datetime(2024, 10, 27, 2, 30), after=second).utcoffset() == timedelta(hours=1)


def test_a_schedule_is_a_value() -> None:
    assert parse_bandwidth("08:00,1MiB") == BandwidthSchedule((Entry(None, 480, MiB),), text="08:00,1MiB")
    assert parse_bandwidth("08:00,1MiB").rate_at(at(3)) == MiB  # one entry: all day
