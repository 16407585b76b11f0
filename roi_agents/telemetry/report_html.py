"""``roi-agents report --html``: the report as one self-contained page (no server, no scripts).

Runs with their spend drawn against their budget, totals per scope (tenant, user, thread),
forecast against actual cost and the calibration of ``p_success`` as inline SVG, and the
options table. Every text from the trace is escaped: a trace is input, not markup.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from roi_agents import __version__
from roi_agents._text import printable
from roi_agents.telemetry.report import Report, RunReport, run_name

__all__ = ["write_html"]

_MAX_POINTS = 4_000
"""Decisions drawn in the scatter at most (evenly picked): the page stays small."""
_MAX_ROWS = 200
"""Rows of the runs and scopes tables at most; the JSON report holds them all."""

_STYLE = """
:root { --ink:#1d2430; --muted:#667085; --line:#e4e7ec; --ok:#12a150; --warn:#e9a23b;
  --over:#d92d20; --accent:#2e6be6; --bg:#f7f8fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 24px 48px; }
h1 { font-size:24px; margin:0 0 4px; } h2 { font-size:17px; margin:0 0 12px; }
.sub, .note, footer { color:var(--muted); }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px;
  margin:20px 0; }
.card, section { background:#fff; border:1px solid var(--line); border-radius:10px; }
.card { padding:12px 14px; } .card b { display:block; font-size:22px; }
.card span { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
section { padding:18px 20px; margin:16px 0; overflow-x:auto; }
table { border-collapse:collapse; width:100%; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right;
  white-space:nowrap; }
th { font-size:12px; color:var(--muted); font-weight:600; }
th:first-child, td:first-child, td.text { text-align:left; }
td.text { max-width:280px; overflow:hidden; text-overflow:ellipsis; }
tr:last-child td { border-bottom:0; }
.bar { position:relative; display:inline-block; vertical-align:middle; width:160px; height:10px;
  background:#eef0f3; border-radius:5px; }
.pct { display:inline-block; width:44px; } small { font-size:11px; }
.bar i { position:absolute; left:0; top:0; bottom:0; border-radius:5px; }
.share { background:var(--accent); } .ok { background:var(--ok); }
.warn { background:var(--warn); } .over { background:var(--over); }
.tag { font-size:11px; padding:1px 6px; border-radius:8px; color:#fff; }
.charts { display:grid; grid-template-columns:repeat(auto-fit,minmax(460px,1fr)); gap:16px; }
svg text { font-size:11px; fill:var(--muted); }
"""


def _fmt(value: float | None, spec: str = "{:,.4g}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return spec.format(value)


def _text(value: object) -> str:
    """Text from the trace, shown: printable, bounded, escaped."""
    return escape(printable(value))


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """A table whose first ``left`` columns are text; cells are markup escaped by the caller."""
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    cells = ('<td class="text">{}</td>', "<td>{}</td>")
    body = "".join(
        "<tr>" + "".join(cells[k >= left].format(c) for k, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _more(shown: int, total: int, what: str) -> str:
    if shown >= total:
        return ""
    return f'<p class="note">{total - shown:,} more {what} not shown: the JSON report has all.</p>'


def _compact(x: float) -> str:
    """An axis figure in few characters: 1.5k, 2M, 0.25."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _bar(fraction: float | None, level: str | None = None) -> str:
    """A bar filled to ``fraction``, coloured by how close to 1 it is unless ``level`` says."""
    if fraction is None:
        return ""
    if level is None:
        level = "ok" if fraction < 0.9 else "warn" if fraction <= 1.0 + 1e-9 else "over"
    width = max(0.0, min(fraction, 1.0)) * 100
    return (
        f'<div class="bar" title="{fraction:.1%}">'
        f'<i class="{level}" style="width:{width:.1f}%"></i></div>'
    )


def _utilisation(run: RunReport) -> float | None:
    if run.utilization is not None:
        return run.utilization
    limit = run.budget.get(run.resource)
    return run.spent.get(run.resource, 0.0) / limit if limit else None


def _ran_out(run: RunReport) -> bool:
    return bool(run.skips or run.refused) or (_utilisation(run) or 0.0) > 1.0 + 1e-9


def _runs(report: Report) -> str:
    # Runs that ran out first, then those that spent most of their budget.
    shown = sorted(report.runs, key=lambda r: (not _ran_out(r), -(_utilisation(r) or 0.0)))
    shown = shown[:_MAX_ROWS]
    rows = []
    for run in shown:
        used = _utilisation(run)
        status = ""
        if used is not None and used > 1.0 + 1e-9:
            status = '<span class="tag over">over</span>'
        elif run.skips or run.refused:
            status = '<span class="tag warn">ran out</span>'
        name = _text(run_name(run))
        if run.scope and run.scope != run.run_id:
            name += f'<br><small class="note">{_text(run.scope)}</small>'
        unit = "" if run.resource == "tokens" else f" {escape(run.resource)}"
        rows.append(
            [
                name,
                _fmt(run.budget.get(run.resource)) + unit,
                _fmt(run.spent.get(run.resource)) + unit,
                _fmt(run.this_run.get(run.resource)) + unit,
                f'{_bar(used)}<span class="pct">{_fmt(used, "{:.0%}")}</span>',
                str(run.decisions),
                str(run.skips),
                str(run.refused),
                _fmt(run.forecast_error, "{:+.2f}"),
                status,
            ]
        )
    head = ["run", "budget", "spent", "this run", "of budget", "decisions", "skipped", "refused"]
    return _table([*head, "forecast error", ""], rows) + _more(len(shown), len(report.runs), "runs")


def _scopes(report: Report) -> str:
    top = max((s.tokens for s in report.scopes), default=0) or 1
    shown = report.scopes
    if len(shown) > _MAX_ROWS:  # tenants and users, not every thread
        shown = [s for s in shown if s.scope.count("/") < 2]
    shown = shown[:_MAX_ROWS]
    rows = []
    for s in shown:
        depth = s.scope.count("/")
        rows.append(
            [
                f'<span style="padding-left:{18 * min(depth, 8)}px" title="{_text(s.scope)}">'
                f"{_text(s.scope.rsplit('/', 1)[-1] if depth else s.scope)}</span>",
                str(s.runs),
                f"{s.tokens:,}",
                _bar(s.tokens / top, "share"),
                _fmt(s.usd),
                str(s.tool_calls),
            ]
        )
    head = ["scope", "runs", "tokens", "share of the largest", "USD", "tool calls"]
    return _table(head, rows) + _more(len(shown), len(report.scopes), "scopes")


def _options(report: Report) -> str:
    rows = [
        [
            _text(o.option),
            _text(o.model or "-"),
            str(o.decisions),
            str(o.cut_off),
            f"{o.tokens:,}",
            _fmt(o.usd),
            str(o.tool_calls),
            _fmt(o.success_rate, "{:.2f}"),
            _fmt(o.mean_p_success, "{:.2f}"),
            _fmt(o.forecast_error, "{:+.2f}"),
        ]
        for o in report.options
    ]
    head = ["option", "model", "decisions", "cut off", "tokens", "USD", "tool calls"]
    return _table([*head, "success", "mean p", "forecast error"], rows, left=2)


def _nice_top(top: float) -> tuple[float, float]:
    """An axis end at or above ``top`` and its tick step: 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return 1.0, 0.25
    power = 10 ** math.floor(math.log10(top / 4))
    step = next(m * power for m in (1, 2, 5, 10) if top / (m * power) <= 5)
    return math.ceil(top / step) * step, step


def _plot(
    points: Sequence[tuple[float, float, float]],
    *,
    top: float,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (460, 320),
) -> str:
    """A scatter of (x, y, radius) over [0, top]^2 with the diagonal, as inline SVG."""
    width, height = size
    top, step = _nice_top(top)
    ticks = [step * k for k in range(round(top / step) + 1)]
    left, bottom, pad = 56, 40, 20
    plot_w, plot_h = width - left - pad, height - bottom - pad

    def sx(x: float) -> float:
        return left + plot_w * x / top

    def sy(y: float) -> float:
        return pad + plot_h * (1 - y / top)

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        f'<rect x="{left}" y="{pad}" width="{plot_w}" height="{plot_h}" fill="#fafbfc" '
        'stroke="#e4e7ec"/>',
    ]
    parts.extend(
        f'<line x1="{sx(t):.1f}" y1="{pad}" x2="{sx(t):.1f}" y2="{pad + plot_h}" '
        'stroke="#eef0f3"/>'
        f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + plot_w}" y2="{sy(t):.1f}" '
        'stroke="#eef0f3"/>'
        f'<text x="{sx(t):.1f}" y="{height - bottom + 16}" text-anchor="middle">'
        f"{_compact(t)}</text>"
        f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_compact(t)}</text>'
        for t in ticks
    )
    parts.append(
        f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(top):.1f}" y2="{sy(top):.1f}" '
        'stroke="#1d2430" stroke-dasharray="4 4"/>'
    )
    for x, y, r in points:
        parts.append(
            f'<circle cx="{sx(min(x, top)):.1f}" cy="{sy(min(y, top)):.1f}" r="{r:.1f}" '
            'fill="#2e6be6" fill-opacity="0.45"/>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(14 {pad + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text></svg>'
    )
    return "".join(parts)


def _forecast_chart(report: Report) -> str:
    points = report.points
    if not points:
        return '<p class="note">No decision that ran has a planned cost.</p>'
    step = max(1, math.ceil(len(points) / _MAX_POINTS))
    shown = points[::step]
    top = max(max(p for p, _ in shown), max(a for _, a in shown))
    over = sum(a > p for p, a in points)
    note = (
        f"{len(points):,} decisions{f' ({len(shown):,} drawn)' if step > 1 else ''}; "
        f"{over:,} cost more than planned. Above the line: more than planned."
    )
    chart = _plot(
        [(p, a, 3.0) for p, a in shown],
        top=top,
        x_label="planned cost (the plan's quantile)",
        y_label="actual cost",
    )
    return chart + f'<p class="note">{escape(note)}</p>'


def _calibration_chart(report: Report) -> str:
    c = report.calibration
    if not c.bins:
        return '<p class="note">No graded outcome to calibrate against.</p>'
    biggest = max(b["count"] for b in c.bins)
    points = [
        (b["predicted"], b["observed"], 3 + 9 * math.sqrt(b["count"] / biggest)) for b in c.bins
    ]
    chart = _plot(points, top=1.0, x_label="predicted p_success", y_label="observed success")
    note = (
        f"{c.count:,} graded outcomes in ten bins (the area of a dot: its count); "
        f"Brier {_fmt(c.brier, '{:.3f}')}, ECE {_fmt(c.ece, '{:.3f}')}. "
        "Steps cut off at their cap are left out."
    )
    return chart + f'<p class="note">{escape(note)}</p>'


def _cards(report: Report) -> str:
    scopes = {s.scope: s for s in report.scopes}
    top = [s for name, s in scopes.items() if "/" not in name]
    errors = [r.forecast_error for r in report.runs if r.forecast_error is not None]
    ran_out = sum(bool(r.skips or r.refused) for r in report.runs)
    cards = [
        ("runs", f"{len(report.runs):,}"),
        ("tokens", f"{sum(s.tokens for s in top):,}"),
        ("USD", _fmt(sum(s.usd for s in top), "{:,.4f}")),
        ("tool calls", f"{sum(s.tool_calls for s in top):,}"),
        ("runs that ran out", f"{ran_out:,}"),
        ("median forecast error", _fmt(statistics.median(errors) if errors else None, "{:+.2f}")),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><span>{k}</span><b>{v}</b></div>' for k, v in cards)
        + "</div>"
    )


def write_html(report: Report, path: str | Path, *, source: str = "") -> Path:
    """Write the report as one HTML page (inline CSS and SVG; nothing fetched, no scripts).

    Args:
        report: from `build_report`.
        path: the page to write (its folder is made).
        source: what the report was read from, shown under the title.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sub = " · ".join(x for x in (escape(source), f"made {made}") if x)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>roi-agents report</title><style>{_STYLE}</style></head>
<body><main>
<h1>Budgets, choices and forecasts</h1>
<p class="sub">{sub}</p>
{_cards(report)}
<section><h2>Runs</h2>{_runs(report)}
<p class="note">Spent: the thread's spend by the run's end (a thread invoked again carries its
earlier runs'); this run: what the run's own calls spent. The bar is spend against the budget in
the resource it planned for
(green under 90%, amber up to 100%, red over). "Ran out": a step skipped or a call refused.
A trace without a plan span is shown by its trace id, with what its decisions spent.</p></section>
<section><h2>Scopes</h2>{_scopes(report)}
<p class="note">Each scope with every scope under it: a tenant holds its users, a user their
threads.</p></section>
<div class="charts">
<section><h2>Forecast against actual cost</h2>{_forecast_chart(report)}</section>
<section><h2>Calibration of p_success</h2>{_calibration_chart(report)}</section>
</div>
<section><h2>Options</h2>{_options(report)}</section>
<footer>roi-agents {escape(__version__)}</footer>
</main></body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
