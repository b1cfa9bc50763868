"""``upload.max_bandwidth`` as a timetable: parse it, and tell the rate at a given local time.

Accepted values (sizes in wodrop's units, :func:`wodrop.units.parse_size`, as bytes per second):

- a size (``2MiB``), ``off`` or ``0`` (no limit), or null: one rate all the time;
- a daily timetable, like rclone's ``--bwlimit``: ``"08:00,512KiB 12:00,10MiB 13:00,512KiB 18:00,off"``.
  Entries ``HH:MM,RATE`` separated by spaces, times in order through the day. Each rate holds from
  its time until the next entry's; the last entry of the day also holds after midnight, until the
  first one (``"08:00,2MiB 19:00,off"``: 2 MiB/s from 08:00 to 19:00, no limit overnight);
- a weekly timetable: every entry with a day, ``"Mon-08:00,2MiB Fri-19:00,off"`` (``Mon`` … ``Sun``,
  in order from Monday to Sunday); the last entry of the week holds until the first one. Days and
  plain times cannot be mixed in one timetable (rclone's "a plain time means every day" is refused
  rather than guessed).

Differences from rclone: a bare number is bytes, not KiB, and ``k``/``M`` are 1000-based (``KiB``/
``MiB`` are 1024-based), as everywhere in wodrop's config; a rate is at least 1 KiB/s; there is one
rate (uploads only), not ``UP:DOWN``.

Times are the wall clock of the local time zone (``datetime.now().astimezone()``). Daylight saving
time: when clocks go forward, an entry inside the skipped hour (``02:30``) takes effect when the
clock jumps (at 03:00); when clocks go back, the repeated hour follows the timetable again, as the
wall clock reads. :func:`BandwidthSchedule.next_change_after` gives the real instant of the next
change in either case; the daemon also re-checks the clock at least every minute
(:class:`wodrop.upload.bandwidth.Throttle`), so a clock that is set or a machine that sleeps is
caught up within a minute.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from wodrop.units import parse_size

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = {**{d.lower(): i for i, d in enumerate(DAYS)},
              **{n: i for i, n in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday",
                                            "saturday", "sunday"))}}
DAY_MINUTES = 24 * 60
WEEK_MINUTES = 7 * DAY_MINUTES
#: below this a 64 KiB paced slice would wait over a minute; a bare ``512`` is more likely rclone's KiB
MIN_RATE = 1024
EXAMPLE = '"08:00,2MiB 19:00,off"'
_WHEN = re.compile(r"^(?:([A-Za-z]+)-)?(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Entry:
    """From ``minute`` of the day (on ``day``, 0 = Monday; None: every day) the rate is ``rate``."""

    day: int | None
    minute: int
    #: bytes per second; None: no limit
    rate: int | None

    @property
    def when(self) -> str:
        hh, mm = divmod(self.minute, 60)
        return f"{DAYS[self.day] + '-' if self.day is not None else ''}{hh:02d}:{mm:02d}"


@dataclass(frozen=True)
class BandwidthSchedule:
    """A constant rate (``entries`` empty) or a timetable; ``text`` is how the config wrote it."""

    entries: tuple[Entry, ...] = ()
    #: the rate when there is no timetable (bytes per second; None: no limit)
    constant: int | None = None
    text: str = "off"
    #: (minute of the week, rate) at which each rate starts, in order: the timetable spread over a week
    _week: tuple[tuple[int, int | None], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        week = sorted(
            ((e.day if e.day is not None else d) * DAY_MINUTES + e.minute, e.rate)
            for e in self.entries for d in ((e.day,) if e.day is not None else range(7))
        )
        object.__setattr__(self, "_week", tuple(week))

    def __str__(self) -> str:
        return self.text

    @property
    def is_timetable(self) -> bool:
        return bool(self.entries)

    @property
    def limited(self) -> bool:
        """Whether any rate is a limit (False: ``off`` all the time)."""
        return self.constant is not None or any(e.rate is not None for e in self.entries)

    def _index(self, dt: datetime) -> int:
        """Which ``_week`` point is in force at ``dt``'s wall clock (-1 wraps to the last one)."""
        minute = dt.weekday() * DAY_MINUTES + dt.hour * 60 + dt.minute
        return bisect.bisect_right(self._week, minute, key=lambda p: p[0]) - 1

    def rate_at(self, dt: datetime) -> float | None:
        """Bytes per second at ``dt``'s wall clock (naive or aware), or None for no limit."""
        if not self._week:
            return None if self.constant is None else float(self.constant)
        rate = self._week[self._index(dt)][1]
        return None if rate is None else float(rate)

    def next_change_after(self, dt: datetime) -> datetime | None:
        """The first time after ``dt`` at which :meth:`rate_at` gives another rate; None if it never does.

        Naive in, naive out (wall-clock arithmetic). Aware in, aware out in ``dt``'s tzinfo, resolved
        by its rules: with a ``zoneinfo`` zone, a time skipped when clocks go forward becomes the
        instant of the jump and a repeated time the first occurrence after ``dt``. (A fixed offset,
        as ``datetime.now().astimezone()`` carries, knows no rules: resolve the wall clock with
        :func:`local_instant` instead.)"""
        if not self._week:
            return None
        now = self._index(dt) % len(self._week)
        current = self._week[now][1]
        n = len(self._week)
        minute = dt.weekday() * DAY_MINUTES + dt.hour * 60 + dt.minute
        for step in range(1, n + 1):
            at, rate = self._week[(now + step) % n]
            if rate != current:
                ahead = (at - minute) % WEEK_MINUTES or WEEK_MINUTES
                wall = dt.replace(tzinfo=None, second=0, microsecond=0, fold=0) + timedelta(minutes=ahead)
                if dt.tzinfo is None:
                    return wall
                return datetime.fromtimestamp(_first_instant(wall, dt.tzinfo, dt.timestamp()), dt.tzinfo)
        return None


def local_instant(wall: datetime, after: datetime | None = None) -> datetime:
    """The first instant (after ``after``, when given) at which the local clock reads ``wall``
    (naive) or later, as an aware datetime with the local offset of that instant: the system's time
    zone rules (``TZ``, /etc/localtime), as ``datetime.now().astimezone()`` uses them."""
    ts = _first_instant(wall, None, after.timestamp() if after is not None else None)
    return datetime.fromtimestamp(ts, UTC).astimezone()


def _wall_at(ts: float, tz: tzinfo | None) -> datetime:
    if tz is None:
        return datetime.fromtimestamp(ts)
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None)


def _first_instant(wall: datetime, tz: tzinfo | None, after: float | None) -> float:
    """Unix time at which the clock of ``tz`` (None: the system's local time) reads ``wall``: the
    first occurrence after ``after`` of a repeated time; the jump over a skipped one."""
    cands = sorted({wall.replace(tzinfo=tz, fold=f).timestamp() for f in (0, 1)})
    real = [t for t in cands if _wall_at(t, tz) == wall]
    if real:
        later = [t for t in real if after is None or t > after]
        return later[0] if later else real[-1]
    # Clocks go forward over ``wall``: find the jump (the first second whose wall clock is past it).
    lo, hi = int(cands[0]), int(cands[-1])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall_at(mid, tz) >= wall:
            hi = mid
        else:
            lo = mid
    return float(hi)


def _rate(text: str, token: str) -> int | None:
    if text.lower() == "off":
        return None
    try:
        rate = parse_size(text)
    except ValueError as e:
        raise ValueError(f"{token}: {e}, or off") from None
    if rate == 0:
        return None
    if rate < MIN_RATE:
        raise ValueError(f"{token}: a rate is at least 1KiB (bytes per second: a bare number is bytes, "
                         "not KiB as in rclone), or off")
    return rate


def _entry(token: str) -> Entry:
    when, sep, rate = token.partition(",")
    if not sep or not when or not rate or "," in rate:
        raise ValueError(f"{token}: expected entries like 08:00,2MiB separated by spaces, like {EXAMPLE}")
    m = _WHEN.match(when)
    if m is None or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        raise ValueError(f"{when} is not a time of day (HH:MM)")
    day = None
    if m.group(1) is not None:
        day = _DAY_NAMES.get(m.group(1).lower())
        if day is None:
            raise ValueError(f"{when}: expected a day Mon, Tue, Wed, Thu, Fri, Sat or Sun before the time")
    return Entry(day, int(m.group(2)) * 60 + int(m.group(3)), _rate(rate, token))


def _timetable(text: str) -> BandwidthSchedule:
    text = " ".join(re.sub(r"\s*,\s*", ",", text).split())
    entries = [_entry(t) for t in text.split(" ")]
    days = [e for e in entries if e.day is not None]
    if days and len(days) != len(entries):
        plain = next(e for e in entries if e.day is None)
        raise ValueError(f"{days[0].when} has a day and {plain.when} has none: give every entry a day, "
                         "or none")
    for prev, e in itertools.pairwise(entries):
        a, b = ((x.day or 0) * DAY_MINUTES + x.minute for x in (prev, e))
        if a == b:
            raise ValueError(f"{e.when} is listed twice")
        if b < a:
            through = "the week, from Mon to Sun" if days else "the day"
            raise ValueError(f"{e.when} is listed after {prev.when}: list the times in order through "
                             f"{through}")
    return BandwidthSchedule(entries=tuple(entries), text=text)


def parse_bandwidth(value: object) -> BandwidthSchedule:
    """A :class:`BandwidthSchedule` from a config value: a size in bytes per second (int or ``2MiB``),
    ``off``/``0``/null/false (no limit), a timetable string, or a list of timetable entries.

    Raises ValueError with what was expected (the config prefixes the field's name)."""
    if value is None or value is False:  # YAML reads a bare ``off`` as false
        return BandwidthSchedule()
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = " ".join(value)
    if isinstance(value, str):
        if "," in value or len(value.split()) > 1 or _WHEN.match(value.strip()):
            return _timetable(value)  # (or what a timetable's entry looks like)
        if value.strip().lower() == "off":
            return BandwidthSchedule()
        if ":" in value:
            raise ValueError("expected one rate for uploads, not rclone's UP:DOWN pair, or a timetable "
                             f"like {EXAMPLE}")
    try:
        rate = parse_size(value)
    except ValueError as e:
        if "finite" in str(e) or "negative" in str(e):
            raise
        raise ValueError("expected a size like 2MiB (bytes per second), off, or a timetable like "
                         f"{EXAMPLE}") from None
    if rate == 0:
        return BandwidthSchedule()
    if rate < MIN_RATE:
        raise ValueError("expected at least 1KiB (bytes per second: a bare number is bytes, not KiB as in "
                         "rclone), or off")
    return BandwidthSchedule(constant=rate, text=str(rate))


def bandwidth_setting(value: object) -> int | str | None:
    """The config's form of ``upload.max_bandwidth``: bytes per second (int) for one rate, None for no
    limit, the timetable's text for a timetable (read it with :func:`parse_bandwidth`)."""
    schedule = parse_bandwidth(value)
    return schedule.text if schedule.is_timetable else schedule.constant
