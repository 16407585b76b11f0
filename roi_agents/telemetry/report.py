"""``roi-agents report``: what a JSONL trace says about budgets, choices and forecasts."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from roi_agents._optional import pyplot
from roi_agents._text import printable
from roi_agents.errors import DataError
from roi_agents.telemetry import names
from roi_agents.telemetry.records import read_spans
from roi_agents.types import RESOURCES, SKIP

__all__ = [
    "Calibration",
    "OptionReport",
    "Report",
    "RunReport",
    "ScopeReport",
    "build_report",
    "plot_report",
    "print_report",
    "run_name",
]


class RunReport(BaseModel):
    """One run: a ``roi.plan`` span, or the decisions of a trace that has none.

    Attributes:
        spent: what the run's thread had spent by the run's end (a thread invoked again carries
            its earlier runs' spend against the same budget).
        this_run: what this run's own decisions spent.
        planned: whether the trace had a ``roi.plan`` span; without one, the budget is unknown
            and the spend is the sum of the run's decisions.
        refused: calls or reservations a budget refused during the run.
    """

    run_id: str | None
    trace_id: str | None
    scope: str | None
    resource: str
    budget: dict[str, float]
    spent: dict[str, float]
    this_run: dict[str, float]
    utilization: float | None
    decisions: int
    skips: int
    refused: int
    forecast_error: float | None
    planned: bool


class ScopeReport(BaseModel):
    """What the runs of one ledger scope and every scope under it spent (a tenant, a user).

    Summed from the runs' decisions, so runs traced without a plan span count too.
    """

    scope: str
    runs: int
    tokens: int
    usd: float
    tool_calls: int


class OptionReport(BaseModel):
    """Decisions for one (option, model)."""

    option: str
    model: str | None
    decisions: int
    cut_off: int
    """Decisions that stopped at their cap (``roi.outcome.truncated``)."""
    tokens: int
    usd: float
    tool_calls: int
    success_rate: float | None
    mean_p_success: float | None
    forecast_error: float | None


class Calibration(BaseModel):
    """Predicted ``p_success`` against observed success, in ten bins."""

    bins: list[dict[str, float]]
    brier: float | None
    ece: float | None
    count: int


class Report(BaseModel):
    """Everything `build_report` found in a trace file."""

    runs: list[RunReport]
    scopes: list[ScopeReport]
    options: list[OptionReport]
    calibration: Calibration
    points: list[tuple[float, float]]
    """(planned, actual) cost of every decision that ran, for the plot."""


def _tokens(attributes: dict[str, Any]) -> int:
    return int(attributes.get(names.GEN_AI_USAGE_INPUT_TOKENS, 0)) + int(
        attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS, 0)
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


_NO_SCOPE = "(no scope)"


def _traced(decisions: list[dict[str, Any]]) -> dict[str, float]:
    """What decision spans say their calls spent, per resource."""
    return {
        "tokens": float(sum(_tokens(d["attributes"]) for d in decisions)),
        "usd": sum(float(d["attributes"].get(names.ACTUAL_USD, 0.0)) for d in decisions),
        "tool_calls": float(
            sum(int(d["attributes"].get(names.ACTUAL_TOOL_CALLS, 0)) for d in decisions)
        ),
    }


def _refusals(spans: list[dict[str, Any]]) -> int:
    return sum(e.get("name") == names.EVENT_REFUSED for s in spans for e in s.get("events") or [])


def _runs(spans: list[dict[str, Any]]) -> list[RunReport]:
    """Each run: a plan span with its children, or the decisions of a trace without one."""
    # A plan span without an id is a run of its own all the same.
    plans = {
        s.get("span_id") or f"#{k}": s for k, s in enumerate(spans) if s["name"] == names.SPAN_PLAN
    }
    children: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    orphans: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        if span["name"] != names.SPAN_DECISION:
            continue
        parent = span.get("parent_span_id")
        if parent in plans:
            children[parent].append(span)
        else:  # traced without an open plan span (a node tracing one decision at a time)
            orphans[span.get("trace_id")].append(span)
    out = []
    for span_id, span in plans.items():
        a = span["attributes"]
        decisions = children.get(span_id, [])
        errors = [d["attributes"].get(names.FORECAST_ERROR) for d in decisions]
        spent = {r: a[key] for r in RESOURCES if (key := f"{names.SPENT}.{r}") in a}
        this_run = _traced(decisions)
        run = RunReport(
            run_id=_text(a.get(names.RUN_ID)),
            trace_id=span.get("trace_id"),
            scope=_text(a.get(names.SCOPE)),
            resource=a.get(names.RESOURCE, "tokens"),
            budget={r: a[key] for r in RESOURCES if (key := f"{names.BUDGET}.{r}") in a},
            spent=spent or this_run,
            this_run=this_run,
            utilization=a.get(names.UTILIZATION),
            decisions=int(a.get(names.DECISIONS, len(decisions))),
            skips=int(a.get(names.SKIPS, 0)),
            refused=_refusals([span]),
            forecast_error=_mean([e for e in errors if e is not None]),
            planned=True,
        )
        out.append(run)
    for trace_id, decisions in orphans.items():
        errors = [d["attributes"].get(names.FORECAST_ERROR) for d in decisions]
        this_run = _traced(decisions)
        run = RunReport(
            run_id=None,
            trace_id=trace_id,
            scope=None,
            resource="tokens",
            budget={},
            spent=this_run,
            this_run=this_run,
            utilization=None,
            decisions=len(decisions),
            skips=sum(d["attributes"].get(names.OPTION) == SKIP for d in decisions),
            refused=_refusals(decisions),
            forecast_error=_mean([e for e in errors if e is not None]),
            planned=False,
        )
        out.append(run)
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _scopes(runs: list[RunReport]) -> list[ScopeReport]:
    """Totals per scope and per every scope above it (``acme`` holds ``acme/bob/thread-1``)."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0])
    for run in runs:
        spent = run.this_run
        parts = (run.scope or _NO_SCOPE).split("/")
        for k in range(1, len(parts) + 1):
            total = totals["/".join(parts[:k])]
            total[0] += 1
            total[1] += spent["tokens"]
            total[2] += spent["usd"]
            total[3] += spent["tool_calls"]
    return [
        ScopeReport(scope=scope, runs=int(n), tokens=int(tokens), usd=usd, tool_calls=int(calls))
        for scope, (n, tokens, usd, calls) in sorted(totals.items())
    ]


def build_report(path: str | Path) -> Report:
    """Read a JSONL trace and aggregate it per run, scope, option and model, and calibration.

    Traces from any entry point are read: a run is a ``roi.plan`` span with its decisions, or,
    in a trace without one, the trace's decisions.

    Raises:
        DataError: when the file cannot be read or a line is not a span.
    """
    spans = list(read_spans(path))
    runs = _runs(spans)
    if not runs:
        raise DataError(str(path), None, "no roi.plan or roi.decision span: nothing to report")
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
    decisions = [s["attributes"] for s in spans if s["name"] == names.SPAN_DECISION]
    for a in decisions:
        groups[(a.get(names.OPTION, "?"), a.get(names.GEN_AI_REQUEST_MODEL))].append(a)
    options = []
    for (option, model), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        outcomes = [float(r[names.SUCCESS]) for r in rows if names.SUCCESS in r]
        options.append(
            OptionReport(
                option=option,
                model=model,
                decisions=len(rows),
                cut_off=sum(bool(r.get(names.TRUNCATED)) for r in rows),
                tokens=sum(_tokens(r) for r in rows),
                usd=sum(float(r.get(names.ACTUAL_USD, 0.0)) for r in rows),
                tool_calls=sum(int(r.get(names.ACTUAL_TOOL_CALLS, 0)) for r in rows),
                success_rate=_mean(outcomes),
                mean_p_success=_mean(
                    [
                        float(r[names.P_SUCCESS])
                        for r in rows
                        if names.P_SUCCESS in r and option != SKIP
                    ]
                ),
                forecast_error=_mean(
                    [float(r[names.FORECAST_ERROR]) for r in rows if names.FORECAST_ERROR in r]
                ),
            )
        )
    pairs = [
        (float(a[names.P_SUCCESS]), float(a[names.SUCCESS]))
        for a in decisions
        if names.SUCCESS in a
        and names.P_SUCCESS in a
        and a.get(names.OPTION) != SKIP
        and not a.get(names.TRUNCATED)
    ]
    bins = []
    ece = 0.0
    for k in range(10):
        inside = [(p, y) for p, y in pairs if k / 10 <= p < (k + 1) / 10 or (k == 9 and p == 1)]
        if not inside:
            continue
        predicted = sum(p for p, _ in inside) / len(inside)
        observed = sum(y for _, y in inside) / len(inside)
        ece += len(inside) / len(pairs) * abs(predicted - observed)
        bins.append(
            {
                "low": k / 10,
                "high": (k + 1) / 10,
                "predicted": predicted,
                "observed": observed,
                "count": len(inside),
            }
        )
    calibration = Calibration(
        bins=bins,
        brier=_mean([(p - y) ** 2 for p, y in pairs]),
        ece=ece if pairs else None,
        count=len(pairs),
    )
    # Planned against actual cost, in the resource each decision's run planned for.
    resource_of = {
        s.get("span_id"): s["attributes"].get(names.RESOURCE, "tokens")
        for s in spans
        if s["name"] == names.SPAN_PLAN
    }
    points = []
    for span in spans:
        a = span["attributes"]
        if span["name"] != names.SPAN_DECISION or a.get(names.OPTION) == SKIP:
            continue
        if names.COST_PLANNED not in a or names.GEN_AI_USAGE_INPUT_TOKENS not in a:
            continue
        resource = resource_of.get(span.get("parent_span_id"), "tokens")
        actual = float(a.get(names.ACTUAL_USD, 0.0)) if resource == "usd" else _tokens(a)
        points.append((float(a[names.COST_PLANNED]), actual))
    return Report(
        runs=runs,
        scopes=_scopes(runs),
        options=options,
        calibration=calibration,
        points=points,
    )


def _fmt(x: float | None, spec: str = "{:,.6g}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else spec.format(x)


_PRINTED = 200
"""Rows of the runs and scopes tables printed at most; ``--json`` and ``--html`` have more."""


def _said_more(console: Console, total: int, what: str) -> None:
    if total > _PRINTED:
        console.print(f"{total - _PRINTED:,} more {what} not printed: --json has them all")


_PLOTTED = 40
"""Runs drawn in the PNG at most (those that spent most): more bars are no longer readable."""


def run_name(run: RunReport) -> str:
    """How a run is named for people: its run id, else its trace's first characters."""
    return run.run_id or (f"trace {run.trace_id[:8]}" if run.trace_id else "-")


def _largest(runs: list[RunReport], n: int) -> list[RunReport]:
    """The ``n`` runs that spent most of their resource, in the report's order."""
    if len(runs) <= n:
        return runs
    keep = set(sorted(range(len(runs)), key=lambda i: -runs[i].spent.get(runs[i].resource, 0))[:n])
    return [r for i, r in enumerate(runs) if i in keep]


def _budget_cell(run: RunReport) -> str:
    limit = run.budget.get(run.resource)
    return _fmt(limit) if limit is not None else "-"


def print_report(report: Report, console: Console | None = None) -> None:
    """Four tables: runs, scopes, options, calibration."""
    console = console or Console()
    runs = Table(title="runs", title_justify="left")
    for column in (
        "run",
        "scope",
        "resource",
        "budget",
        "spent",
        "this run",
        "utilisation",
        "decisions",
        "skips",
        "refused",
        "forecast error",
    ):
        left = column in ("run", "scope", "resource")
        runs.add_column(column, justify="left" if left else "right")
    for r in report.runs[:_PRINTED]:
        runs.add_row(
            Text(printable(run_name(r))),
            Text(printable(r.scope or "-")),
            r.resource,
            _budget_cell(r),
            _fmt(r.spent.get(r.resource)),
            _fmt(r.this_run.get(r.resource)),
            _fmt(r.utilization, "{:.1%}"),
            str(r.decisions),
            str(r.skips),
            str(r.refused),
            _fmt(r.forecast_error, "{:+.2f}"),
        )
    console.print(runs)
    _said_more(console, len(report.runs), "runs")
    scopes = Table(title="scopes (each with every scope under it)", title_justify="left")
    for column in ("scope", "runs", "tokens", "USD", "tool calls"):
        scopes.add_column(column, justify="left" if column == "scope" else "right")
    for sc in report.scopes[:_PRINTED]:
        cells = (str(sc.runs), f"{sc.tokens:,}", f"{sc.usd:.4g}", str(sc.tool_calls))
        scopes.add_row(Text(printable(sc.scope)), *cells)
    console.print(scopes)
    _said_more(console, len(report.scopes), "scopes")
    options = Table(title="options", title_justify="left")
    for column in (
        "option",
        "model",
        "decisions",
        "cut off",
        "tokens",
        "USD",
        "tool calls",
        "success",
        "mean p",
        "forecast error",
    ):
        options.add_column(column, justify="left" if column in ("option", "model") else "right")
    for o in report.options:
        options.add_row(
            Text(printable(o.option)),
            Text(printable(o.model or "-")),
            str(o.decisions),
            str(o.cut_off),
            f"{o.tokens:,}",
            f"{o.usd:.4g}",
            str(o.tool_calls),
            _fmt(o.success_rate, "{:.2f}"),
            _fmt(o.mean_p_success, "{:.2f}"),
            _fmt(o.forecast_error, "{:+.2f}"),
        )
    console.print(options)
    c = report.calibration
    console.print(
        f"calibration of p_success over {c.count} outcomes (steps cut off at their cap left "
        f"out): Brier {_fmt(c.brier)}, ECE {_fmt(c.ece)}; forecast error is "
        "log(actual / planned cost)"
    )


def plot_report(report: Report, path: str | Path) -> Path:
    """Spend against budget per run, and planned against actual cost per decision, as a PNG."""
    plt = pyplot()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    shown = _largest(report.runs, _PLOTTED)
    # Labels are plain text: a "$" would start matplotlib's mathtext.
    labels = [printable(run_name(r), 24).replace("$", r"\$") for r in shown]
    budgets = [r.budget.get(r.resource, 0.0) for r in shown]
    spent = [r.spent.get(r.resource, 0.0) for r in shown]
    xs = range(len(labels))
    left.bar([x - 0.2 for x in xs], budgets, width=0.4, label="budget", color="0.75")
    left.bar([x + 0.2 for x in xs], spent, width=0.4, label="spent", color="tab:green")
    left.set_xticks(list(xs), labels, rotation=45, ha="right", fontsize=7)
    title = "spend against budget per run"
    if len(shown) < len(report.runs):
        title += f" ({len(shown)} largest of {len(report.runs)})"
    left.set_title(title)
    left.legend()
    if report.points:
        planned, actual = zip(*report.points, strict=True)
        right.scatter(planned, actual, s=10, alpha=0.6)
        top = max(max(planned), max(actual)) * 1.1
        right.plot([0, top], [0, top], color="black", lw=1, ls="--", label="actual = planned")
        right.legend()
    right.set_xlabel("planned cost (plan's quantile)")
    right.set_ylabel("actual cost")
    right.set_title("forecast against actual cost per decision")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
