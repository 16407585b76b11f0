"""The learned predictor's input and output conventions, shared by every way of running it.

Input: one text per (step, option): the option's tags (or its name) in brackets, then the step's
text, e.g. ``"[deep] Prove that ..."``. Output: the checkpoint's regression head, raw:

* 0: the success logit;
* 1, 2: the mean and the log of the spread of ``log(output_tokens + 1)``;
* 3, 4 (optional): the same for ``log(usd + 1e-6)``;
* then (optional) an option the checkpoint was trained on has outputs of its own: the ones
  above, labelled ``LABEL[KEY]`` by `option_key` in the checkpoint's ``id2label``. `own_row`
  reads them in place of the shared ones; an option without them (one the checkpoint has not
  seen) reads the shared ones. ``roi-agents train`` gives each option a success logit of its own
  (``success_logit[KEY]``): a step's text reads differently for each option only by its tag, so
  one shared row of weights ranks steps alike for every option, while a row per option learns
  where that option fails (GSM8K, frozen MiniLM: calibrated forecasts rank GPT-4's outcomes at
  AUC 0.635 with its own row against 0.585 with the shared one). Cost rows stay shared: fitted
  per option on frozen features they spread GPT-4's one-letter MMLU answers and its worked GSM8K
  ones over one row, and the cost tails of GSM8K forecasts grew a hundredfold.

A step text longer than 512 characters is cut to its first and last 256, joined by `` ... ``
(the question of a long prompt is often at its end), so that training, `LocalPredictor` and a
vLLM server all read the same input, well within the model's positions.

The forecast adds the prompt's tokens when the step knows them, and never lets the output go past
the option's ``max_tokens``. When the step knows its prompt's size and the option has list prices,
the USD forecast is the token forecast at those prices (outputs 3 and 4 guess the prompt's size
from a cut text). Without a `Calibration` the cost is log-normal and ``p_success`` the
sigmoid of the logit; with one, both go through its maps. Every output must be finite: anything
else raises, so that a caller can fall back instead of passing a bad forecast on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from roi_agents.errors import InvalidValueError
from roi_agents.predict.calibration import Calibration, ResidualQuantiles
from roi_agents.types import SKIP, CostForecast, Forecast, Option, Step

__all__ = [
    "HEAD_LABELS",
    "LOG_SIGMA_RANGE",
    "forecasts",
    "head_labels",
    "input_text",
    "lognormal_cost",
    "lognormal_quantile",
    "model_input",
    "option_key",
    "own_columns",
    "own_keys",
    "own_row",
    "pairs",
    "spread",
    "success_probability",
]

HEAD_LABELS = (
    "success_logit",
    "log_tokens_mean",
    "log_tokens_log_sigma",
    "log_usd_mean",
    "log_usd_log_sigma",
)
_Z90 = 1.2815515655446004
_Z99 = 2.3263478740408408
# A spread beyond e^3 on the log scale says nothing; beyond e^-5 it claims too much.
LOG_SIGMA_RANGE = (-5.0, 3.0)
_HALF_TEXT = 256


def head_labels(usd: bool, options: Sequence[str] = ()) -> tuple[str, ...]:
    """A trained head's labels: success and tokens, USD when ``usd``, a success per option.

    >>> head_labels(False, ["deep"])
    ('success_logit', 'log_tokens_mean', 'log_tokens_log_sigma', 'success_logit[deep]')
    """
    return (*HEAD_LABELS[: 5 if usd else 3], *(f"{HEAD_LABELS[0]}[{key}]" for key in options))


def own_keys(labels: Sequence[str]) -> list[str]:
    """The option keys that have outputs of their own in a head's labels."""
    return sorted({label[label.index("[") + 1 : -1] for label in labels if label.endswith("]")})


def own_columns(labels: Sequence[str], key: str) -> list[int]:
    """Per shared output, the column of option ``key``'s own one (the shared one where none)."""
    index = {label: i for i, label in enumerate(labels)}
    shared = [label for label in labels if label in HEAD_LABELS]
    return [index.get(f"{label}[{key}]", i) for i, label in enumerate(shared)]


def own_row(row: Sequence[float], key: str, labels: Sequence[str] = ()) -> list[float]:
    """The outputs one (step, option) reads: the option's own where it has them, else shared.

    ``labels`` are the head's (`head_labels`); without them the row is read as it is.

    >>> own_row([0.1, 2.0, -1.0, 0.7], "deep", head_labels(False, ["deep"]))
    [0.7, 2.0, -1.0]
    """
    if not labels:
        return list(row)
    if len(row) != len(labels):
        msg = f"{len(row)} outputs for a head of {len(labels)} ({', '.join(labels)})"
        raise InvalidValueError("outputs", msg)
    return [row[i] for i in own_columns(labels, key)]


def model_input(tags: Sequence[str], text: str) -> str:
    """The model's input: ``[tag]`` per tag, then the text (cut when longer than 512 characters).

    >>> model_input(("deep",), "Prove it.")
    '[deep] Prove it.'
    """
    if len(text) > 2 * _HALF_TEXT:
        text = f"{text[:_HALF_TEXT]} ... {text[-_HALF_TEXT:]}"
    return f"{' '.join(f'[{tag}]' for tag in tags)} {text}".strip()


def option_key(option: Option) -> str:
    """The option as the model reads it: its tags, or else its name (keys calibration maps)."""
    return " ".join(option.tags or (option.name,))


def input_text(step: Step, option: Option) -> str:
    """The text the model reads for one (step, option): its tags, or else its name."""
    return model_input(option.tags or (option.name,), step.text)


def pairs(steps: Sequence[Step]) -> list[tuple[Step, Option]]:
    """Every (step, option) to forecast, skip excluded, in step then option order."""
    return [(step, option) for step in steps for option in step.options if option.name != SKIP]


def spread(log_sigma: float) -> float:
    """The spread on the log scale a head output stands for (read within `LOG_SIGMA_RANGE`)."""
    return math.exp(min(max(log_sigma, LOG_SIGMA_RANGE[0]), LOG_SIGMA_RANGE[1]))


def success_probability(logit: float) -> float:
    """The raw probability of success a success logit stands for."""
    return 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0


def lognormal_cost(
    mu: float,
    sigma: float,
    offset: float,
    shift: float = 0.0,
    ceiling: float = math.inf,
    residuals: ResidualQuantiles | None = None,
    *,
    count: bool = False,
) -> CostForecast:
    """The forecast of a cost whose ``log(cost + offset)`` has mean ``mu`` and spread ``sigma``.

    The cost is ``shift`` (a part known exactly, such as the prompt's tokens) plus the modelled
    part, which is clamped to ``[0, ceiling]``. Its quantiles are those of the log-normal, or at
    the standardised ``residuals`` of a calibration when given. A ``count`` (tokens) is whole:
    its quantiles are rounded to the nearest whole number, so a cost pinned near one token has
    a p99 of exactly one token, not 0.99 of one, which as a hard cap would cut off every such
    call. The mean is not rounded; E[min(X, c)] <= min(E[X], c), so the clamped log-normal mean
    errs high, as a cost forecast should.
    """

    def at(z: float) -> float:
        return lognormal_quantile(mu, sigma, offset, z, shift, ceiling, count=count)

    if residuals is None:
        mean = shift + _modelled(mu + sigma**2 / 2, offset, ceiling)
        return CostForecast(mean=mean, p50=at(0.0), p90=at(_Z90), p99=at(_Z99))
    grid = residuals.midpoints()
    return CostForecast(
        mean=shift + sum(_modelled(mu + z * sigma, offset, ceiling) for z in grid) / len(grid),
        p50=at(residuals.at(0.5)),
        p90=at(residuals.at(0.9)),
        p99=at(residuals.at(0.99)),
    )


def lognormal_quantile(
    mu: float,
    sigma: float,
    offset: float,
    z: float,
    shift: float = 0.0,
    ceiling: float = math.inf,
    *,
    count: bool = False,
) -> float:
    """One quantile of `lognormal_cost`'s forecast: the cost at standardised log-cost ``z``."""
    value = _modelled(mu + z * sigma, offset, ceiling)
    return shift + (round(value) if count else value)


def _modelled(log: float, offset: float, ceiling: float) -> float:
    """The modelled part of a cost whose ``log(cost + offset)`` is ``log``, clamped."""
    return min(max(math.exp(min(log, 700.0)) - offset, 0.0), ceiling)


def _checked(outputs: Sequence[float]) -> list[float]:
    values = [float(x) for x in outputs]
    if len(values) not in (3, 5):
        msg = f"expected 3 or 5 head outputs (a head with more needs its labels), got {len(values)}"
        raise InvalidValueError("outputs", msg)
    if not all(math.isfinite(x) for x in values):
        raise InvalidValueError("outputs", f"non-finite head outputs {values}")
    if abs(values[1]) > 50 or (len(values) >= 5 and abs(values[3]) > 50):
        raise InvalidValueError("outputs", f"log-cost out of any plausible range: {values}")
    return values


def _forecast(
    step: Step,
    option: Option,
    values: list[float],
    source: str,
    calibration: Calibration | None,
    logits: Mapping[str, float],
) -> Forecast:
    """One validated `Forecast` from a checked row of raw head outputs, calibrated when given.

    ``logits`` holds the raw success logits of the step's options by `option_key`, this
    option's included (the calibration's option-set maps read them).
    """
    p_success = success_probability(values[0])
    ceiling = float(option.max_tokens) if option.max_tokens is not None else math.inf
    tokens_z = usd_z = None
    if calibration is not None:
        key = option_key(option)
        maps = calibration.maps(key, step.group)
        p_success = calibration.success.p(key, step.group, logits, step.input_tokens)
        tokens_z, usd_z = maps.tokens, maps.usd
    shift = float(step.input_tokens or 0)
    tokens = lognormal_cost(values[1], spread(values[2]), 1.0, shift, ceiling, tokens_z, count=True)
    usd = None
    if option.priced and step.input_tokens is not None:
        usd = option.usd_forecast(tokens, step.input_tokens)
    elif len(values) >= 5:
        usd = lognormal_cost(values[3], spread(values[4]), 1e-6, residuals=usd_z)
    return Forecast(
        step_id=step.id,
        option=option.name,
        p_success=p_success,
        tokens=tokens,
        usd=usd,
        source=source,
    )


def forecasts(
    steps: Sequence[Step],
    rows: Sequence[Sequence[float]],
    *,
    source: str,
    calibration: Calibration | None = None,
    labels: Sequence[str] = (),
) -> list[Forecast]:
    """The forecasts for `pairs(steps)` from their rows of raw head outputs, in that order.

    Each step's forecasts see the raw success logits of all its options (option-set maps).
    ``labels`` name the head's outputs (`own_row`); without them, the calibration's.

    Raises:
        InvalidValueError: when a row is malformed or rows and pairs do not line up.
    """
    todo = pairs(steps)
    if len(rows) != len(todo):
        raise InvalidValueError("outputs", f"{len(rows)} rows for {len(todo)} (step, option)")
    labels = labels or (calibration.labels if calibration is not None else ())
    checked = [
        _checked(own_row(row, option_key(option), labels))
        for row, (_, option) in zip(rows, todo, strict=True)
    ]
    logits: dict[int, dict[str, float]] = {}
    for (step, option), values in zip(todo, checked, strict=True):
        logits.setdefault(id(step), {})[option_key(option)] = values[0]
    return [
        _forecast(step, option, values, source, calibration, logits[id(step)])
        for (step, option), values in zip(todo, checked, strict=True)
    ]
