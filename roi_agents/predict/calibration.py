"""Calibration of the learned predictor, fitted on held-out data and applied client-side.

Two maps, stored as ``calibration.json`` beside the checkpoint (the server returns raw head
outputs; `LocalPredictor` and `VLLMPredictor` apply the maps):

* ``p_success``: isotonic regression (pool-adjacent-violators) of the outcome on the model's
  raw probability, as knots for linear interpolation;
* cost: split-conformal quantiles of the standardised residual ``(log cost - mean) / spread``
  per resource. The forecast's quantile at level ``a`` is ``exp(mean + spread * z[a])``, where
  ``z[a]`` is the ``ceil((n + 1) a)``-th smallest of the ``n`` held-out residuals (the
  ``floor``-th below the median), so a new step's cost falls below it with probability at least
  ``a`` when steps are exchangeable. The forecast's mean averages the held-out residuals' grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from roi_agents.errors import InvalidValueError

__all__ = [
    "CALIBRATION_FILE",
    "LEVELS",
    "Calibration",
    "ResidualQuantiles",
    "conformal_quantiles",
    "isotonic",
]

CALIBRATION_FILE = "calibration.json"
# Midpoints 0.005 ... 0.995 (their mean is the forecast's mean) plus the levels forecasts use.
_MIDPOINTS = tuple(round((i + 0.5) / 100, 4) for i in range(100))
LEVELS: tuple[float, ...] = tuple(sorted({*_MIDPOINTS, 0.05, 0.5, 0.9, 0.95, 0.99}))


class ResidualQuantiles(BaseModel):
    """Conformal quantiles of one resource's standardised log-cost residual, one per `LEVELS`."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    z: Annotated[tuple[float, ...], Field(min_length=len(LEVELS), max_length=len(LEVELS))]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if any(b < a for a, b in zip(self.z, self.z[1:], strict=False)):
            raise ValueError("z: quantiles must not decrease")
        return self

    def at(self, level: float) -> float:
        """The residual quantile at ``level`` (one of `LEVELS`, else interpolated)."""
        return float(np.interp(level, LEVELS, self.z))

    def midpoints(self) -> list[float]:
        """The quantiles at the 100 midpoint levels, whose average is the mean."""
        return [self.at(level) for level in _MIDPOINTS]


class Calibration(BaseModel):
    """The maps that turn raw head outputs into calibrated forecasts.

    Attributes:
        success_x: increasing raw probabilities (isotonic knots).
        success_y: calibrated probabilities at the knots (non-decreasing).
        tokens: residual quantiles of ``log(output_tokens + 1)``.
        usd: residual quantiles of ``log(usd + 1e-6)``, when the checkpoint predicts USD.
        rows: held-out (step, option) rows the maps were fitted on.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    success_x: Annotated[tuple[float, ...], Field(min_length=1)]
    success_y: Annotated[tuple[float, ...], Field(min_length=1)]
    tokens: ResidualQuantiles
    usd: ResidualQuantiles | None = None
    rows: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _knots(self) -> Self:
        if len(self.success_x) != len(self.success_y):
            raise ValueError("success_x, success_y: must have the same length")
        if any(not 0.0 <= v <= 1.0 for v in (*self.success_x, *self.success_y)):
            raise ValueError("success_x, success_y: must lie in [0, 1]")
        if any(b < a for a, b in zip(self.success_y, self.success_y[1:], strict=False)):
            raise ValueError("success_y: must not decrease")
        return self

    def p_success(self, raw: float) -> float:
        """The calibrated probability for a raw one."""
        return float(np.interp(raw, self.success_x, self.success_y))

    def save(self, folder: str | Path) -> Path:
        """Write ``calibration.json`` into ``folder``; return its path."""
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Calibration | None:
        """The calibration stored in ``folder`` (a checkpoint), ``None`` when there is none.

        Raises:
            InvalidValueError: when the file exists but is not a valid calibration.
        """
        path = Path(folder) / CALIBRATION_FILE
        if not path.exists():
            return None
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise InvalidValueError("calibration", f"{path}: {error}") from None


def isotonic(raw: Sequence[float], outcome: Sequence[float]) -> tuple[list[float], list[float]]:
    """Fit a non-decreasing map from raw probabilities to outcomes (pool adjacent violators).

    Returns:
        Knots ``(x, y)`` for linear interpolation: one per pooled block, at its mean raw value,
        its rate shrunk as ``(successes + 1/2) / (rows + 1)``.
    """
    if len(raw) != len(outcome) or not raw:
        raise InvalidValueError("raw", "needs as many outcomes as probabilities, at least one")
    order = np.argsort(np.asarray(raw, dtype=float), kind="stable")
    xs = np.asarray(raw, dtype=float)[order]
    ys = np.asarray(outcome, dtype=float)[order]
    # Blocks as [sum of y, sum of x, count, last x]: equal raw values start in one block; merge
    # while the previous block's mean is not below the last one's.
    blocks: list[list[float]] = []
    for x, y in zip(xs, ys, strict=True):
        if blocks and blocks[-1][3] == x:
            blocks[-1][0] += y
            blocks[-1][1] += x
            blocks[-1][2] += 1.0
        else:
            blocks.append([y, x, 1.0, x])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][2] >= blocks[-1][0] / blocks[-1][2]:
            y2, x2, n2, last = blocks.pop()
            blocks[-1][0] += y2
            blocks[-1][1] += x2
            blocks[-1][2] += n2
            blocks[-1][3] = last
    knots_x = [b[1] / b[2] for b in blocks]
    # (successes + 1/2) / (rows + 1): a small block never claims certainty (kept non-decreasing).
    shrunk = np.maximum.accumulate([(b[0] + 0.5) / (b[2] + 1.0) for b in blocks])
    knots_y = [min(max(float(v), 0.0), 1.0) for v in shrunk]
    return knots_x, knots_y


def conformal_quantiles(residuals: Sequence[float]) -> ResidualQuantiles:
    """Split-conformal quantiles of held-out residuals at every level of `LEVELS`.

    Raises:
        InvalidValueError: with no residual or a non-finite one.
    """
    values = np.sort(np.asarray(residuals, dtype=float))
    n = len(values)
    if n == 0 or not np.isfinite(values).all():
        raise InvalidValueError("residuals", "needs at least one residual, all finite")
    z = []
    for level in LEVELS:
        rank = math.ceil((n + 1) * level) if level >= 0.5 else math.floor((n + 1) * level)
        z.append(float(values[min(max(rank, 1), n) - 1]))
    return ResidualQuantiles(z=tuple(z))
