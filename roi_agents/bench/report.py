"""Show a benchmark result: a rich table, a PNG plot, a JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from roi_agents._optional import pyplot
from roi_agents._text import shown
from roi_agents.bench.simulate import BenchResult
from roi_agents.bench.tune import DEFAULT, Tuned

__all__ = ["plot_result", "print_result", "write_json"]


def print_result(result: BenchResult, console: Console | None = None) -> None:
    """One table per budget: value, % of oracle, PGR, spend, overruns, latency per policy."""
    console = console or Console()
    unit = "USD" if result.resource == "usd" else result.resource.replace("_", " ")
    console.print(
        f"[bold]{shown(result.data, 400)}[/]: {result.config.episodes} episodes x "
        f"{result.config.steps} steps, seed {result.config.seed}, budget in {unit} as a "
        "fraction of always "
        f"[italic]{shown(result.dearest)}[/]; {result.train_queries} training / "
        f"{result.test_queries} test queries ({result.distinct_test_queries} drawn); ours plans "
        + _plans_at(result)
        + (", learning online" if result.config.online else "")
    )
    if result.prices:
        listed = ", ".join(
            f"{shown(n)} {i:g} / {o:g}" for n, (i, o) in sorted(result.prices.items())
        )
        console.print(f"list prices (USD per million input / output tokens): {listed}")
    for fraction, policies in result.budgets.items():
        table = Table(title=f"budget {fraction:g}", title_justify="left")
        for column in (
            "policy",
            "value",
            "% oracle",
            "PGR",
            "gap closed",
            "vs all",
            f"spend ({unit})",
            "budget",
            "overruns",
            "cut off",
            "skipped",
            "latency p50 ms",
        ):
            table.add_column(column, justify="left" if column == "policy" else "right")
        best = max(r.value for name, r in policies.items() if name != "oracle")
        for name, r in policies.items():
            style = "bold green" if name == "ours" else ("dim" if name == "oracle" else None)
            value = f"{r.value:.2f}" + _num(r.value_se_queries, " ± {:.2f}", "")
            value += " *" if r.value == best and name != "oracle" else ""
            table.add_row(
                shown(f"{name} ({r.choice})" if r.choice else name, 400),
                value,
                _num(r.pct_oracle, "{:.1f}"),
                _num(r.pgr, "{:.2f}"),
                _num(r.gap_closed, "{:.2f}") + _error(r.gap_closed_se, name),
                _num(r.gap_closed_all, "{:.2f}") + _error(r.gap_closed_all_se_queries, name),
                f"{r.spend:.4g}",
                f"{r.budget:.4g}",
                str(r.overruns),
                f"{r.truncated:.2f}",
                f"{r.skipped:.1f}",
                f"{r.latency_ms_p50:.3f}",
                style=style,
            )
        console.print(table)
    console.print(
        "value: mean successes per episode; * best policy at this budget; gap closed: (value - "
        "best fixed option or random mix) / (oracle - that), ± its standard error over the "
        "episodes (paired); value's ± and vs all's ±: bootstrapped over the test queries (the "
        "episodes reuse them); vs all: the same against the best of every baseline, the two "
        "threshold routers, best-single (the option that did best under this budget on "
        "episodes of the training part) and the per-query router included; cut off and "
        "skipped: steps per episode"
    )


def _plans_at(result: BenchResult) -> str:
    policy = result.config.policy
    if policy is not None:
        chosen = ", ".join(f"{s.quantile}/{s.risk}" for s in policy.settings)
        return f"by its policy ({chosen})"
    config = result.config
    return f"at {config.quantile}" + (" of the run's total" if config.risk == "run" else "")


def print_tuned(tuned: Tuned, console: Console | None = None) -> None:
    """Per budget: each candidate's value on the replayed training episodes, and the choice."""
    console = console or Console()
    policy = tuned.policy
    console.print(
        f"[bold]{shown(policy.data, 400)}[/]: {tuned.train_queries} training queries "
        f"({tuned.replayed_queries} replayed), {tuned.folds} folds, {tuned.episodes} episodes "
        f"of {tuned.steps} steps per fold; value per episode on the held-out fold"
        + (", the predictor learning online" if policy.online else "")
    )
    labels = list(policy.settings[0].values)
    table = Table(title_justify="left")
    for column in ("budget", f"per step ({policy.resource})", *labels, "gain ± SE", "chosen"):
        table.add_column(column, justify="right")
    for setting in policy.settings:
        gain, se = setting.margin or (0.0, 0.0)
        table.add_row(
            f"{setting.fraction:g}",
            f"{setting.per_step:.4g}",
            *(f"{setting.values[label]:.2f}" for label in labels),
            f"{gain:+.2f} ± {se:.2f}",
            f"{setting.quantile}/{setting.risk}",
        )
    console.print(table)
    if policy.follows:
        tried = ", ".join(f"{f} {v:.2f}" for f, v in policy.follows.items())
        console.print(
            f"follow (how far the composed predictor follows the learned model; value summed "
            f"over the budgets at {DEFAULT[0]}/{DEFAULT[1]}): {tried}; chosen {policy.follow:g}"
        )
    console.print(
        f"gain: the best candidate less the default ({DEFAULT[0]}/{DEFAULT[1]}), paired over "
        "the same episodes, ± its SE bootstrapped over the replayed queries; it is chosen only "
        "when the gain is above its SE and it earned more on every fold"
    )


def _error(se: float, name: str) -> str:
    """`` ± se``; none for the oracle, whose gap closed is 1 by definition."""
    return "" if name == "oracle" else _num(se, " ± {:.2f}", "")


def _num(x: float, fmt: str, missing: str = "-") -> str:
    return missing if not math.isfinite(x) else fmt.format(x)


def plot_result(result: BenchResult, path: str | Path) -> Path:
    """Value against budget fraction for every policy, as a PNG."""
    plt = pyplot()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fractions = list(result.budgets)
    names = list(next(iter(result.budgets.values())))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    # The default cycle without its green (ours) and grey; the oracle is black.
    palette = [f"C{k}" for k in range(10) if k not in (2, 7)]
    others = iter(palette * 4)
    for name in names:
        values = [result.budgets[f][name].value for f in fractions]
        style: dict[str, Any]
        if name == "ours":
            style = {"lw": 2.5, "color": "tab:green", "marker": "o", "zorder": 3}
        elif name == "oracle":
            style = {"lw": 1.5, "color": "black", "ls": "--", "marker": "."}
        else:
            dashed = name.startswith("fixed:")
            style = {
                "lw": 1,
                "color": next(others),
                "marker": "s" if dashed else "^",
                "ls": "-." if dashed else "-",
            }
        ax.plot(fractions, values, label=name, **style)
    ax.set_xlabel(f"budget (fraction of always {result.dearest}, {result.resource})")
    ax.set_ylabel(f"value (successes per {result.config.steps}-step episode)")
    ax.set_title(f"{result.data}: {result.config.episodes} episodes, seed {result.config.seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(result: BenchResult, path: str | Path) -> Path:
    """The result in the documented machine-readable shape."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return path
