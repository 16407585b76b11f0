"""``roi-agents report``: what a JSONL trace says about budgets, choices and forecasts."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from roi_agents._optional import pyplot
from roi_agents.telemetry import names
from roi_agents.telemetry.records import read_spans
from roi_agents.types import RESOURCES, SKIP

__all__ = [
    "Calibration",
    "OptionReport",
    "Report",
    "RunReport",
    "build_report",
    "plot_report",
    "print_report",
]


class RunReport(BaseModel):
    """One ``roi.plan`` span: a run's budget and what it spent."""

    run_id: str | None
    resource: str
    budget: dict[str, float]
    spent: dict[str, float]
    utilization: float | None
    decisions: int
    skips: int
    forecast_error: float | None


class OptionReport(BaseModel):
    """Decisions for one (option, model)."""

    option: str
    model: str | None
    decisions: int
    cut_off: int
    """Decisions that stopped at their cap (``roi.outcome.truncated``)."""
    tokens: int
    usd: float
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


def build_report(path: str | Path) -> Report:
    """Read a JSONL trace and aggregate it per run, per option and model, and for calibration.

    Raises:
        DataError: when the file cannot be read or a line is not a span.
    """
    spans = list(read_spans(path))
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        if span["name"] == names.SPAN_DECISION:
            children[span.get("parent_span_id")].append(span)
    runs = []
    for span in spans:
        if span["name"] != names.SPAN_PLAN:
            continue
        a = span["attributes"]
        errors = [
            d["attributes"][names.FORECAST_ERROR]
            for d in children.get(span.get("span_id"), [])
            if names.FORECAST_ERROR in d["attributes"]
        ]
        runs.append(
            RunReport(
                run_id=a.get(names.RUN_ID),
                resource=a.get(names.RESOURCE, "tokens"),
                budget={r: a[key] for r in RESOURCES if (key := f"{names.BUDGET}.{r}") in a},
                spent={r: a[key] for r in RESOURCES if (key := f"{names.SPENT}.{r}") in a},
                utilization=a.get(names.UTILIZATION),
                decisions=int(a.get(names.DECISIONS, 0)),
                skips=int(a.get(names.SKIPS, 0)),
                forecast_error=_mean(errors),
            )
        )
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
    return Report(runs=runs, options=options, calibration=calibration, points=points)


def _fmt(x: float | None, spec: str = "{:.3g}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else spec.format(x)


def print_report(report: Report, console: Console | None = None) -> None:
    """Three tables: runs, options, calibration."""
    console = console or Console()
    runs = Table(title="runs", title_justify="left")
    for column in (
        "run",
        "resource",
        "budget",
        "spent",
        "utilisation",
        "decisions",
        "skips",
        "forecast error",
    ):
        runs.add_column(column, justify="left" if column in ("run", "resource") else "right")
    for r in report.runs:
        runs.add_row(
            r.run_id or "-",
            r.resource,
            _fmt(r.budget.get(r.resource)),
            _fmt(r.spent.get(r.resource)),
            _fmt(r.utilization, "{:.1%}"),
            str(r.decisions),
            str(r.skips),
            _fmt(r.forecast_error, "{:+.2f}"),
        )
    console.print(runs)
    options = Table(title="options", title_justify="left")
    for column in (
        "option",
        "model",
        "decisions",
        "cut off",
        "tokens",
        "USD",
        "success",
        "mean p",
        "forecast error",
    ):
        options.add_column(column, justify="left" if column in ("option", "model") else "right")
    for o in report.options:
        options.add_row(
            o.option,
            o.model or "-",
            str(o.decisions),
            str(o.cut_off),
            f"{o.tokens:,}",
            f"{o.usd:.4g}",
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
    labels = [r.run_id or str(i) for i, r in enumerate(report.runs)]
    budgets = [r.budget.get(r.resource, 0.0) for r in report.runs]
    spent = [r.spent.get(r.resource, 0.0) for r in report.runs]
    xs = range(len(labels))
    left.bar([x - 0.2 for x in xs], budgets, width=0.4, label="budget", color="0.75")
    left.bar([x + 0.2 for x in xs], spent, width=0.4, label="spent", color="tab:green")
    left.set_xticks(list(xs), labels, rotation=45, ha="right", fontsize=7)
    left.set_title("spend against budget per run")
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
