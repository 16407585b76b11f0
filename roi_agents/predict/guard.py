"""`GuardedPredictor`: trust a learned predictor only where it has scored as well as the prior.

A checkpoint forecasts well the kinds of steps it learned from and can be badly wrong on others
(trained on MMLU alone, the learned predictor's Brier score on GSM8K is 41-49% above the per-option
base rate, and its 90% cost interval covers none of GSM8K's worked answers). The guard scores
both forecasts of every outcome it is told of, per (option, group), before the prior learns
from that outcome (prequential), and serves the prior's forecast of a part, success or cost, where
the learned one has scored worse on the recent outcomes there by more than their noise:

- success: the Brier score, ``(p - y)^2``;
- cost: the pinball loss of the log-cost at the p50, p90 and p99 (the plan's quantile and the
  hard cap's), summed over tokens and, when both forecasts and the spend have it, USD.

The test is one-sided and paired: over the last ``window`` outcomes of a key, the learned part is
overruled once the mean excess of its loss is more than ``z`` standard errors above zero, and
trusted again once it is back at zero. A forecast for an (option, group) with fewer than
``min_outcomes`` outcomes takes the verdict of the group over all its options (a checkpoint that
misjudges a kind of step for the options that ran misjudges it for the rest, and an option the
plan never picks is never found out on its own), else of the option over all groups, else
trusts the learned predictor. Every change of trust is logged and recorded as a
``roi.predictor.guard`` event on the current span.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from roi_agents.errors import InvalidValueError
from roi_agents.predict.base import Predictor
from roi_agents.predict.prior import LOG_OFFSET, PriorPredictor
from roi_agents.telemetry import names
from roi_agents.types import SKIP, Forecast, Quantile, Resource, Spend, Step

__all__ = ["GuardedPredictor", "Part", "Trust"]

logger = logging.getLogger("roi_agents.predict")

# The quantile levels scored.
_LEVELS: tuple[tuple[Quantile, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

Part = Literal["success", "cost"]
# (option, group, part); a None option stands for every option of the group, a None group for
# every group of the option.
_Key = tuple[str | None, str | None, Part]


class Trust(BaseModel):
    """Where the guard stands on one part of one (option, group).

    Attributes:
        option: the option; None for every option of the group.
        group: the steps' group; None for the option over all groups.
        part: ``success`` or ``cost``.
        outcomes: outcomes scored (at most the guard's ``window``).
        excess: the learned forecast's mean loss less the prior's (> 0: the learned is worse).
        trusted: whether the learned forecast of this part is served.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    option: str | None
    group: str | None
    part: Part
    outcomes: int
    excess: float
    trusted: bool


@dataclass(slots=True)
class _Scored:
    """The recent paired excess losses of one part of one key, and the verdict they give."""

    excess: deque[float]
    trusted: bool = True


def _pinball(y: float, q: float, level: float, censored: bool) -> float:
    """The pinball loss of quantile ``q``; of a censored ``y`` (at least ``y``), a lower bound."""
    if censored:
        return level * max(y - q, 0.0)
    return max(level * (y - q), (level - 1) * (y - q))


def _cost_loss(
    forecast: Forecast, spend: Spend, resources: Sequence[Resource], censored: bool
) -> float:
    loss = 0.0
    for resource in resources:
        cost = forecast.tokens if resource == "tokens" else forecast.usd
        assert cost is not None
        offset = LOG_OFFSET[resource]
        y = math.log(spend.get(resource) + offset)
        for name, level in _LEVELS:
            loss += _pinball(y, math.log(cost.at(name) + offset), level, censored)
    return loss


def _verdict(values: deque[float], z: float, trusted: bool) -> bool:
    """Whether to trust the learned part, given its recent excess losses and the verdict so far.

    Overruled once the mean excess is more than ``z`` standard errors above zero; trusted again
    only once it is back at zero or below, so that a verdict does not flip back and forth on
    the noise at the threshold.
    """
    n = len(values)
    mean = sum(values) / n
    if not trusted:
        return mean <= 0
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return not (mean > 0 and mean > z * math.sqrt(var / n))


def _keys(option: str, group: str | None, part: Part) -> list[_Key]:
    """The keys an outcome is scored under, in the order a forecast consults them."""
    if group is None:
        return [(option, None, part)]
    return [(option, group, part), (None, group, part), (option, None, part)]


class GuardedPredictor:
    """A learned predictor, overruled per (option, group) by the prior where it scores worse.

    Feed it every outcome with `observe` (the LangGraph `BudgetControllerNode` does, given a
    ``learner`` and a ``success``); it passes each on to the prior after scoring. Until a part of
    an (option, group) has ``min_outcomes`` outcomes, the group's verdict over every option
    holds, then the option's over every group; until one of them has as many, the learned
    forecast is served as it is.

    A step cut off at its cap (``truncated``) says only that the cost was at least what it
    spent: its cost is scored with the pinball loss's lower bound (each quantile below the spend
    is charged for falling short, none above it), its success, which the forecast made for a
    step run to the end, is not scored, and the prior learns nothing from it.

    Args:
        learned: the predictor to guard (a `LocalPredictor`, a `VLLMPredictor`, ...).
        prior: the fallback that learns from the outcomes (default: an empty `PriorPredictor`;
            pass one fitted on recorded history so it starts informed).
        min_outcomes: outcomes before a key has a say.
        window: the most recent outcomes per key that are scored.
        z: standard errors of excess loss that overrule the learned part. The test is repeated
            after every outcome, so at 2 noise sometimes overrules a checkpoint no worse than
            the prior; that costs little (the prior's forecast is then about as good), while a
            stricter test is slow to overrule a checkpoint gone wrong (at 3, a checkpoint of
            MMLU's misjudging GSM8K's success was overruled only after 200 outcomes).

    Example:
        >>> from roi_agents.types import Option, Spend, Step
        >>> overconfident = PriorPredictor(default_p_success=0.95)  # stands in for a checkpoint
        >>> guard = GuardedPredictor(overconfident)
        >>> step = Step(id="q", group="math", options=[Option(name="fast")])
        >>> for k in range(30):
        ...     guard.observe(step, "fast", Spend(output_tokens=100), success=float(k % 5 == 0))
        >>> [(t.part, t.trusted) for t in guard.trust() if t.option and t.group]  # priced at 512
        [('cost', False), ('success', False)]
        >>> round(guard.predict([step])[0].p_success, 2)  # the prior's (6 in 30, shrunk to 0.5)
        0.22
    """

    def __init__(
        self,
        learned: Predictor,
        prior: PriorPredictor | None = None,
        *,
        min_outcomes: int = 30,
        window: int = 200,
        z: float = 2.0,
    ) -> None:
        if min_outcomes < 2:
            raise InvalidValueError("min_outcomes", f"must be >= 2, got {min_outcomes}")
        if window < min_outcomes:
            raise InvalidValueError("window", f"must be >= min_outcomes, got {window}")
        if not z >= 0 or not math.isfinite(z):
            raise InvalidValueError("z", f"must be finite and >= 0, got {z}")
        self.learned = learned
        self.prior = prior if prior is not None else PriorPredictor()
        self.min_outcomes = min_outcomes
        self.window = window
        self.z = z
        self._scored: dict[_Key, _Scored] = {}

    def _trusted(self, option: str, group: str | None, part: Part) -> bool:
        """The first verdict with enough outcomes: own, group's, option's; else trust."""
        for key in _keys(option, group, part):
            scored = self._scored.get(key)
            if scored is not None and len(scored.excess) >= self.min_outcomes:
                return scored.trusted
        return True

    def _merge(
        self, steps: Sequence[Step], learned: list[Forecast], prior: list[Forecast]
    ) -> list[Forecast]:
        pairs = [(s, o) for s in steps for o in s.options if o.name != SKIP]
        if not len(pairs) == len(learned) == len(prior):
            msg = f"{len(learned)} learned and {len(prior)} prior forecasts for {len(pairs)} pairs"
            raise InvalidValueError("forecasts", msg)
        out = []
        for (step, option), mine, fallback in zip(pairs, learned, prior, strict=True):
            p_from = mine if self._trusted(option.name, step.group, "success") else fallback
            cost_from = mine if self._trusted(option.name, step.group, "cost") else fallback
            if p_from is mine and cost_from is mine:
                out.append(mine)
                continue
            source = (
                p_from.source
                if p_from is cost_from
                else f"{p_from.source} (success) + {cost_from.source} (cost)"
            )
            out.append(
                mine.model_copy(
                    update={
                        "p_success": p_from.p_success,
                        "tokens": cost_from.tokens,
                        "usd": cost_from.usd,
                        "source": source,
                    }
                )
            )
        return out

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        """The learned forecasts, with the prior's parts where the learned ones are distrusted."""
        return self._merge(steps, self.learned.predict(steps), self.prior.predict(steps))

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        """Async `predict`."""
        learned = await self.learned.apredict(steps)
        return self._merge(steps, learned, self.prior.predict(steps))

    def observe(
        self, step: Step, option: str, spend: Spend, success: float, *, truncated: bool = False
    ) -> None:
        """Score both forecasts of one outcome, then let the prior learn from it.

        Args:
            step: the step that ran.
            option: the option it ran with.
            spend: the real spend.
            success: 1 for success, 0 for failure, or a graded score in [0, 1].
            truncated: the step was cut off at its cap: its cost was at least ``spend``.

        Raises:
            InvalidValueError: on a success outside [0, 1] or an unknown option.
        """
        if not 0 <= success <= 1:
            raise InvalidValueError("success", f"must be in [0, 1], got {success}")
        if option == SKIP:
            return
        alone = step.model_copy(update={"options": [step.option(option)]})
        (mine,) = self.learned.predict([alone])
        (fallback,) = self.prior.predict([alone])
        resources: list[Resource] = ["tokens"]
        if mine.usd is not None and fallback.usd is not None and spend.usd > 0:
            resources.append("usd")
        cost_excess = _cost_loss(mine, spend, resources, truncated) - _cost_loss(
            fallback, spend, resources, truncated
        )
        self._score(option, step.group, "cost", cost_excess)
        if not truncated:
            success_excess = (mine.p_success - success) ** 2 - (fallback.p_success - success) ** 2
            self._score(option, step.group, "success", success_excess)
        self.prior.observe(step, option, spend, success, truncated=truncated)

    def _score(self, option: str, group: str | None, part: Part, excess: float) -> None:
        for key in _keys(option, group, part):
            scored = self._scored.setdefault(key, _Scored(deque(maxlen=self.window)))
            scored.excess.append(excess)
            if len(scored.excess) < self.min_outcomes:
                continue
            trusted = _verdict(scored.excess, self.z, scored.trusted)
            if trusted != scored.trusted:
                logger.info(
                    "GuardedPredictor %s the learned %s forecast of option %r, group %r "
                    "(%d outcomes)",
                    "trusts" if trusted else "overrules",
                    part,
                    key[0],
                    key[1],
                    len(scored.excess),
                )
                trace.get_current_span().add_event(
                    names.EVENT_GUARD,
                    {
                        names.OPTION: key[0] or "",
                        names.STEP_GROUP: key[1] or "",
                        names.EVENT_PART: part,
                        names.EVENT_TRUSTED: trusted,
                    },
                )
            scored.trusted = trusted

    def trust(self) -> list[Trust]:
        """Where the guard stands on every part of every (option, group) it has scored.

        Sorted by option (every option of a group first), then group (the option over all
        groups first), then part.
        """
        return [
            Trust(
                option=option,
                group=group,
                part=part,
                outcomes=len(scored.excess),
                excess=sum(scored.excess) / len(scored.excess),
                trusted=scored.trusted,
            )
            for (option, group, part), scored in sorted(
                self._scored.items(),
                key=lambda item: (item[0][0] or "", item[0][1] or "", item[0][2]),
            )
        ]
