"""The learned predictor's input and output conventions, shared by every way of running it.

Input: one text per (step, option): the option's tags (or its name) in brackets, then the step's
text, e.g. ``"[deep] Prove that ..."``. Output: the checkpoint's regression head, raw:

* 0: the success logit;
* 1, 2: the mean and the log of the spread of ``log(output_tokens + 1)``;
* 3, 4 (optional): the same for ``log(usd + 1e-6)``.

The forecast adds the prompt's tokens when the step knows them, and never lets the output go past
the option's ``max_tokens``. Every output must be finite: anything else raises, so that a caller
can fall back instead of passing a bad forecast on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from roi_agents.errors import InvalidValueError
from roi_agents.types import SKIP, CostForecast, Forecast, Option, Step

__all__ = ["HEAD_LABELS", "forecast_from_outputs", "input_text", "pairs"]

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
_LOG_SIGMA_RANGE = (-5.0, 3.0)


def input_text(step: Step, option: Option) -> str:
    """The text the model reads for one (step, option)."""
    tags = " ".join(f"[{tag}]" for tag in (option.tags or (option.name,)))
    return f"{tags} {step.text}".strip()


def pairs(steps: Sequence[Step]) -> list[tuple[Step, Option]]:
    """Every (step, option) to forecast, skip excluded, in step then option order."""
    return [(step, option) for step in steps for option in step.options if option.name != SKIP]


def _lognormal(
    mu: float, log_sigma: float, offset: float, shift: float, ceiling: float
) -> CostForecast:
    sigma = math.exp(min(max(log_sigma, _LOG_SIGMA_RANGE[0]), _LOG_SIGMA_RANGE[1]))

    def at(z: float) -> float:
        return shift + min(max(math.exp(mu + z * sigma) - offset, 0.0), ceiling)

    mean = shift + min(max(math.exp(mu + sigma**2 / 2) - offset, 0.0), ceiling)
    return CostForecast(mean=mean, p50=at(0.0), p90=at(_Z90), p99=at(_Z99))


def forecast_from_outputs(
    step: Step, option: Option, outputs: Sequence[float], *, source: str
) -> Forecast:
    """Turn one row of raw head outputs into a validated `Forecast`.

    Raises:
        InvalidValueError: on fewer than 3 outputs, a non-finite one, or a cost that overflows.
    """
    values = [float(x) for x in outputs]
    if len(values) < 3:
        msg = f"expected at least 3 head outputs, got {len(values)}"
        raise InvalidValueError("outputs", msg)
    if not all(math.isfinite(x) for x in values):
        raise InvalidValueError("outputs", f"non-finite head outputs {values}")
    if abs(values[1]) > 50 or (len(values) >= 5 and abs(values[3]) > 50):
        raise InvalidValueError("outputs", f"log-cost out of any plausible range: {values}")
    logit = values[0]
    p_success = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
    ceiling = float(option.max_tokens) if option.max_tokens is not None else math.inf
    tokens = _lognormal(values[1], values[2], 1.0, float(step.input_tokens or 0), ceiling)
    usd = _lognormal(values[3], values[4], 1e-6, 0.0, math.inf) if len(values) >= 5 else None
    return Forecast(
        step_id=step.id,
        option=option.name,
        p_success=p_success,
        tokens=tokens,
        usd=usd,
        source=source,
    )
