"""Held-out quality of a predictor: discrimination, calibration and cost intervals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from roi_agents._optional import pyplot
from roi_agents.errors import InvalidValueError

__all__ = ["Quality", "auc", "brier", "expected_calibration_error", "plot_reliability", "quality"]

_BINS = 10


def auc(outcome: Sequence[float], p: Sequence[float]) -> float | None:
    """Area under the ROC curve of ``p`` for ``outcome >= 0.5`` (ties count half).

    ``None`` when only one class is present.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = np.asarray(outcome, dtype=float) >= 0.5
    scores = np.asarray(p, dtype=float)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties (1-based).
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[y].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def brier(outcome: Sequence[float], p: Sequence[float]) -> float:
    """Mean squared error of the probabilities."""
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(outcome, dtype=float)) ** 2))


def _bins(outcome: Sequence[float], p: Sequence[float]) -> list[tuple[float, float, int]]:
    y, q = np.asarray(outcome, dtype=float), np.asarray(p, dtype=float)
    index = np.minimum((q * _BINS).astype(int), _BINS - 1)
    return [
        (float(q[index == b].mean()), float(y[index == b].mean()), int((index == b).sum()))
        for b in range(_BINS)
        if (index == b).any()
    ]


def expected_calibration_error(outcome: Sequence[float], p: Sequence[float]) -> float:
    """Weighted mean gap between predicted and observed success over 10 equal-width bins."""
    n = len(p)
    return float(sum(abs(mean_p - rate) * count / n for mean_p, rate, count in _bins(outcome, p)))


class Quality(BaseModel):
    """Prediction quality on one set of held-out (step, option) rows.

    Attributes:
        rows: rows evaluated.
        auc: success AUC (``None`` with a single class).
        brier: Brier score of the calibrated ``p_success``.
        brier_base: Brier score of the per-option success rate of the training rows.
        brier_skill: ``1 - brier / brier_base`` (0.1 = 10% below the base rate).
        ece: expected calibration error (10 bins), calibrated.
        ece_raw: the same before calibration.
        log_tokens_mae: mean absolute error of the predicted median of ``log(tokens + 1)``.
        coverage90: share of rows whose output tokens fall inside the 90% interval.
        usd_coverage90: the same for USD, when predicted.
        reliability: per bin (mean predicted, observed rate, rows).
    """

    model_config = ConfigDict(frozen=True)

    rows: Annotated[int, Field(ge=0)]
    auc: float | None
    brier: float
    brier_base: float
    brier_skill: float
    ece: float
    ece_raw: float
    log_tokens_mae: float | None
    coverage90: float | None
    usd_coverage90: float | None = None
    reliability: list[tuple[float, float, int]]


def quality(
    outcome: Sequence[float],
    p: Sequence[float],
    p_raw: Sequence[float],
    p_base: Sequence[float],
    *,
    log_tokens_error: Sequence[float] = (),
    tokens_inside: Sequence[bool] = (),
    usd_inside: Sequence[bool] = (),
) -> Quality:
    """Summarise held-out predictions.

    Args:
        outcome: the recorded scores.
        p: calibrated probabilities.
        p_raw: the model's own probabilities.
        p_base: the base rate of each row's option.
        log_tokens_error: per row with recorded tokens, predicted median minus actual (log).
        tokens_inside: per such row, whether the actual tokens fell in the 90% interval.
        usd_inside: the same for USD.

    Raises:
        InvalidValueError: when the lengths differ or there is no row.
    """
    n = len(outcome)
    if n == 0 or not len(p) == len(p_raw) == len(p_base) == n:
        raise InvalidValueError("outcome", "needs one probability of each kind per row, >= 1 row")
    score, base = brier(outcome, p), brier(outcome, p_base)
    return Quality(
        rows=n,
        auc=auc(outcome, p),
        brier=score,
        brier_base=base,
        brier_skill=1.0 - score / base if base > 0 else 0.0,
        ece=expected_calibration_error(outcome, p),
        ece_raw=expected_calibration_error(outcome, p_raw),
        log_tokens_mae=float(np.mean(np.abs(log_tokens_error))) if len(log_tokens_error) else None,
        coverage90=float(np.mean(tokens_inside)) if len(tokens_inside) else None,
        usd_coverage90=float(np.mean(usd_inside)) if len(usd_inside) else None,
        reliability=_bins(outcome, p),
    )


def plot_reliability(curves: dict[str, Quality], path: str | Path) -> Path:
    """Write a reliability diagram (observed success against predicted, per curve) as PNG."""
    plt = pyplot()

    path = Path(path)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for label, curve in curves.items():
        xs = [b[0] for b in curve.reliability]
        ys = [b[1] for b in curve.reliability]
        axes.plot(xs, ys, marker="o", label=f"{label} (ECE {curve.ece:.3f})")
    axes.set_xlabel("predicted p_success")
    axes.set_ylabel("observed success rate")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title("Reliability on held-out rows")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
