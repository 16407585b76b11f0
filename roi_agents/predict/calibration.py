"""Calibration of the learned predictor, fitted on held-out data and applied client-side.

Stored as ``calibration.json`` beside the checkpoint (the server returns raw head outputs;
`LocalPredictor` and `VLLMPredictor` apply it):

* ``p_success``: the logit of the option's base rate in the step's group plus a weighted sum of the
  raw success logits of the step's options, each centred on its mean in the group (`SuccessMap`; the
  base rate's logit has a fitted weight too, near 1, so that the mean forecast of spread-out steps
  keeps the rate). The base rate is the option's success rate within the step's group (a dataset, a
  subject) on the fine-tuning rows, shrunk towards the option's rate like `PriorPredictor` shrinks a
  group; the model reads one step at a time and cannot count how often an option succeeds on a whole
  subject. The centres are the mean raw logits on the held-out rows, shrunk the same way (a group's
  only where it has a rate of its own). So the level of a forecast in a known group (how often an
  option succeeds there, and how much a dearer option gains) comes from the fine-tuning rows, four
  times as many as the held-out ones, and the held-out rows only fit how far a step's logits move it
  from that level (on all of ``shared/data`` the held-out rows put GPT-4's gain over Mixtral on MMLU
  at 0.085, the fine-tuning rows at 0.13 and the test rows at 0.16). A step in a group the
  fine-tuning rows lack (a subject never trained on) starts from the option's rate on the held-out
  rows, the rows its centre comes from, and its logits tell how its group differs from those: a
  level from other rows than the centre would shift every such forecast by the difference between
  the two sets of groups, which no weight can undo.
  Reading every option's logit matters because the controller acts on differences between
  options (is the dear one worth it here?): calibrating each option on its own logit can leave
  those differences pointing the wrong way. Maps are fitted per option set (the options a step
  offers), per option (its own logit only) and for all rows, and the most specific one that
  applies is used. One to a dozen weights with a unit ridge: a weight stays near zero unless
  the held-out rows back it (isotonic regression was tried: on ~500 held-out rows per option
  its steps added noise). The maps also weigh the step's prompt size (``log(input_tokens + 1)``
  less its mean in the group, `PROMPT`): a mean-pooled encoder hardly sees how long its input
  is, and a longer problem is often a harder one (GSM8K, a probe on MiniLM-L6: held-out AUC
  within Mixtral 0.563 without it, 0.617 with it; Brier 0.8% and 2.5% below the base rate);
* cost (`Maps`): split-conformal quantiles of the standardised residual
  ``(log cost - mean) / spread`` per resource, for all rows, per option and per (group,
  option). The forecast's quantile at level ``a`` is ``exp(mean + spread * z[a])``, where
  ``z[a]`` is the ``ceil((n + 1) a)``-th smallest of the ``n`` held-out residuals (the
  ``floor``-th below the median), so a new step's cost falls below it with probability at least
  ``a`` when steps are exchangeable. Where a group's rows are too few for that rank (the 99th
  percentile needs 99), its option's quantile, fitted on more rows, bounds it: the p99 sets
  the step's hard cap, and a cap at the largest of 50 residuals cut off about one step in 50.
  The forecast's mean averages the held-out residuals' grid.
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
    "PROMPT",
    "Calibration",
    "Composition",
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
# The key it reads the step's prompt size under: log(input tokens + 1) less its centre.
PROMPT = "(prompt)"
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
        midpoints: list[float] = np.interp(_MIDPOINTS, LEVELS, self.z).tolist()
        return midpoints


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
    """``p_success = sigmoid(level * logit(base rate) + sum of weights[k] * centred logit[k])``.

    Attributes:
        weights: per option key, the weight of that option's raw success logit for the same
            step, less its centre (`SuccessCalibration.centre`); the key `OWN` stands for the
            forecast option's own logit, `PROMPT` for the step's centred prompt size.
        level: the weight of the base rate's logit. Above 1 where the steps' logits spread
            widely about their centre: the mean of the sigmoid of a spread is nearer one half
            than the sigmoid of its mean, and the level's logit must sit further out for the
            mean forecast to keep the base rate.

    A map written by an earlier release (with ``bias`` and ``rate``) is refused, not misread:
    re-calibrate the checkpoint (``roi-agents train --calibrate-only``).
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    weights: Annotated[dict[str, float], Field(min_length=1)]
    level: float = 1.0

    def p_success(self, key: str, centred: Mapping[str, float], base_rate: float) -> float | None:
        """The calibrated probability of option ``key``; ``None`` without a logit it reads.

        Args:
            key: the forecast option's key.
            centred: the step's options' raw success logits less their centres, by key, and its
                centred prompt size under `PROMPT`.
            base_rate: the option's base rate in the step's group.
        """
        own = {OWN: centred[key]} if key in centred else {}
        found = {**centred, **own}
        if not self.weights.keys() <= found.keys():
            return None
        z = self.level * _logit(base_rate) + sum(w * found[k] for k, w in self.weights.items())
        return float(_expit(np.asarray(z)))


class SuccessCalibration(BaseModel):
    """The success maps, and the base rates and centres they read; see the module's docstring.

    Unfitted (every rate 0.5, every centre 0), it gives the raw probability.

    Attributes:
        shared: the map for any option (reads its own logit).
        by_option: per option key, its own map (reads its own logit), where the option had at
            least `MIN_ROWS` calibration rows.
        by_set: per `option_set`, per option key, a map that reads every option's logit, where
            at least `MIN_ROWS` calibration steps offered exactly that set.
        option_rates: per option key, its success rate on the fine-tuning rows (the Brier
            score's baseline).
        group_rates: per step group, per option key, its rate on the fine-tuning rows there,
            shrunk towards the option's.
        held_out_rates: per option key, its success rate on the held-out rows: the level of a
            step in a group without a rate of its own, which `option_centres` (the same rows'
            mean logit) centres, so that level and centre describe the same steps.
        option_centres: per option key, its mean raw success logit on the held-out rows.
        group_centres: per step group, per option key, its mean there, shrunk towards the
            option's, where the group has a rate of its own.
        prompt_centre: the mean ``log(input_tokens + 1)`` of the held-out rows; ``None`` when
            they had no prompt sizes (the maps then read none).
        group_prompt_centres: per step group, its mean there.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    shared: SuccessMap = SuccessMap(weights={OWN: 1.0})
    by_option: dict[str, SuccessMap] = {}
    by_set: dict[str, dict[str, SuccessMap]] = {}
    option_rates: dict[str, float] = {}
    group_rates: dict[str, dict[str, float]] = {}
    held_out_rates: dict[str, float] = {}
    option_centres: dict[str, float] = {}
    group_centres: dict[str, dict[str, float]] = {}
    prompt_centre: float | None = None
    group_prompt_centres: dict[str, float] = {}

    def base_rate(self, key: str, group: str | None) -> float:
        """Option ``key``'s base rate in ``group``.

        The group's rate; else the option's on the held-out rows; else `option_rate`.
        """
        found = _lookup(self.group_rates, self.held_out_rates, key, group)
        return self.option_rate(key) if found is None else found

    def option_rate(self, key: str) -> float:
        """Option ``key``'s rate on the fine-tuning rows, or the mean of the options' rates."""
        found = self.option_rates.get(key)
        if found is None:
            rates = list(self.option_rates.values())
            found = float(np.mean(rates)) if rates else 0.5
        return found

    def centre(self, key: str, group: str | None) -> float:
        """Option ``key``'s centre in ``group``: the group's, the option's, or 0."""
        found = _lookup(self.group_centres, self.option_centres, key, group)
        return 0.0 if found is None else found

    def centred(
        self, group: str | None, logits: Mapping[str, float], input_tokens: int | None = None
    ) -> dict[str, float]:
        """The raw success logits of a step in ``group`` less their centres, by key.

        Also its prompt size, ``log(input_tokens + 1)`` less its group's centre (the overall
        one for a step without a group), under `PROMPT`. It is 0 when the size or the centre is
        unknown: in a group the held-out rows lack, a prompt's size against other groups' says
        how the groups' prompts differ, not how hard the step is.
        """
        prompt = 0.0
        centre = self.prompt_centre if group is None else self.group_prompt_centres.get(group)
        if input_tokens is not None and centre is not None:
            prompt = math.log(input_tokens + 1) - centre
        return {k: v - self.centre(k, group) for k, v in logits.items()} | {PROMPT: prompt}

    def p(
        self,
        key: str,
        group: str | None,
        logits: Mapping[str, float],
        input_tokens: int | None = None,
    ) -> float:
        """The calibrated ``p_success`` of option ``key`` for a step in ``group``.

        Args:
            key: the option's key.
            group: the step's group.
            logits: the raw success logits of the step's options, by key (``key``'s included).
            input_tokens: the step's prompt size, when known.
        """
        rate = self.base_rate(key, group)
        centred = self.centred(group, logits, input_tokens)
        for candidate in (
            self.by_set.get(option_set(logits), {}).get(key),
            self.by_option.get(key),
            self.shared,
        ):
            found = candidate.p_success(key, centred, rate) if candidate is not None else None
            if found is not None:
                return found
        raise InvalidValueError("logits", f"no success logit for option {key!r}")


def _lookup(
    by_group: Mapping[str, Mapping[str, float]],
    by_option: Mapping[str, float],
    key: str,
    group: str | None,
) -> float | None:
    found = by_group.get(group, {}).get(key) if group is not None else None
    return by_option.get(key) if found is None else found


class Composition(BaseModel):
    """How far a `ComposedPredictor` lets the learned forecasts move the prior's level.

    Per option key (`OWN` for any option without a weight of its own), the weight of the
    step's learned deviation from its group's running mean: of the success logit, and of the
    log of the median output tokens. Fitted on the held-out rows with the level of a prior
    fitted on the fine-tuning rows (`roi_agents.predict.composed.fit_composition`); a weight
    near 0 says the learned model's ranking of steps within a group did not help there.

    Attributes:
        success: per option key, the weight of the success deviation.
        cost: per option key, the weight of the cost deviation.
        rows: held-out (step, option) rows the weights were fitted on (0: the defaults).
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, extra="forbid")

    success: dict[str, float] = {OWN: 1.0}
    cost: dict[str, float] = {OWN: 1.0}
    rows: Annotated[int, Field(ge=0)] = 0

    def weight(self, part: str, key: str) -> float:
        """The weight of ``part`` (``success`` or ``cost``) for option ``key``."""
        table = self.success if part == "success" else self.cost
        return table.get(key, table.get(OWN, 1.0))


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
        labels: the head's output labels (its ``id2label``, see `roi_agents.predict.head`), so
            that a client of a server can read rows with per-option outputs; empty: the
            standard 3 or 5.
        composition: the weights a `ComposedPredictor` gives the learned deviations (the
            defaults for a checkpoint calibrated by an earlier release).
    """

    success: SuccessCalibration
    by_option: dict[str, Maps] = {}
    by_group: dict[str, dict[str, Maps]] = {}
    labels: tuple[str, ...] = ()
    composition: Composition = Composition()

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
            raise InvalidValueError(
                "calibration",
                f"{path}: {error}\n(re-fit it: roi-agents train --calibrate-only --out "
                f"{path.parent} --data FILE ..., with the flags the checkpoint was trained with)",
            ) from None


def _expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow


def _logistic(features: np.ndarray, y: np.ndarray, offset: np.ndarray, ridge: float) -> np.ndarray:
    """Weights of a logistic regression with the fixed ``offset`` and an L2 penalty (Newton)."""

    def loss(w: np.ndarray) -> float:
        z = offset + features @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + ridge * (w @ w) / 2)

    w = np.zeros(features.shape[1])
    for _ in range(100):  # Newton's method, step halved until the loss goes down
        p = _expit(offset + features @ w)
        gradient = features.T @ (p - y) + ridge * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + ridge * np.eye(w.size)
        step = np.linalg.solve(hessian, gradient)
        before, scale = loss(w), 1.0
        while scale > 1e-6 and loss(w - scale * step) > before:
            scale /= 2
        w = w - scale * step
        if np.abs(scale * step).max() < 1e-9:
            break
    return w


def fit_success(
    centred: Mapping[str, Sequence[float]], base_rates: Sequence[float], outcome: Sequence[float]
) -> SuccessMap:
    """Fit a `SuccessMap` on calibration steps.

    Args:
        centred: per option key (`OWN` for the forecast option's own), the raw success logit
            of each step less its centre.
        base_rates: the option's base rate in each step's group: the level each forecast
            starts from (no intercept: the held-out rows cannot move a step at its centre
            from an even rate).
        outcome: the option's score on each step.

    The weights have a unit L2 penalty, the level's pulls it towards 1: with a few hundred
    steps a weight stays near zero unless the data back it, so an uninformative option's
    logit changes little.

    Raises:
        InvalidValueError: with no step, or logits, rates and outcomes of different lengths.
    """
    keys = sorted(centred)
    y = np.asarray(outcome, dtype=float)
    if (
        not keys
        or len(y) == 0
        or len(base_rates) != len(y)
        or any(len(centred[k]) != len(y) for k in keys)
    ):
        raise InvalidValueError("logits", "needs one logit per option and a rate per outcome")
    offset = np.asarray([_logit(r) for r in base_rates])
    features = np.column_stack([*(np.asarray(centred[k], dtype=float) for k in keys), offset])
    w = _logistic(features, y, offset, ridge=1.0)
    return SuccessMap(
        weights={k: float(v) for k, v in zip(keys, w[:-1], strict=True)}, level=1.0 + float(w[-1])
    )


def conformal_quantiles(
    residuals: Sequence[float], beyond: ResidualQuantiles | None = None
) -> ResidualQuantiles:
    """Split-conformal quantiles of held-out residuals at every level of `LEVELS`.

    Args:
        residuals: the held-out residuals.
        beyond: quantiles fitted on more rows (an option's, for a group's), for the levels
            that ``residuals`` are too few to bound (``ceil((n + 1) a) > n`` above the median,
            ``floor((n + 1) a) < 1`` below): those take the more extreme of the extreme
            residual and ``beyond``'s quantile. Without it, the extreme residual (with 50 rows
            the largest stands for the 99th percentile, and about one new step in 50 is cut
            off at a cap set there).

    Raises:
        InvalidValueError: with no residual or a non-finite one.
    """
    values = np.sort(np.asarray(residuals, dtype=float))
    n = len(values)
    if n == 0 or not np.isfinite(values).all():
        raise InvalidValueError("residuals", "needs at least one residual, all finite")
    z = []
    for i, level in enumerate(LEVELS):
        rank = math.ceil((n + 1) * level) if level >= 0.5 else math.floor((n + 1) * level)
        value = float(values[min(max(rank, 1), n) - 1])
        if beyond is not None and rank > n:
            value = max(value, beyond.z[i])
        elif beyond is not None and rank < 1:
            value = min(value, beyond.z[i])
        z.append(value)
    return ResidualQuantiles(z=tuple(z))
