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
distrusted while the mean excess of its loss is more than ``z`` standard errors above zero, and
trusted again when that no longer holds. A key with fewer than ``min_outcomes`` outcomes uses its
option's outcomes over all groups; an option with fewer trusts the learned predictor. Every change
of trust is logged and recorded as a ``roi.predictor.guard`` event on the current span.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from roi_agents.errors import InvalidValueError
from roi_agents.predict.base import Predictor
from roi_agents.predict.prior import PriorPredictor
from roi_agents.telemetry import names
from roi_agents.types import SKIP, Forecast, Quantile, Resource, Spend, Step

__all__ = ["GuardedPredictor", "Trust"]

logger = logging.getLogger("roi_agents.predict")

# The quantile levels scored, and the offsets of the logs (zero costs have a finite log).
_LEVELS: tuple[tuple[Quantile, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
_OFFSET: dict[Resource, float] = {"tokens": 1.0, "usd": 1e-6}

_Key = tuple[str, str | None]


class Trust(BaseModel):
    """Where the guard stands on one (option, group): ``group`` is None for the option overall.

    Attributes:
        outcomes: outcomes scored (at most the guard's ``window``).
        success_excess: the learned p_success's mean Brier score less the prior's (> 0: worse).
        cost_excess: the same for the cost quantiles' pinball loss of log-cost.
        success_trusted: whether the learned p_success is served.
        cost_trusted: whether the learned cost forecast is served.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    option: str
    group: str | None
    outcomes: int
    success_excess: float
    cost_excess: float
    success_trusted: bool
    cost_trusted: bool


@dataclass(slots=True)
class _Scores:
    """The recent paired excess losses of one key, and the verdicts they give."""

    success: deque[float]
    cost: deque[float]
    success_trusted: bool = True
    cost_trusted: bool = True


def _pinball(y: float, q: float, level: float) -> float:
    return max(level * (y - q), (level - 1) * (y - q))


def _cost_loss(forecast: Forecast, spend: Spend, resources: Sequence[Resource]) -> float:
    loss = 0.0
    for resource in resources:
        cost = forecast.tokens if resource == "tokens" else forecast.usd
        assert cost is not None
        y = math.log(spend.get(resource) + _OFFSET[resource])
        for name, level in _LEVELS:
            loss += _pinball(y, math.log(cost.at(name) + _OFFSET[resource]), level)
    return loss


def _excess(values: deque[float], z: float) -> bool:
    """Whether the mean of ``values`` is more than ``z`` standard errors above zero."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean > z * math.sqrt(var / n) and mean > 0


class GuardedPredictor:
    """A learned predictor, overruled per (option, group) by the prior where it scores worse.

    Feed it every outcome with `observe` (the LangGraph `BudgetControllerNode` does, given a
    ``learner`` and a ``success``); it passes each on to the prior after scoring. Until an
    (option, group) has ``min_outcomes`` outcomes, the learned forecasts are served as they are.

    Args:
        learned: the predictor to guard (a `LocalPredictor`, a `VLLMPredictor`, ...).
        prior: the fallback that learns from the outcomes (default: an empty `PriorPredictor`;
            pass one fitted on recorded history so it starts informed).
        min_outcomes: outcomes before a key (else its option) has a say.
        window: the most recent outcomes per key that are scored.
        z: standard errors of excess loss that overrule the learned part.

    Example:
        >>> from roi_agents.types import Option, Spend, Step
        >>> overconfident = PriorPredictor(default_p_success=0.95)  # stands in for a checkpoint
        >>> guard = GuardedPredictor(overconfident)
        >>> step = Step(id="q", group="math", options=[Option(name="fast")])
        >>> for k in range(30):
        ...     guard.observe(step, "fast", Spend(output_tokens=100), success=float(k % 5 == 0))
        >>> [(t.group, t.success_trusted) for t in guard.trust()]
        [(None, False), ('math', False)]
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
        self._scores: dict[_Key, _Scores] = {}

    def _verdict(self, option: str, group: str | None) -> _Scores | None:
        """The scores that decide for (option, group): its own, else its option's, else none."""
        for key in ((option, group), (option, None)):
            scores = self._scores.get(key)
            if scores is not None and len(scores.success) >= self.min_outcomes:
                return scores
        return None

    def _merge(
        self, steps: Sequence[Step], learned: list[Forecast], prior: list[Forecast]
    ) -> list[Forecast]:
        pairs = [(s, o) for s in steps for o in s.options if o.name != SKIP]
        if not len(pairs) == len(learned) == len(prior):
            msg = f"{len(learned)} learned and {len(prior)} prior forecasts for {len(pairs)} pairs"
            raise InvalidValueError("forecasts", msg)
        out = []
        for (step, option), mine, fallback in zip(pairs, learned, prior, strict=True):
            scores = self._verdict(option.name, step.group)
            if scores is None or (scores.success_trusted and scores.cost_trusted):
                out.append(mine)
                continue
            p_from = mine if scores.success_trusted else fallback
            cost_from = mine if scores.cost_trusted else fallback
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

    def observe(self, step: Step, option: str, spend: Spend, success: float) -> None:
        """Score both forecasts of one outcome, then let the prior learn from it.

        Args:
            step: the step that ran.
            option: the option it ran with.
            spend: the real spend.
            success: 1 for success, 0 for failure, or a graded score in [0, 1].

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
        success_excess = (mine.p_success - success) ** 2 - (fallback.p_success - success) ** 2
        cost_excess = _cost_loss(mine, spend, resources) - _cost_loss(fallback, spend, resources)
        for key in {(option, step.group), (option, None)}:
            scores = self._scores.setdefault(
                key, _Scores(deque(maxlen=self.window), deque(maxlen=self.window))
            )
            scores.success.append(success_excess)
            scores.cost.append(cost_excess)
            if len(scores.success) >= self.min_outcomes:
                self._judge(key, scores)
        self.prior.observe(step, option, spend, success)

    def _judge(self, key: _Key, scores: _Scores) -> None:
        success = not _excess(scores.success, self.z)
        cost = not _excess(scores.cost, self.z)
        for part, was, now in (
            ("success", scores.success_trusted, success),
            ("cost", scores.cost_trusted, cost),
        ):
            if was == now:
                continue
            option, group = key
            state = "trusts" if now else "overrules"
            logger.info(
                "GuardedPredictor %s the learned %s forecast of option %r, group %r (%d outcomes)",
                state,
                part,
                option,
                group,
                len(scores.success),
            )
            trace.get_current_span().add_event(
                names.EVENT_GUARD,
                {
                    names.OPTION: option,
                    names.STEP_GROUP: group or "",
                    names.EVENT_PART: part,
                    names.EVENT_TRUSTED: now,
                },
            )
        scores.success_trusted, scores.cost_trusted = success, cost

    def trust(self) -> list[Trust]:
        """Where the guard stands on every (option, group) it has scored, option level first."""
        return [
            Trust(
                option=option,
                group=group,
                outcomes=len(scores.success),
                success_excess=sum(scores.success) / len(scores.success),
                cost_excess=sum(scores.cost) / len(scores.cost),
                success_trusted=scores.success_trusted,
                cost_trusted=scores.cost_trusted,
            )
            for (option, group), scores in sorted(
                self._scores.items(), key=lambda item: (item[0][0], item[0][1] or "")
            )
        ]
