"""The status page at ``/``: one self-contained HTML document rendered from :func:`collect_status`.

No scripts, no external assets (sites run it on air-gapped networks; a browser may have no internet):
inline CSS and a meta refresh every 5 s. Every value is redacted then HTML-escaped, because folder
names and error messages are user input.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from wodrop import __version__
from wodrop.lifecycle import ACTIVE_BATCH_STATES, BatchState
from wodrop.redact import redact
from wodrop.status.chart import Hour, render_svg, render_table, summary
from wodrop.status.collect import platform_text
from wodrop.units import format_duration, format_size, noun, plural

REFRESH_SECONDS = 5

_CSS = """
:root{--ok:#1a7f37;--warn:#b35900;--error:#c62828;--ink:#1f2328;--mute:#656d76;--line:#d8dee4;
--bg:#f6f8fa;--card:#fff;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink)}
body{margin:0;background:var(--bg);font-size:14px}
header{display:flex;align-items:center;gap:14px;padding:16px 28px;color:#fff}
header.ok{background:var(--ok)}header.warn{background:var(--warn)}header.error{background:var(--error)}
header h1{font-size:18px;margin:0;font-weight:600;letter-spacing:.02em}
header .reason{font-size:17px;flex:1;font-weight:500}
header .meta{font-size:12px;opacity:.85;text-align:right}
.dot{width:14px;height:14px;border-radius:50%;background:#fff;box-shadow:0 0 0 4px rgba(255,255,255,.3)}
main{padding:20px 28px;max-width:1240px}
h2{font-size:15px;margin:22px 0 10px;color:var(--mute);text-transform:uppercase;letter-spacing:.06em}
.tiles{display:flex;gap:12px;flex-wrap:wrap}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;min-width:150px}
.tile .n{font-size:26px;font-weight:600}.tile .l{color:var(--mute);font-size:12px}
.tile.bad .n{color:var(--error)}
.batch{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;
margin-bottom:10px}
.batch .top{display:flex;justify-content:space-between;align-items:center;gap:10px;margin-bottom:8px}
.batch .name{font-weight:600;font-family:ui-monospace,monospace}
.bar{height:14px;background:#eaeef2;border-radius:7px;overflow:hidden}
.bar span{display:block;height:100%;background:linear-gradient(90deg,#0969da,#54aeff)}
.sub{color:var(--mute);font-size:13px;margin-top:6px}
.err{color:var(--error)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eaeef2}
.badge.done{background:#dafbe1;color:var(--ok)}.badge.failed{background:#ffebe9;color:var(--error)}
.badge.uploading{background:#ddf4ff;color:#0969da}
td.platform.done{color:var(--ok)}td.platform.failed,td.platform.lost,td.platform.timeout{color:var(--error)}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);
border-radius:8px}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--mute);font-weight:600}
td.mono{font-family:ui-monospace,monospace}
td.when{white-space:nowrap}
.pct{font-size:18px;font-weight:600;margin-left:auto;margin-right:10px}
.reasons{margin:0;padding-left:16px}
.empty{color:var(--mute);font-style:italic}
.counts{display:flex;gap:16px;align-items:flex-start}.counts table{width:auto;min-width:260px}
.notice{background:#fff8c5;color:#3b2300;border-bottom:1px solid #d4a72c;border-left:6px solid #d4a72c;
padding:12px 28px;font-size:14px;line-height:1.5}
.notice strong{display:block;font-size:16px;margin-bottom:2px}
.notice code{background:rgba(0,0,0,.06);padding:0 4px;border-radius:4px;
font-family:ui-monospace,monospace;font-size:13px}
.chart{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:0}
.chart svg{display:block;width:100%;height:auto}
.chart figcaption{color:var(--mute);font-size:13px;margin-top:6px}
.chart details{margin-top:8px}.chart summary{cursor:pointer;color:var(--mute);font-size:13px}
.chart details table{margin-top:8px}.chart td+td,.chart th+th{text-align:right}
footer{padding:14px 28px;color:var(--mute);font-size:12px}
footer a{color:inherit}
"""


def _e(value: object) -> str:
    """Redact, then escape: the one way any value gets into the page."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


def _ago(ts: str | None, now: datetime) -> str:
    if not ts:
        return ""
    seconds = (now - datetime.fromisoformat(ts)).total_seconds()
    return f"{format_duration(seconds)} ago"


def _short(path: str | None) -> str:
    """``/srv/share/failed/WO_1`` -> ``failed/WO_1``: the folder that matters; the title has it all."""
    p = PurePath(path or "")
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _progress(b: dict[str, Any]) -> str:
    pct = b["percent"] or 0.0
    total = b["bytes_total"]
    parts = [f"{pct:.1f}%"] if b["percent"] is not None else []
    parts.append(f"{format_size(b['bytes_sent'])} of {format_size(total)}" if total else "size not known yet")
    if b["rate_bytes_per_s"]:
        parts.append(f"{b['rate_bytes_per_s'] / 2**20:.1f} MiB/s")
    if b["eta_s"] is not None:
        parts.append(f"ETA {format_duration(b['eta_s'])}")
    return (
        f'<div class="bar" role="progressbar" aria-valuenow="{pct:.1f}" aria-valuemin="0" '
        f'aria-valuemax="100"><span style="width:{min(100.0, max(0.0, pct)):.1f}%"></span></div>'
        f'<div class="sub">{_e(" · ".join(parts))}</div>'
    )


def _active(batches: list[dict[str, Any]]) -> str:
    if not batches:
        return '<p class="empty">No batch is being packed or uploaded.</p>'
    out = []
    for b in batches:
        info = [plural(b["work_orders"], "work order")]
        if b["seal_reason"]:
            info.append(f"sealed by {b['seal_reason']}")
        if b["attempts"]:
            info.append(plural(b["attempts"], "failed attempt"))
        pct = f'<span class="pct">{b["percent"]:.0f}%</span>' if b["percent"] is not None else ""
        err = f'<div class="sub err">Last error: {_e(b["last_error"])}</div>' if b["last_error"] else ""
        out.append(
            f'<div class="batch"><div class="top"><span class="name">{_e(b["name"])}</span>{pct}'
            f'<span class="badge {_e(b["state"])}">{_e(b["state"])}</span></div>'
            f'{_progress(b)}<div class="sub">{_e(" · ".join(info))}</div>{err}</div>'
        )
    return "".join(out)


def _error_items(errors: list[dict[str, Any]]) -> str:
    """A report's errors as list items: code, file, message (the shape of error.json and platform.json)."""
    return "".join(
        f"<li><b>{_e(e['code'])}</b>{' (' + _e(e['file']) + ')' if e['file'] else ''}: "
        f"{_e(e['message'])}</li>"
        for e in errors
    )


def _failures(failures: list[dict[str, Any]], now: datetime) -> str:
    if not failures:
        return '<p class="empty">No failed work orders.</p>'
    rows = []
    for f in failures:
        reasons = _error_items(f["errors"]) or "<li>no reason recorded</li>"
        rows.append(
            f'<tr><td class="mono">{_e(f["work_order"])}</td><td>{_e(f["stage"])}</td>'
            f'<td><ul class="reasons">{reasons}</ul></td>'
            f'<td class="when" title="{_e(f["failed_at"])}">{_e(_ago(f["failed_at"], now))}</td>'
            f'<td class="mono" title="{_e(f["path"])}">{_e(_short(f["path"]))}</td></tr>'
        )
    return ("<table><tr><th>Work order</th><th>Stage</th><th>Reasons</th><th>Failed</th><th>Now in</th>"
            "</tr>" + "".join(rows) + "</table>")


def _waiting(inbox: dict[str, Any] | None, now: datetime) -> str:
    """The "Waiting in the inbox" section: each unclaimed folder, since when and why (oldest first)."""
    if inbox is None:
        return ""
    entries = inbox.get("waiting") or []
    total = inbox.get("waiting_total") or len(entries)
    head = "<h2>Waiting in the inbox</h2>"
    if inbox.get("waiting_as_of"):
        head += f'<p class="sub">as of {_e(inbox["waiting_as_of"])}</p>'

    if not entries:
        if inbox.get("pending"):
            return f'{head}<p class="empty">{_e(inbox["pending"])} waiting; no reason known yet.</p>'
        return f'{head}<p class="empty">Nothing is waiting in the inbox.</p>'
    rows = [
        f'<tr><td class="mono">{_e(w["name"])}</td>'
        f'<td class="when" title="{_e(w["since"])}">{_e(_ago(w["since"], now))}</td>'
        f'<td>{_e(w["reason"])}</td></tr>'
        for w in entries
    ]
    more = (f'<p class="sub">… and {_e(total - len(entries))} more (the oldest are shown)</p>'
            if total > len(entries) else "")
    return (f'{head}<table class="waiting"><tr><th>Folder</th><th>First seen</th><th>Why it is waiting</th>'
            "</tr>" + "".join(rows) + "</table>" + more)


def _finished(batches: list[dict[str, Any]], now: datetime) -> str:
    if not batches:
        return '<p class="empty">No finished batch yet.</p>'
    rows = [
        f'<tr><td class="mono">{_e(b["name"])}</td>'
        f'<td><span class="badge {_e(b["state"])}">{_e(b["state"])}</span></td>'
        f'<td>{_e(format_size(b["bytes_total"]) if b["bytes_total"] else "")}</td>'
        f'<td>{_e(b["work_orders"])}</td><td class="when" title="{_e(b["finished_at"])}">'
        f'{_e(_ago(b["finished_at"], now))}</td>'
        f'<td class="platform {_e(b["platform_outcome"] or "")}" title="{_e(b["platform_status_at"])}">'
        f'{_e(platform_text(b))}</td><td class="err">{_e(b["last_error"])}</td></tr>'
        for b in batches
    ]
    return ("<table><tr><th>Batch</th><th>State</th><th>Size</th><th>Work orders</th><th>Finished</th>"
            "<th>Platform</th><th>Error</th></tr>" + "".join(rows) + "</table>")


def _platform_errors(reported: list[dict[str, Any]], now: datetime) -> str:
    """Work orders the platform reported errors for after their upload; nothing when there are none."""
    if not reported:
        return ""
    rows = []
    for r in reported:
        reasons = _error_items(r["errors"])
        rows.append(
            f'<tr><td class="mono">{_e(r["work_order"])}</td><td class="mono">{_e(r["batch"])}</td>'
            f'<td><ul class="reasons">{reasons}</ul></td>'
            f'<td class="when" title="{_e(r["reported_at"])}">{_e(_ago(r["reported_at"], now))}</td>'
            f'<td class="mono" title="{_e(r["report"])}">{_e(_short(r["report"]))}</td></tr>'
        )
    return ('<h2>Platform errors</h2><table id="platform-errors"><tr><th>Work order</th><th>Batch</th>'
            "<th>What the platform reported</th><th>Reported</th><th>Report</th></tr>" + "".join(rows)
            + "</table>")


def _counts(counts: dict[str, dict[str, int]]) -> str:
    tables = []
    for title, key in (("Batches", "batches"), ("Work orders", "work_orders")):
        body = "".join(f"<tr><td>{_e(s)}</td><td>{_e(n)}</td></tr>" for s, n in sorted(counts[key].items()))
        tables.append(f"<table><tr><th>{title} by state</th><th>count</th></tr>"
                      f"{body or '<tr><td class=empty>none yet</td><td></td></tr>'}</table>")
    return f'<div class="counts">{"".join(tables)}</div>'


def _destination(dest: dict[str, Any] | None) -> str:
    """The banner under the header when batches go to the embedded local receiver, not the platform."""
    if not dest or dest["kind"] != "local_receiver":
        return ""
    where = (f"<code>{_e(dest['config_file'])}</code>" if dest["config_file"]
             else "a config file (<code>wodrop run -c FILE</code>)")
    return (
        '<div class="notice" id="destination" role="note"><strong>Test mode: nothing is sent to the platform.'
        "</strong><code>api.url</code> is not set, so batches go to the local receiver built into wodrop, "
        f"which keeps the archives in <code>{_e(dest['store'])}</code>. To upload to the platform, set "
        f"<code>api.url: https://api.&lt;site-id&gt;.customers.deepomatic.com</code> in {where} and give an "
        "API key (<code>CUSTOMER_API_KEY</code> or <code>api.api_key_file</code>), then restart wodrop.</div>"
    )


def _activity(activity: list[dict[str, Any]]) -> str:
    """The "last 24 hours" chart, with its numbers as text (a caption and a table) too."""
    if not activity:
        return ""
    hours = [Hour(start=datetime.fromisoformat(a["start"]).astimezone(), uploaded_bytes=a["uploaded_bytes"],
                  batches=a["batches_uploaded"], done=a["work_orders_done"], failed=a["work_orders_failed"])
             for a in activity]
    return (f'<h2>Last {len(hours)} hours</h2><figure class="chart" id="activity">{render_svg(hours)}'
            f"<figcaption>{_e(summary(hours))}</figcaption><details><summary>The numbers, hour by hour"
            f"</summary>{render_table(hours)}</details></figure>")


def _rate(rate: float | None) -> str:
    return "no limit" if rate is None else f"{format_size(rate)}/s"


def _bandwidth_tile(d: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """(value, label, title) of the upload-limit tile: the limit now and the next change, in the
    daemon's local time (the timetable's); None when uploads are never limited."""
    bw = d.get("bandwidth") if d else None
    if not bw or (bw["limit_bytes_per_s"] is None and not bw["schedule"]):
        return None
    label = "upload limit"
    if bw["next_change_at"]:
        at = datetime.fromisoformat(bw["next_change_at"]).astimezone()
        today = at.date() == datetime.now().astimezone().date()
        when = at.strftime("%H:%M" if today else "%a %H:%M")
        label += f" · {_rate(bw['next_limit_bytes_per_s'])} from {when}"
    title = f"upload.max_bandwidth: {bw['schedule']} (local time)" if bw["schedule"] else ""
    return _rate(bw["limit_bytes_per_s"]), label, title


def _tiles(status: dict[str, Any]) -> str:
    inbox = status["inbox"]
    wo = status["counts"]["work_orders"]
    uploading = sum(1 for b in status["batches"] if b["state"] == BatchState.UPLOADING)
    tiles = []
    if inbox is not None:
        age = format_duration(inbox["oldest_pending_age_s"]) if inbox["pending"] else "—"
        tiles += [(inbox["pending"], "waiting in the inbox", False), (age, "oldest waiting", False)]
    delivered = wo.get("done", 0)
    tiles += [
        (uploading, f"{noun(uploading, 'batch')} uploading", False),
        (delivered, f"{noun(delivered, 'work order')} delivered", False),
        (status["failed_today"], "failed today", status["failed_today"] > 0),
    ]
    html_tiles = [
        f'<div class="tile{" bad" if bad else ""}"><div class="n">{_e(n)}</div><div class="l">{_e(label)}'
        "</div></div>"
        for n, label, bad in tiles
    ]
    bandwidth = _bandwidth_tile(status["daemon"])
    if bandwidth is not None:
        value, label, title = bandwidth
        html_tiles.append(f'<div class="tile" id="bandwidth" title="{_e(title)}"><div class="n">{_e(value)}'
                          f'</div><div class="l">{_e(label)}</div></div>')
    return '<div class="tiles">' + "".join(html_tiles) + "</div>"


def render_page(status: dict[str, Any]) -> str:
    """The whole page for one :func:`collect_status` snapshot."""
    now = datetime.fromisoformat(status["generated_at"]) if status["generated_at"] else datetime.now(UTC)
    health = status["health"]
    active = [b for b in status["batches"] if b["state"] in ACTIVE_BATCH_STATES]
    finished = [b for b in status["batches"] if b not in active]
    d = status["daemon"]
    footer = [f"wodrop {__version__}"]
    dest = status["destination"]
    if dest and dest["kind"] == "platform":
        footer.append(f"uploading to {dest['api_url']}")
    if d:
        footer += [f"running since {d['started_at']}", f"watcher: {d['watcher']}"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>wodrop · {_e(health["reason"])}</title><style>{_CSS}</style></head>
<body>
<header class="{_e(health["level"])}"><span class="dot"></span><h1>wodrop</h1>
<div class="reason" id="health">{_e(health["reason"])}</div>
<div class="meta">updated {_e(now.strftime("%H:%M:%S UTC"))}<br>
refreshes every {REFRESH_SECONDS} s</div></header>
{_destination(dest)}
<main>
{_tiles(status)}
<h2>Current batches</h2>{_active(active)}
{_activity(status["activity"])}
{_waiting(status["inbox"], now)}
<h2>Recent failures</h2>{_failures(status["failures"], now)}
{_platform_errors(status["platform_errors"], now)}
<h2>Recent batches</h2>{_finished(finished, now)}
<h2>Counters</h2>{_counts(status["counts"])}
</main>
<footer>{_e(" · ".join(footer))} · <a href="api/status">JSON</a> · <a href="metrics">metrics</a> ·
<a href="readyz">readiness</a></footer>
</body></html>
"""
