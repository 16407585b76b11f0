"""Calibration of the learned predictor, fitted on held-out data and applied client-side.

Stored as ``calibration.json`` beside the checkpoint (the server returns raw head outputs;
`LocalPredictor` and `VLLMPredictor` apply it):

* ``p_success``: a logistic regression of the outcome on the raw success logits of the step's
  options and on the logit of the step group's base rate (`SuccessMap`). The base rate is the
  success rate of the option within the step's group (a dataset, a subject) on the fine-tuning
  rows, shrunk towards the option's rate like `PriorPredictor` shrinks a group; the model reads
  one step at a time and cannot count how often an option succeeds on a whole subject (on all
  of ``shared/data`` the group rates alone are 8% below the per-option rate's Brier score).
  Reading every option's logit matters because the controller acts on differences between
  options (is the dear one worth it here?): calibrating each option on its own logit can leave
  those differences pointing the wrong way. Maps are fitted per option set (the options a step
  offers), per option (its own logit only) and for all rows, and the most specific one that
  applies is used. Two to a dozen weights with a unit ridge: a weight stays near zero unless
  the held-out rows back it (isotonic regression was tried: on ~500 held-out rows per option
  its steps added noise);
* cost (`Maps`): split-conformal quantiles of the standardised residual
  ``(log cost - mean) / spread`` per resource, for all rows, per option and per (group,
  option). The forecast's quantile at level ``a`` is ``exp(mean + spread * z[a])``, where
  ``z[a]`` is the ``ceil((n + 1) a)``-th smallest of the ``n`` held-out residuals (the
  ``floor``-th below the median), so a new step's cost falls below it with probability at least
  ``a`` when steps are exchangeable. The forecast's mean averages the held-out residuals' grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from roi_agents.errors import InvalidValueError

__all__ = [
    "CALIBRATION_FILE",
    "LEVELS",
    "MIN_ROWS",
    "OWN",
    "Calibration",
    "Maps",
    "ResidualQuantiles",
    "SuccessCalibration",
    "SuccessMap",
    "conformal_quantiles",
    "fit_success",
    "option_set",
]

CALIBRATION_FILE = "calibration.json"
MIN_ROWS = 50
# The key a `SuccessMap` reads the forecast option's own logit under.
OWN = ""
# Midpoints 0.005 ... 0.995 (their mean is the forecast's mean) plus the levels forecasts use.
_MIDPOINTS = tuple(round((i + 0.5) / 100, 4) for i in range(100))
LEVELS: tuple[float, ...] = tuple(sorted({*_MIDPOINTS, 0.05, 0.5, 0.9, 0.95, 0.99}))
_RATE_FLOOR = 1e-4


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
    """The cost maps that turn raw head outputs into calibrated cost forecasts.

    Attributes:
        tokens: residual quantiles of ``log(output_tokens + 1)``.
        usd: residual quantiles of ``log(usd + 1e-6)``, when the checkpoint predicts USD.
        rows: held-out (step, option) rows the maps were fitted on.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    tokens: ResidualQuantiles
    usd: ResidualQuantiles | None = None
    rows: Annotated[int, Field(ge=1)]


def option_set(keys: Iterable[str]) -> str:
    """The name a step's set of option keys is stored under: the sorted keys, ``|``-joined."""
    return "|".join(sorted(keys))


def _logit(p: float) -> float:
    p = min(max(p, _RATE_FLOOR), 1 - _RATE_FLOOR)
    return math.log(p / (1 - p))


class SuccessMap(BaseModel):
    """``p_success = sigmoid(bias + sum of weights[k] * logit[k] + rate * logit(base rate))``.

    Attributes:
        weights: per option key, the weight of that option's raw success logit for the same
            step; the key `OWN` stands for the forecast option's own logit.
        rate: the weight of the logit of the option's base rate in the step's group.
        bias: the intercept.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    weights: Annotated[dict[str, float], Field(min_length=1)]
    rate: float = 0.0
    bias: float

    def p_success(self, key: str, logits: Mapping[str, float], base_rate: float) -> float | None:
        """The calibrated probability of option ``key``; ``None`` without a logit it reads."""
        own = {OWN: logits[key]} if key in logits else {}
        found = {**logits, **own}
        if not self.weights.keys() <= found.keys():
            return None
        z = self.bias + self.rate * _logit(base_rate)
        z += sum(w * found[k] for k, w in self.weights.items())
        return float(_expit(np.asarray(z)))


class SuccessCalibration(BaseModel):
    """The success maps and the base rates they read; see the module's docstring.

    Attributes:
        shared: the map for any option (reads its own logit); before fitting, the raw
            probability.
        by_option: per option key, its own map (reads its own logit), where the option had at
            least `MIN_ROWS` calibration rows.
        by_set: per `option_set`, per option key, a map that reads every option's logit, where
            at least `MIN_ROWS` calibration steps offered exactly that set.
        option_rates: per option key, its success rate on the fine-tuning rows.
        group_rates: per step group, per option key, its rate there, shrunk towards the
            option's.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    shared: SuccessMap = SuccessMap(weights={OWN: 1.0}, bias=0.0)
    by_option: dict[str, SuccessMap] = {}
    by_set: dict[str, dict[str, SuccessMap]] = {}
    option_rates: dict[str, float] = {}
    group_rates: dict[str, dict[str, float]] = {}

    def base_rate(self, key: str, group: str | None) -> float:
        """Option ``key``'s base rate in ``group``: the group's, the option's, or the mean."""
        found = self.group_rates.get(group, {}).get(key) if group is not None else None
        if found is None:
            found = self.option_rates.get(key)
        if found is None:
            rates = list(self.option_rates.values())
            found = float(np.mean(rates)) if rates else 0.5
        return found

    def p(self, key: str, group: str | None, logits: Mapping[str, float]) -> float:
        """The calibrated ``p_success`` of option ``key`` for a step in ``group``.

        Args:
            key: the option's key.
            group: the step's group.
            logits: the raw success logits of the step's options, by key (``key``'s included).
        """
        rate = self.base_rate(key, group)
        for candidate in (
            self.by_set.get(option_set(logits), {}).get(key),
            self.by_option.get(key),
            self.shared,
        ):
            found = candidate.p_success(key, logits, rate) if candidate is not None else None
            if found is not None:
                return found
        raise InvalidValueError("logits", f"no success logit for option {key!r}")


class Calibration(Maps):
    """The success maps, and cost maps for all options, per option and per (group, option).

    Options differ in how far the model under- or over-states their cost, and so do groups of
    steps (a dataset, a kind of task: one-letter answers against worked solutions). An option,
    or an option within a group, seen on at least `MIN_ROWS` calibration rows gets cost maps of
    its own, keyed by the option's tag text as the model reads it (``"deep"``,
    ``"gpt-4-1106-preview"``) and the step's ``group``.

    Attributes:
        success: the success maps.
        by_option: per option key, its own cost maps.
        by_group: per step group, per option key, its own cost maps.
    """

    success: SuccessCalibration
    by_option: dict[str, Maps] = {}
    by_group: dict[str, dict[str, Maps]] = {}

    def maps(self, key: str, group: str | None = None) -> Maps:
        """The most specific cost maps there are for option ``key`` in ``group``."""
        if group is not None:
            found = self.by_group.get(group, {}).get(key)
            if found is not None:
                return found
        return self.by_option.get(key, self)

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


def fit_success(
    logits: Mapping[str, Sequence[float]], base_rates: Sequence[float], outcome: Sequence[float]
) -> SuccessMap:
    """Fit a `SuccessMap` on calibration steps.

    Args:
        logits: per option key (`OWN` for the forecast option's own), the raw success logit
            of each step.
        base_rates: the option's base rate in each step's group.
        outcome: the option's score on each step.

    The weights have a unit L2 penalty (the intercept none): with a few hundred steps a weight
    stays near zero unless the data back it, so an uninformative option's logit changes little.

    Raises:
        InvalidValueError: with no step, or logits, rates and outcomes of different lengths.
    """
    keys = sorted(logits)
    y = np.asarray(outcome, dtype=float)
    if (
        not keys
        or len(y) == 0
        or len(base_rates) != len(y)
        or any(len(logits[k]) != len(y) for k in keys)
    ):
        raise InvalidValueError("logits", "needs one logit per option and a rate per outcome")
    columns = [np.asarray(logits[k], dtype=float) for k in keys]
    rates = np.asarray([_logit(r) for r in base_rates])
    features = np.column_stack([*columns, rates, np.ones_like(y)])
    ridge = np.r_[np.ones(len(keys) + 1), 1e-6]
    w = _logistic(features, y, ridge, np.zeros(len(keys) + 2))
    return SuccessMap(
        weights={k: float(v) for k, v in zip(keys, w[:-2], strict=True)},
        rate=float(w[-2]),
        bias=float(w[-1]),
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
