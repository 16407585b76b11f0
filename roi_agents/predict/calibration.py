"""Calibration of the learned predictor, fitted on held-out data and applied client-side.

Two maps, for all options together, per option and per (step group, option)
(`Calibration.maps`), stored as
``calibration.json`` beside the checkpoint (the server returns raw head outputs;
`LocalPredictor` and `VLLMPredictor` apply the maps):

* ``p_success``: Platt scaling, ``sigmoid(a * logit(raw) + b)`` fitted by maximum likelihood,
  stored as knots for linear interpolation (isotonic regression was tried: on ~500 held-out
  rows per option its steps added noise, with a higher Brier score and calibration error on
  the test rows than Platt's two parameters); and, per (step group, option), a `Joint` map
  that reads the raw success logits of all the group's options for the same step
  (`Calibration.success`). The controller acts on differences between options (is the dear
  one worth it here?); calibrating each option on its own logit can leave those differences
  pointing the wrong way, the joint map fits them;
* cost: split-conformal quantiles of the standardised residual ``(log cost - mean) / spread``
  per resource. The forecast's quantile at level ``a`` is ``exp(mean + spread * z[a])``, where
  ``z[a]`` is the ``ceil((n + 1) a)``-th smallest of the ``n`` held-out residuals (the
  ``floor``-th below the median), so a new step's cost falls below it with probability at least
  ``a`` when steps are exchangeable. The forecast's mean averages the held-out residuals' grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from roi_agents.errors import InvalidValueError

__all__ = [
    "CALIBRATION_FILE",
    "LEVELS",
    "MIN_ROWS",
    "Calibration",
    "Joint",
    "Maps",
    "ResidualQuantiles",
    "conformal_quantiles",
    "fit_joint",
    "platt",
]

CALIBRATION_FILE = "calibration.json"
MIN_ROWS = 50
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


class Maps(BaseModel):
    """The maps that turn raw head outputs into calibrated forecasts.

    Attributes:
        success_x: increasing raw probabilities (knots of the map).
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


class Joint(BaseModel):
    """``p_success`` of one option from the raw success logits of every option of the step.

    ``sigmoid(bias + sum of weights[key] * logit[key])``, over the option keys of a step group.

    Attributes:
        weights: per option key, the weight of its raw success logit.
        bias: the intercept.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    weights: Annotated[dict[str, float], Field(min_length=1)]
    bias: float

    def p_success(self, logits: Mapping[str, float]) -> float | None:
        """The calibrated probability, ``None`` unless ``logits`` has every key it reads."""
        if not self.weights.keys() <= logits.keys():
            return None
        z = self.bias + sum(w * logits[key] for key, w in self.weights.items())
        return float(_expit(np.asarray(z)))


class Calibration(Maps):
    """Maps for every option together, per option, and per (step group, option).

    Options differ in base rate and in how far the model under- or over-states them, and so do
    groups of steps (a dataset, a kind of task: one-letter answers against worked solutions).
    An option, or an option within a group, seen on at least `MIN_ROWS` calibration rows gets
    maps of its own, keyed by the option's tag text as the model reads it (``"deep"``,
    ``"gpt-4-1106-preview"``) and the step's ``group``.

    Attributes:
        by_option: per option key, its own maps.
        by_group: per step group, per option key, its own maps.
        joint: per step group, per option key, its `Joint` success map.
    """

    by_option: dict[str, Maps] = {}
    by_group: dict[str, dict[str, Maps]] = {}
    joint: dict[str, dict[str, Joint]] = {}

    def maps(self, key: str, group: str | None = None) -> Maps:
        """The most specific maps there are for option ``key`` in ``group``."""
        if group is not None:
            found = self.by_group.get(group, {}).get(key)
            if found is not None:
                return found
        return self.by_option.get(key, self)

    def success(self, key: str, group: str | None, logits: Mapping[str, float]) -> float:
        """The calibrated ``p_success`` of option ``key`` for a step in ``group``.

        Args:
            key: the option's key.
            group: the step's group.
            logits: the raw success logits of the step's options, by key (``key``'s included).
                The group's `Joint` map applies when it has one for ``key`` and every logit
                it reads is there; the Platt map of `maps` otherwise.
        """
        joint = self.joint.get(group, {}).get(key) if group is not None else None
        found = joint.p_success(logits) if joint is not None else None
        if found is not None:
            return found
        return self.maps(key, group).p_success(float(_expit(np.asarray(logits[key]))))

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


def _expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow


def _logistic(
    features: np.ndarray, y: np.ndarray, ridge: np.ndarray, start: np.ndarray
) -> np.ndarray:
    """Weights of a logistic regression with an L2 penalty ``ridge`` per weight (Newton)."""

    def loss(w: np.ndarray) -> float:
        z = features @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + w @ (ridge * w) / 2)

    w = start.astype(float)
    for _ in range(100):  # Newton's method, step halved until the loss goes down
        p = _expit(features @ w)
        gradient = features.T @ (p - y) + ridge * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        before, scale = loss(w), 1.0
        while scale > 1e-6 and loss(w - scale * step) > before:
            scale /= 2
        w = w - scale * step
        if np.abs(scale * step).max() < 1e-9:
            break
    return w


def platt(raw: Sequence[float], outcome: Sequence[float]) -> tuple[list[float], list[float]]:
    """Fit ``p = sigmoid(a * logit(raw) + b)`` by maximum likelihood (Platt scaling).

    Two parameters, so it needs far fewer rows than isotonic regression not to add noise.

    Returns:
        The map as knots ``(x, y)`` on a grid of 201 raw probabilities, for interpolation.
    """
    if len(raw) != len(outcome) or not raw:
        raise InvalidValueError("raw", "needs as many outcomes as probabilities, at least one")
    q = np.clip(np.asarray(raw, dtype=float), 1e-6, 1 - 1e-6)
    features = np.stack([np.log(q / (1 - q)), np.ones_like(q)], axis=1)
    y = np.asarray(outcome, dtype=float)
    # A small penalty keeps separable data finite.
    w = _logistic(features, y, np.full(2, 1e-3), np.array([1.0, 0.0]))
    grid = np.linspace(0.0, 1.0, 201)
    g = np.clip(grid, 1e-6, 1 - 1e-6)
    mapped = _expit(w[0] * np.log(g / (1 - g)) + w[1])
    if w[0] < 0:  # a model ranking backwards: calibrate to the base rate, never invert
        mapped = np.full_like(grid, float(y.mean()))
    return grid.tolist(), np.maximum.accumulate(mapped).tolist()


def fit_joint(logits: Mapping[str, Sequence[float]], outcome: Sequence[float]) -> Joint:
    """Fit a `Joint` map: one option's outcomes on the raw logits of every option, per step.

    Args:
        logits: per option key, the raw success logit of each calibration step.
        outcome: the option's score on each of those steps.

    The weights have a unit L2 penalty (the intercept none): with a few hundred steps a weight
    stays near zero unless the data back it, so an uninformative option's logit changes little.

    Raises:
        InvalidValueError: with no step, or logits and outcomes of different lengths.
    """
    keys = sorted(logits)
    y = np.asarray(outcome, dtype=float)
    if not keys or len(y) == 0 or any(len(logits[k]) != len(y) for k in keys):
        raise InvalidValueError("logits", "needs one logit per option for every outcome")
    features = np.column_stack(
        [*(np.asarray(logits[k], dtype=float) for k in keys), np.ones_like(y)]
    )
    ridge = np.r_[np.ones(len(keys)), 1e-6]
    w = _logistic(features, y, ridge, np.zeros(len(keys) + 1))
    return Joint(
        weights={k: float(v) for k, v in zip(keys, w[:-1], strict=True)}, bias=float(w[-1])
    )


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
