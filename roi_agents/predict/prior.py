"""A predictor from history alone: the cold-start and fallback forecaster.

Per option, and per (option, group) when steps carry a group such as a dataset or a subject, it
keeps a Beta posterior on success and a log-normal fit of cost, and updates both online from
observed outcomes. A group's estimates shrink towards its option's, with the weight of
``prior_strength`` pseudo-observations, so a group seen twice is not trusted like one seen a
thousand times. An option never seen forecasts from the constructor's defaults.

Costs of reasoning models are heavier-tailed than a log-normal: a model that now and then
thinks ten times longer than usual. Once a group (else its option) has `TAIL_ROWS` recorded
costs, the forecast's p99, which sets a step's hard cap, is at least the split-conformal p99 of
its most recent costs' standardised residuals, as in the learned predictor's calibration, and
its mean at least theirs (on simpleqa the log-normal put Gemini 3 Flash's mean cost at 0.0018
USD, half the recorded 0.0039, and a plan budgeting the run's total at its means overspent).
The plan's quantile (p90) stays log-normal, since a plan at the empirical p90 of such costs
afforded far fewer upgrades. (Replay bench, simpleqa.jsonl, 6 models: the
log-normal p99 was below 8% of Gemini 3.1 Pro's costs; steps cut off per episode at budgets
0.1 / 0.25 / 0.5 fell from 0.71 / 0.98 / 1.42 to 0.53 / 0.70 / 0.52; with every quantile and
the mean read from the recent costs, to 0.47 / 0.25 / 0.24, but the spend at 0.5 fell from 0.76
to 0.37 of the budget and the gap closed from 0.14 to 0.07.)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from roi_agents.errors import InvalidValueError
from roi_agents.predict.calibration import ResidualQuantiles, conformal_quantiles
from roi_agents.predict.head import lognormal_cost
from roi_agents.types import SKIP, CostForecast, Forecast, Option, Spend, Step

__all__ = ["EFFORT", "EFFORT_STEP", "LOG_OFFSET", "PRIOR_STRENGTH", "TAIL_ROWS", "PriorPredictor"]

# Pseudo-observations behind the estimate a group (or an option) is shrunk towards.
PRIOR_STRENGTH = 10.0

# Effort levels by the names agents give them (an option's name or tags), and how far each
# moves an option's starting success from the default: with no outcomes yet, a dearer effort
# level is taken to be likelier to succeed, so a budget that pays for it buys it. Outcomes
# overrule this within a few dozen observations (PRIOR_STRENGTH).
EFFORT = {"fast": -1, "low": -1, "standard": 0, "medium": 0, "deep": 1, "high": 1}
EFFORT_STEP = 0.1

# Recorded costs from which the p99 is also read empirically (a p99 needs 99).
TAIL_ROWS = 100
# The most recent costs kept per option (and group) for it.
_RECENT = 2048
# Forecasts remembered between outcomes.
_MEMO = 10_000

# Log-costs are of (cost + offset), so that zero costs have a finite log (the learned head's
# offsets too; `GuardedPredictor` scores log-costs with them).
LOG_OFFSET = {"output_tokens": 1.0, "tokens": 1.0, "usd": 1e-6}


@dataclass(slots=True)
class _LogStats:
    """Count, mean and sum of squared deviations of log(cost + offset) (Welford); recent values."""

    n: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT))
    _residuals: ResidualQuantiles | None = field(default=None, init=False, repr=False)  # cache

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        self.recent.append(x)
        self._residuals = None

    @property
    def var(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    def residuals(self) -> ResidualQuantiles | None:
        """Conformal quantiles of the recent values' standardised residuals, when there are enough.

        ``None`` with fewer than `TAIL_ROWS` values or no spread.
        """
        if self._residuals is None and len(self.recent) >= TAIL_ROWS and self.var > 0:
            sd = math.sqrt(self.var)
            self._residuals = conformal_quantiles([(x - self.mean) / sd for x in self.recent])
        return self._residuals


@dataclass(slots=True)
class _Stats:
    n: float = 0.0
    successes: float = 0.0
    costs: dict[str, _LogStats] = field(default_factory=dict)


class PriorPredictor:
    """Forecasts from per-option (and per-group) history.

    Args:
        group_by: keep separate statistics per `Step.group` (shrunk towards the option's).
        prior_strength: pseudo-observations behind the option-level estimate when shrinking a
            group, and behind the default when shrinking an option.
        default_p_success: success probability of an option never seen, unless it says what
            to expect (`Option.expected_success`) or names an effort level (`EFFORT`: ``fast``
            below it by `EFFORT_STEP`, ``deep`` above).
        default_tokens: median output tokens of an option never seen.
        default_log_sigma: spread of log-cost of an option never seen.

    Example:
        >>> from roi_agents.types import Option, Spend, Step
        >>> prior = PriorPredictor()
        >>> step = Step(id="q1", group="math", options=[Option(name="fast")])
        >>> prior.observe(step, "fast", Spend(input_tokens=50, output_tokens=200), success=1.0)
        >>> round(prior.predict([step])[0].p_success, 3)  # from 0.4, fast's starting point
        0.504
    """

    def __init__(
        self,
        *,
        group_by: bool = True,
        prior_strength: float = PRIOR_STRENGTH,
        default_p_success: float = 0.5,
        default_tokens: float = 512.0,
        default_log_sigma: float = 1.0,
    ) -> None:
        if prior_strength <= 0 or not math.isfinite(prior_strength):
            raise InvalidValueError("prior_strength", f"must be > 0, got {prior_strength}")
        if not 0 <= default_p_success <= 1:
            raise InvalidValueError(
                "default_p_success", f"must be in [0, 1], got {default_p_success}"
            )
        if default_tokens <= 0 or default_log_sigma < 0:
            raise InvalidValueError("default_tokens", "defaults must be positive")
        self.group_by = group_by
        self.prior_strength = prior_strength
        self.default_p_success = default_p_success
        self.default_tokens = default_tokens
        self.default_log_sigma = default_log_sigma
        self._stats: dict[tuple[str, str | None], _Stats] = {}
        # Forecasts since the last outcome, by what they depend on: the controller re-plans
        # after every step and asks again for every pending step's.
        self._memo: dict[tuple[Option, str | None, int | None], Forecast] = {}

    def observe(
        self,
        step: Step,
        option: str,
        spend: Spend,
        success: float | None,
        *,
        truncated: bool = False,
    ) -> None:
        """Record one outcome: what running ``option`` on ``step`` cost and how well it did.

        Args:
            step: the step that ran (its group is used when ``group_by``).
            option: the option's name.
            spend: the real spend.
            success: 1 for success, 0 for failure, a graded score in [0, 1], or ``None`` when
                nothing graded it (only its cost is recorded).
            truncated: the step was cut off at its cap. Its cost is only a lower bound and its
                success is not the option's, so it is not recorded.

        Raises:
            InvalidValueError: on a success outside [0, 1] or an unknown option.
        """
        if success is not None and not 0 <= success <= 1:
            raise InvalidValueError("success", f"must be in [0, 1], got {success}")
        step.option(option)
        if not truncated:
            self.record(option, step.group, spend, success)

    def record(self, option: str, group: str | None, spend: Spend, success: float | None) -> None:
        """`observe` without a step: for training from recorded outcomes."""
        if success is not None and (not 0 <= success <= 1 or not math.isfinite(success)):
            raise InvalidValueError("success", f"must be in [0, 1], got {success}")
        keys: list[tuple[str, str | None]] = [(option, None)]
        if self.group_by and group is not None:
            keys.append((option, group))
        observed: dict[str, float] = {"output_tokens": spend.output_tokens, "tokens": spend.tokens}
        if spend.usd > 0:
            observed["usd"] = spend.usd
        logs = {name: math.log(amount + LOG_OFFSET[name]) for name, amount in observed.items()}
        self._memo.clear()
        for key in keys:
            stats = self._stats.setdefault(key, _Stats())
            if success is not None:
                stats.n += 1
                stats.successes += success
            for name, log in logs.items():
                stats.costs.setdefault(name, _LogStats()).add(log)

    def _default_p(self, option: Option) -> float:
        """An unseen option's success: its own expectation, else the default by effort level."""
        if option.expected_success is not None:
            return option.expected_success
        return min(max(self.default_p_success + EFFORT_STEP * _effort(option), 0.0), 1.0)

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        """One forecast per (step, option), skip excluded."""
        return [
            self._remembered(step, option)
            for step in steps
            for option in step.options
            if option.name != SKIP
        ]

    def _remembered(self, step: Step, option: Option) -> Forecast:
        """`_forecast`, from memory when a step alike was forecast since the last outcome."""
        key = (option, step.group if self.group_by else None, step.input_tokens)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= _MEMO:
                self._memo.clear()
            found = self._memo[key] = self._forecast(step, option)
        return found if found.step_id == step.id else found.model_copy(update={"step_id": step.id})

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        """Same as `predict`: the prior does no I/O."""
        return self.predict(steps)

    def _forecast(self, step: Step, option: Option) -> Forecast:
        option_stats = self._stats.get((option.name, None), _Stats())
        group_stats = (
            self._stats.get((option.name, step.group), _Stats())
            if self.group_by and step.group is not None
            else _Stats()
        )
        k = self.prior_strength
        p_option = (k * self._default_p(option) + option_stats.successes) / (k + option_stats.n)
        p = (k * p_option + group_stats.successes) / (k + group_stats.n)

        def lognormal(name: str) -> tuple[float, float, ResidualQuantiles | None] | None:
            """Mean and spread of log-cost, and the residual quantiles that apply, if any."""
            base = option_stats.costs.get(name)
            if base is None:
                if name != "output_tokens":
                    return None
                mu0, var0, n0 = math.log(self.default_tokens), self.default_log_sigma**2, 0.0
            else:
                mu0, var0, n0 = base.mean, base.var, base.n
            if n0 < 2:  # too few to estimate a spread: fall back on the default spread
                var0 = self.default_log_sigma**2
            option_tail = base.residuals() if base is not None else None
            own = group_stats.costs.get(name)
            if own is None or own.n == 0:
                return mu0, math.sqrt(var0), option_tail
            mu = (k * mu0 + own.n * own.mean) / (k + own.n)
            var = (k * var0 + max(own.n - 1, 0) * own.var) / (k + max(own.n - 1, 0))
            return mu, math.sqrt(var), own.residuals() or option_tail

        # An option's max_tokens caps its output: no forecast goes past it.
        ceiling = float(option.max_tokens) if option.max_tokens is not None else math.inf

        known_input = step.input_tokens
        output = lognormal("output_tokens")
        total = lognormal("tokens")
        assert output is not None
        if known_input is not None or total is None:
            shift = float(known_input or 0)
            tokens = _cost(*output, LOG_OFFSET["output_tokens"], shift, ceiling, count=True)
        else:
            tokens = _cost(*total, LOG_OFFSET["tokens"], count=True)
        usd: CostForecast | None = None
        if known_input is not None and option.priced:
            usd = option.usd_forecast(tokens, known_input)
        else:
            fit = lognormal("usd")
            if fit is not None:
                usd = _cost(*fit, LOG_OFFSET["usd"])
        return Forecast(
            step_id=step.id,
            option=option.name,
            p_success=min(max(p, 0.0), 1.0),
            tokens=tokens,
            usd=usd,
            source="prior",
        )


def _effort(option: Option) -> int:
    levels = [EFFORT[label] for label in (option.name, *option.tags) if label in EFFORT]
    return levels[0] if levels else 0


def _cost(
    mu: float,
    sigma: float,
    tail: ResidualQuantiles | None,
    offset: float,
    shift: float = 0.0,
    ceiling: float = math.inf,
    *,
    count: bool = False,
) -> CostForecast:
    """The log-normal forecast, its mean and p99 raised to the recent costs' where higher."""
    fit = lognormal_cost(mu, sigma, offset, shift, ceiling, count=count)
    if tail is None:
        return fit
    recent = lognormal_cost(mu, sigma, offset, shift, ceiling, tail, count=count)
    return fit.model_copy(
        update={"mean": max(fit.mean, recent.mean), "p99": max(fit.p99, recent.p99)}
    )
