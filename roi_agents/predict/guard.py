"""`GuardedPredictor`: trust a learned predictor only where it has scored as well as the prior.

A checkpoint forecasts well the kinds of steps it learned from and can be badly wrong on others
(trained on MMLU alone, the learned predictor's Brier score on GSM8K is 41-49% above the per-option
base rate, and its 90% cost interval covers none of GSM8K's worked answers). The guard scores
both forecasts of every outcome it is told of, per (option, group), before the prior learns
from that outcome (prequential), and serves the prior's forecast of a part, success or cost, where
the outcomes there give strong evidence (below) that the learned one scores worse:

- success: the Brier score, ``(p - y)^2``;
- cost: the pinball loss of the log-cost at the p50, p90 and p99 (the plan's quantile and the
  hard cap's), summed over tokens and, when both forecasts and the spend have it, USD.

The test is paired and sequential, valid however often it is read: per key, a betting e-process
on the excess losses (the learned one's less the prior's) grows where the learned part scores
worse, and overrules it once it reaches ``1 / alpha``; then a second one, betting the other way,
trusts it again once it reaches as much. Each bet is sized from the recent ``window`` outcomes
(aGRAPA, Waudby-Smith and Ramdas 2023) and capped by a bound on the next excess that the two
forecasts fix before the outcome, so that no one outcome costs more than half the wealth. While the
learned part is no worse than the prior, the chance that it is ever overruled is at most
``alpha``; a z-test repeated after every outcome overrules a checkpoint merely as good as the prior
sooner or later.

Verdicts are kept per (option, group), per group over all its options and per option over all
groups; each has a say once it has ``min_outcomes`` outcomes. The learned part of an (option,
group) is overruled where its own verdict or its group's says so: a checkpoint that misjudges a
kind of step for the options that ran misjudges it for the rest, and a plan that picks an option
only where its forecast happens to be near the truth never finds its other forecasts out. Where
neither has a say, the option's verdict over all groups holds; else the learned predictor is
trusted. Every change of trust is logged and recorded as a ``roi.predictor.guard`` event on the
current span.
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
        excess: the learned forecast's mean loss less the prior's over those outcomes (> 0: the
            learned is worse).
        trusted: whether the learned forecast of this part is served.
        evidence: the e-value against that verdict, gathered since it was reached; the verdict
            turns at the guard's ``1 / alpha``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    option: str | None
    group: str | None
    part: Part
    outcomes: int
    excess: float
    trusted: bool
    evidence: float


@dataclass(slots=True)
class _Scored:
    """The recent paired excess losses of one part of one key, and the verdict they give."""

    excess: deque[float]
    trusted: bool = True
    # The log e-value against the verdict, since it was reached.
    log_evidence: float = 0.0

    def stake(self, low: float, high: float) -> float:
        """The stake on the next excess, known to lie in ``[low, high]``.

        It bets against the verdict, that the excess is positive while the learned part is
        trusted and negative while it is not, with the stake that maximises the expected growth
        of log-wealth for the recent mean ``m`` and variance ``v``, ``m / (v + m^2)`` (aGRAPA),
        capped so that the worst excess loses at most half the wealth.
        """
        n = len(self.excess)
        risk = -low if self.trusted else high
        if n < 2 or risk <= 0:
            return 0.0
        mean = sum(self.excess) / n
        edge = mean if self.trusted else -mean
        if edge <= 0:
            return 0.0
        var = sum((v - mean) ** 2 for v in self.excess) / n
        return min(edge / (var + edge * edge), 0.5 / risk)

    def wager(self, excess: float, low: float, high: float) -> None:
        """Stake on ``excess`` (in ``[low, high]``), then add it to the recent ones."""
        stake = self.stake(low, high)
        self.log_evidence += math.log1p(stake * (excess if self.trusted else -excess))
        self.excess.append(excess)


def _pinball(y: float, q: float, level: float, censored: bool) -> float:
    """The pinball loss of quantile ``q``; of a censored ``y`` (at least ``y``), a lower bound."""
    if censored:
        return level * max(y - q, 0.0)
    return max(level * (y - q), (level - 1) * (y - q))


def _log_quantile(forecast: Forecast, resource: Resource, name: Quantile) -> float:
    cost = forecast.tokens if resource == "tokens" else forecast.usd
    assert cost is not None
    return math.log(cost.at(name) + LOG_OFFSET[resource])


def _cost_loss(
    forecast: Forecast, spend: Spend, resources: Sequence[Resource], censored: bool
) -> float:
    loss = 0.0
    for resource in resources:
        y = math.log(spend.get(resource) + LOG_OFFSET[resource])
        for name, level in _LEVELS:
            loss += _pinball(y, _log_quantile(forecast, resource, name), level, censored)
    return loss


def _cost_range(
    mine: Forecast, fallback: Forecast, resources: Sequence[Resource]
) -> tuple[float, float]:
    """The least and most excess cost loss of ``mine`` over ``fallback``, whatever the spend.

    Per resource, the excess is piecewise linear in the log-spend, bending only at the
    forecasts' quantiles and flat beyond them, whether the step is cut off or not: its extremes
    lie at those quantiles.
    """
    low = high = 0.0
    for resource in resources:
        quantiles = [
            (_log_quantile(mine, resource, name), _log_quantile(fallback, resource, name), level)
            for name, level in _LEVELS
        ]
        excesses = [
            sum(
                _pinball(y, a, level, censored) - _pinball(y, b, level, censored)
                for a, b, level in quantiles
            )
            for y in {q for a, b, _ in quantiles for q in (a, b)}
            for censored in (False, True)
        ]
        low += min(excesses)
        high += max(excesses)
    return low, high


def _keys(option: str, group: str | None, part: Part) -> list[_Key]:
    """The keys an outcome is scored under, in the order a forecast consults them."""
    if group is None:
        return [(option, None, part)]
    return [(option, group, part), (None, group, part), (option, None, part)]


class GuardedPredictor:
    """A learned predictor, overruled per (option, group) by the prior where it scores worse.

    Feed it every outcome with `observe` (the LangGraph `BudgetControllerNode` does, given a
    ``learner`` and a ``success``); it passes each on to the prior after scoring. A part of an
    (option, group) is served from the prior where its own verdict or its group's over every
    option has overruled it; with neither having ``min_outcomes`` outcomes, where the option's
    over every group has; until then the learned forecast is served as it is.

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
        alpha: the chance, at most, that a part no worse than the prior's is ever overruled
            (or, overruled, that one no better is ever trusted again) in a key; the evidence
            that turns a verdict is ``1 / alpha``. Smaller is slower to overrule a checkpoint
            gone wrong (at 0.01, the MMLU-only probe's GPT-4 success on GSM8K, 0.45 against a
            rate of 0.86, was overruled after 32 outcomes in the replay bench).

    Example:
        >>> from roi_agents.types import Option, Spend, Step
        >>> overconfident = PriorPredictor(default_p_success=0.95)  # stands in for a checkpoint
        >>> guard = GuardedPredictor(overconfident)
        >>> step = Step(id="q", group="math", options=[Option(name="fast")])
        >>> for k in range(30):
        ...     guard.observe(step, "fast", Spend(output_tokens=2000), success=float(k % 5 == 0))
        >>> [(t.part, t.trusted) for t in guard.trust() if t.option and t.group]  # priced at 512
        [('cost', False), ('success', False)]
        >>> round(guard.predict([step])[0].p_success, 2)  # the prior's (6 in 30, shrunk to 0.4)
        0.21
    """

    def __init__(
        self,
        learned: Predictor,
        prior: PriorPredictor | None = None,
        *,
        min_outcomes: int = 30,
        window: int = 200,
        alpha: float = 0.01,
    ) -> None:
        if min_outcomes < 2:
            raise InvalidValueError("min_outcomes", f"must be >= 2, got {min_outcomes}")
        if window < min_outcomes:
            raise InvalidValueError("window", f"must be >= min_outcomes, got {window}")
        if not 0 < alpha < 1:
            raise InvalidValueError("alpha", f"must be in (0, 1), got {alpha}")
        self.learned = learned
        self.prior = prior if prior is not None else PriorPredictor()
        self.min_outcomes = min_outcomes
        self.window = window
        self.alpha = alpha
        self._scored: dict[_Key, _Scored] = {}

    def _trusted(self, option: str, group: str | None, part: Part) -> bool:
        """Whether to serve the learned part of an (option, group).

        Not where its own verdict or its group's over every option, of those with a say, has
        overruled it; with neither having a say, as its option's verdict over every group;
        else trusted.
        """
        keys = _keys(option, group, part)
        said = {
            key: scored.trusted
            for key in keys
            if (scored := self._scored.get(key)) is not None
            and len(scored.excess) >= self.min_outcomes
        }
        if len(keys) == 1:  # no group: the option's own verdict is its verdict over all groups
            return said.get(keys[0], True)
        own, by_group, by_option = keys
        kind = [said[key] for key in (own, by_group) if key in said]
        return all(kind) if kind else said.get(by_option, True)

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
        self,
        step: Step,
        option: str,
        spend: Spend,
        success: float | None,
        *,
        truncated: bool = False,
    ) -> None:
        """Score both forecasts of one outcome, then let the prior learn from it.

        Args:
            step: the step that ran.
            option: the option it ran with.
            spend: the real spend.
            success: 1 for success, 0 for failure, a graded score in [0, 1], or ``None`` when
                nothing graded it (only the cost is scored).
            truncated: the step was cut off at its cap: its cost was at least ``spend``.

        Raises:
            InvalidValueError: on a success outside [0, 1] or an unknown option.
        """
        if success is not None and not 0 <= success <= 1:
            raise InvalidValueError("success", f"must be in [0, 1], got {success}")
        if option == SKIP:
            return
        alone = step.model_copy(update={"options": [step.option(option)]})
        (mine,) = self.learned.predict([alone])
        (fallback,) = self.prior.predict([alone])
        # The bounds take every resource both forecasts price (fixed before the outcome); the
        # losses, those the spend has too.
        priced: list[Resource] = ["tokens"]
        if mine.usd is not None and fallback.usd is not None:
            priced.append("usd")
        resources = [r for r in priced if r == "tokens" or spend.usd > 0]
        cost_excess = _cost_loss(mine, spend, resources, truncated) - _cost_loss(
            fallback, spend, resources, truncated
        )
        self._score(option, step.group, "cost", cost_excess, _cost_range(mine, fallback, priced))
        if not truncated and success is not None:
            # (p - y)^2 - (q - y)^2 = (p - q)(p + q - 2y), linear in y in [0, 1].
            p, q = mine.p_success, fallback.p_success
            ends = ((p - q) * (p + q), (p - q) * (p + q - 2))
            excess = (p - q) * (p + q - 2 * success)
            self._score(option, step.group, "success", excess, (min(ends), max(ends)))
        self.prior.observe(step, option, spend, success, truncated=truncated)

    def _score(
        self, option: str, group: str | None, part: Part, excess: float, bounds: tuple[float, float]
    ) -> None:
        threshold = -math.log(self.alpha)
        for key in _keys(option, group, part):
            scored = self._scored.setdefault(key, _Scored(deque(maxlen=self.window)))
            scored.wager(excess, *bounds)
            if len(scored.excess) < self.min_outcomes or scored.log_evidence < threshold:
                continue
            trusted = not scored.trusted
            logger.info(
                "GuardedPredictor %s the learned %s forecast of option %r, group %r "
                "(%d outcomes, e-value %.0f)",
                "trusts" if trusted else "overrules",
                part,
                key[0],
                key[1],
                len(scored.excess),
                math.exp(scored.log_evidence),
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
            scored.log_evidence = 0.0

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
                evidence=math.exp(scored.log_evidence),
            )
            for (option, group, part), scored in sorted(
                self._scored.items(),
                key=lambda item: (item[0][0] or "", item[0][1] or "", item[0][2]),
            )
        ]
