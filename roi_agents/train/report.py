"""The training report on the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from roi_agents._text import shown
from roi_agents.train.metrics import Quality
from roi_agents.train.pipeline import TrainReport

__all__ = ["print_train_report"]


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_train_report(report: TrainReport, console: Console) -> None:
    """Print the held-out quality overall, per dataset and per option."""
    rows, seconds = report.rows, report.seconds
    if "fine_tuning" in seconds:
        subsampled = " (subsampled: --max-rows)" if rows["fit"] < rows["fit_available"] else ""
        available = rows.get("calibration_available", rows["calibration"])
        bounded = (
            f" of {available} (subsampled: --eval-rows)" if rows["calibration"] < available else ""
        )
        fitted = (
            f"fine-tuned on {rows['fit']} of {rows['fit_available']} training rows{subsampled}, "
            f"{rows['validation']} validation, {rows['calibration']}{bounded} calibration rows; "
            f"{seconds['fine_tuning']:.0f} s fine-tuning"
        )
    else:  # --calibrate-only
        fitted = (
            f"calibrated only, on {rows['calibration']} rows; base rates of "
            f"{rows['fit_available']} rows"
        )
    console.print(
        f"[bold]checkpoint[/] {shown(report.out, 400)}"
        + (f" (base {shown(report.base, 400)})" if report.base else "")
        + f"; {fitted}, "
        f"{seconds['total']:.0f} s in all; evaluated {rows['test']} of "
        f"{rows['test_available']} held-out rows at {report.test_rows_per_second:.0f} rows/s.",
        highlight=False,
    )
    table = Table(title="held-out prediction quality")
    for column in (
        "rows",
        "AUC",
        "Brier",
        "Brier base",
        "skill",
        "ECE",
        "ECE raw",
        "log-tok MAE",
        "cov90 tok",
        "cov90 USD",
    ):
        table.add_column(column, justify="right")
    table.add_column("part")

    def add(name: str, q: Quality) -> None:
        table.add_row(
            str(q.rows),
            _cell(q.auc),
            _cell(q.brier, 4),
            _cell(q.brier_base, 4),
            f"{q.brier_skill:+.1%}",
            _cell(q.ece),
            _cell(q.ece_raw),
            _cell(q.log_tokens_mae),
            _cell(q.coverage90),
            _cell(q.usd_coverage90),
            name,
        )

    add("all", report.quality)
    for name, q in report.by_dataset.items():
        add(f"dataset {shown(name)}", q)
    for name, q in report.by_option.items():
        add(f"option {shown(name)}", q)
    console.print(table)
