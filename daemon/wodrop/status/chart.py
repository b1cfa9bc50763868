"""The status page's "last 24 hours" chart: data uploaded and work orders finished per hour.

Pure functions from :class:`Hour` rows to markup: an inline SVG (no script, no external asset, so it
works on an air-gapped site and under the page's strict Content-Security-Policy) and the same numbers
as a table, for screen readers and for copying. Bars are drawn in the order given and labelled with
each hour's own local start, so a clock change shows as it happened (02:00 twice, or no 02:00).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from wodrop.units import format_size, plural

# Geometry (SVG user units; the SVG scales to the page's width).
WIDTH, LEFT, RIGHT = 1000, 70, 12
PANEL_HEIGHT = 78
UPLOAD_TOP, ORDERS_TOP = 26, 150  # top of each panel's plot area
LABELS_Y = ORDERS_TOP + PANEL_HEIGHT + 16
HEIGHT = LABELS_Y + 22
MIN_BAR = 2.0  # a non-zero hour stays visible next to a huge one
BLUE, GREEN, RED = "#0969da", "#1a7f37", "#c62828"
GRID, MUTE, INK, NOW = "#d8dee4", "#656d76", "#1f2328", "#eef4fb"

_BINARY_UNITS = (("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40))
_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


@dataclass(frozen=True)
class Hour:
    """One hour: its start (timezone-aware, in the zone the labels are shown in) and what happened."""

    start: datetime
    uploaded_bytes: int = 0
    batches: int = 0
    done: int = 0
    failed: int = 0


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _bytes_scale(peak: int) -> tuple[int, str, str]:
    """(top, top label, middle label) of the upload axis: a round 1/2/5 step of a binary unit (no
    labels on an empty panel)."""
    if peak <= 0:
        return 1, "", ""
    for name, unit in _BINARY_UNITS:
        for step in _STEPS:
            if step * unit >= peak or (name == "TiB" and step == _STEPS[-1]):
                top = max(step * unit, peak)
                return top, f"{top / unit:g} {name}", f"{top / unit / 2:g} {name}"
    raise AssertionError("unreachable")


def _count_scale(peak: int) -> tuple[int, str, str]:
    """(top, top label, middle label) of the work-order axis: 2, 5, 10, 20, 50, ... (a middle label
    only when whole; none on an empty panel)."""
    if peak <= 0:
        return 1, "", ""
    top = 2
    while top < peak:
        top = top * 5 // 2 if str(top)[0] == "2" else top * 2
    return top, str(top), str(top // 2) if top % 2 == 0 else ""


def _clock(t: datetime) -> str:
    return t.strftime("%H:%M")


def _end(h: Hour) -> datetime:
    """The hour's end in its own zone (by the clock's real time, so 02:00 CEST ends at 02:00 CET)."""
    return datetime.fromtimestamp(h.start.timestamp() + 3600, h.start.tzinfo)


def _offset(t: datetime) -> str:
    """``UTC+02:00``"""
    off = t.strftime("%z") or "+0000"
    return f"UTC{off[:3]}:{off[3:]}"


def _span(hours: Sequence[Hour]) -> str:
    return "the last hour" if len(hours) == 1 else f"the last {len(hours)} hours"


def summary(hours: Sequence[Hour]) -> str:
    """One sentence with the totals and the busiest hour (the SVG's description and the caption)."""
    sent = sum(h.uploaded_bytes for h in hours)
    batches = sum(h.batches for h in hours)
    done, failed = sum(h.done for h in hours), sum(h.failed for h in hours)
    span = _span(hours)
    if not (sent or batches or done or failed):
        return f"Nothing was uploaded and no work order finished in {span}."
    parts = [f"In {span}: {format_size(sent)} uploaded in {plural(batches, 'batch')}"]
    if sent:
        busiest = max(hours, key=lambda h: h.uploaded_bytes)
        parts[0] += f" (busiest hour {_clock(busiest.start)}: {format_size(busiest.uploaded_bytes)})"
    parts.append(f"{plural(done, 'work order')} delivered, {failed} failed")
    return "; ".join(parts) + "."


def _hour_label(h: Hour, mixed_offsets: bool) -> str:
    text = f"{_clock(h.start)}-{_clock(_end(h))}"
    return f"{text} ({_offset(h.start)})" if mixed_offsets else text


def _upload_tip(h: Hour, label: str) -> str:
    return (f"{label}: {format_size(h.uploaded_bytes)} in {plural(h.batches, 'batch')}"
            f" (about {format_size(h.uploaded_bytes / 3600)}/s)")


def _orders_tip(h: Hour, label: str) -> str:
    return f"{label}: {h.done} delivered, {h.failed} failed"


def _rect(x: float, bottom: float, height: float, width: float, colour: str, cls: str) -> str:
    height = max(height, MIN_BAR)
    return (f'<rect class="{cls}" x="{x:.1f}" y="{bottom - height:.1f}" width="{width:.1f}" '
            f'height="{height:.1f}" fill="{colour}" rx="1.5"/>')


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = MUTE, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}"{extra}>{text}</text>'


def _panel(top_y: float, title: str, total: str, scale: tuple[int, str, str], empty: str | None) -> str:
    """A panel's frame: title, total on the right, gridlines at 0, half and top labelled on the left,
    and ``empty`` written across it when there is nothing to draw."""
    _, top_label, mid_label = scale
    out = [_text(LEFT, top_y - 10, _e(title), fill=INK, extra=' font-weight="600"'),
           _text(WIDTH - RIGHT, top_y - 10, total, anchor="end")]
    for frac, label in ((0.0, "0"), (0.5, mid_label), (1.0, top_label)):
        y = top_y + PANEL_HEIGHT * (1 - frac)
        dash = "" if frac == 0 else ' stroke-dasharray="3 3"'
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{GRID}"{dash}/>')
        if label:
            out.append(_text(LEFT - 8, y + 4, _e(label), anchor="end"))
    if empty:
        out.append(_text((LEFT + WIDTH - RIGHT) / 2, top_y + PANEL_HEIGHT / 2 + 4, _e(empty),
                         anchor="middle", extra=' font-style="italic"'))
    return "".join(out)


def render_svg(hours: Sequence[Hour], *, title_id: str = "activity-title",
               desc_id: str = "activity-desc") -> str:
    """The chart as one ``<svg>`` element: uploads per hour on top, work orders per hour (delivered and
    failed, stacked) below, hours along the bottom, the last one (this hour, so far) shaded. Each bar
    has its numbers as a tooltip (``<title>``); the whole has a ``<title>`` and a ``<desc>``."""
    n = max(len(hours), 1)
    slot = (WIDTH - LEFT - RIGHT) / n
    bar_w = max(1.0, slot * 0.72)
    mixed = len({h.start.utcoffset() for h in hours}) > 1
    sent, batches = sum(h.uploaded_bytes for h in hours), sum(h.batches for h in hours)
    done, failed = sum(h.done for h in hours), sum(h.failed for h in hours)
    up_scale = _bytes_scale(max((h.uploaded_bytes for h in hours), default=0))
    wo_scale = _count_scale(max((h.done + h.failed for h in hours), default=0))
    up_bottom, wo_bottom = UPLOAD_TOP + PANEL_HEIGHT, ORDERS_TOP + PANEL_HEIGHT

    body = [f'<title id="{title_id}">Uploads and work orders per hour, {_span(hours)}</title>',
            f'<desc id="{desc_id}">{_e(summary(hours))}</desc>']
    if hours:
        body.append(f'<rect x="{LEFT + slot * (n - 1):.1f}" y="{UPLOAD_TOP - 4}" width="{slot:.1f}" '
                    f'height="{wo_bottom - UPLOAD_TOP + 8}" fill="{NOW}"><title>this hour, so far</title>'
                    "</rect>")
    body.append(_panel(UPLOAD_TOP, "Uploaded per hour",
                       _e(f"{format_size(sent)} in {plural(batches, 'batch')}"),
                       up_scale, None if sent else "nothing uploaded"))
    body.append(_panel(ORDERS_TOP, "Work orders per hour",
                       f'<tspan fill="{GREEN}">\u25a0</tspan> {done} delivered\u2003'
                       f'<tspan fill="{RED}">\u25a0</tspan> {failed} failed',
                       wo_scale, None if done or failed else "no work order finished"))
    for i, h in enumerate(hours):
        x = LEFT + slot * i + (slot - bar_w) / 2
        label = _hour_label(h, mixed)
        if h.uploaded_bytes:
            bar = _rect(x, up_bottom, PANEL_HEIGHT * h.uploaded_bytes / up_scale[0], bar_w, BLUE, "up")
            body.append(f"<g><title>{_e(_upload_tip(h, label))}</title>{bar}</g>")
        if h.done or h.failed:
            done_h = max(PANEL_HEIGHT * h.done / wo_scale[0], MIN_BAR) if h.done else 0.0
            bars = _rect(x, wo_bottom, done_h, bar_w, GREEN, "done") if h.done else ""
            if h.failed:
                failed_h = PANEL_HEIGHT * h.failed / wo_scale[0]
                bars += _rect(x, wo_bottom - done_h, failed_h, bar_w, RED, "failed")
            body.append(f"<g><title>{_e(_orders_tip(h, label))}</title>{bars}</g>")
        if (n - 1 - i) % 3 == 0:  # every third hour, counted back from this one
            body.append(_text(LEFT + slot * (i + 0.5), LABELS_Y, _e(_clock(h.start)), anchor="middle"))
    zone = _offset(hours[-1].start) if hours else "UTC"
    axis = f"hour starting, local time ({zone}{', the clock changed' if mixed else ''})"
    body.append(_text(WIDTH - RIGHT, HEIGHT - 2, _e(axis), anchor="end"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="activity" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img" aria-labelledby="{title_id} {desc_id}" font-size="12">' + "".join(body) + "</svg>")


def render_table(hours: Sequence[Hour]) -> str:
    """The chart's numbers as a table, newest hour first."""
    mixed = len({h.start.utcoffset() for h in hours}) > 1
    rows = "".join(
        f"<tr><td>{_e(_hour_label(h, mixed))}{' (so far)' if i == 0 else ''}</td>"
        f"<td>{_e(format_size(h.uploaded_bytes) if h.uploaded_bytes else '0')}</td><td>{h.batches}</td>"
        f"<td>{h.done}</td><td>{h.failed}</td></tr>"
        for i, h in enumerate(reversed(hours))
    )
    return ("<table><tr><th>Hour (local time)</th><th>Uploaded</th><th>Batches</th>"
            "<th>Work orders delivered</th><th>Work orders failed</th></tr>" + rows + "</table>")
