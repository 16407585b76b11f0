"""The vocabulary of roi-agents: budgets, spend, steps, options, forecasts, decisions, plans.

Every type validates on construction. A bad value (a negative budget, NaN, a probability outside
[0, 1], quantiles out of order, a decision naming an option the step does not have) raises
`pydantic.ValidationError`, a `ValueError` subclass whose message names the field. Nothing is
clamped silently.

Example:
    >>> from roi_agents.types import Budget, Option, Spend, Step
    >>> step = Step(id="s1", text="Summarise the report", options=[Option(name="fast")])
    >>> Budget(tokens=10_000).remaining_after(Spend(input_tokens=1200, output_tokens=300))
    Budget(tokens=8500, usd=None, tool_calls=None)
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, model_validator

__all__ = [
    "RESOURCES",
    "SKIP",
    "Budget",
    "Cap",
    "CostForecast",
    "Decision",
    "Forecast",
    "Name",
    "Option",
    "Plan",
    "Quantile",
    "Resource",
    "Risk",
    "Spend",
    "Step",
]

Resource = Literal["tokens", "usd", "tool_calls"]
"""A budgeted resource. ``tokens`` counts input plus output tokens."""

RESOURCES: tuple[Resource, ...] = ("tokens", "usd", "tool_calls")

Quantile = Literal["mean", "p50", "p90", "p99"]
"""Which point of a cost distribution a plan budgets for."""

Risk = Literal["step", "run"]
"""``step``: each option budgeted at the quantile; ``run``: the plan's total budgeted at it."""

SKIP = "skip"
"""Name of the option that does nothing, costs nothing and is worth nothing. Every step has it."""

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


MAX_COUNT = 2**53
"""The most tokens or tool calls a budget or an amount may hold (a double's integer range)."""
MAX_USD = 1e15
"""The most USD a budget or an amount may hold."""
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]
"""A step's id or an option's name: shown in summaries, spans and ledger keys, so printable, no
line breaks, at most 256 characters."""
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
Usd = Annotated[float, Field(ge=0.0, le=MAX_USD, strict=True)]


class Budget(BaseModel):
    """What a run (or a scope) may still spend; any subset of resources, ``None`` = unlimited.

    Exact numbers only (no ``"5"``, no ``True``), within `MAX_COUNT` tokens and `MAX_USD`.
    """

    model_config = _STRICT

    tokens: Count | None = None
    usd: Usd | None = None
    tool_calls: Count | None = None

    def get(self, resource: Resource) -> float | None:
        """The limit on one resource, ``None`` when unlimited."""
        value: float | None = getattr(self, resource)
        return value

    def limited(self) -> tuple[Resource, ...]:
        """The resources this budget limits, in the order of `RESOURCES`."""
        return tuple(r for r in RESOURCES if self.get(r) is not None)

    def left_after(self, spend: Spend) -> Budget:
        """What is left after ``spend``, floored at zero: an overspend is not raised here.

        For accounting that must carry on after the fact (traces, reports); use
        `remaining_after` to refuse an overspend.
        """
        left: dict[str, float] = {}
        for resource in self.limited():
            limit = self.get(resource)
            assert limit is not None
            value = max(limit - spend.get(resource), 0)
            left[resource] = value if resource == "usd" else int(value)
        return Budget.model_validate(left)

    def remaining_after(self, spend: Spend) -> Budget:
        """What is left after ``spend``.

        Raises:
            BudgetExceeded: when the spend is more than the budget had on any resource.
        """
        from roi_agents.errors import BudgetExceeded

        left: dict[str, float] = {}
        for resource in self.limited():
            limit = self.get(resource)
            assert limit is not None
            used = spend.get(resource)
            if used > limit + _tolerance(resource):
                raise BudgetExceeded(resource=resource, scope="run", limit=limit, requested=used)
            left[resource] = max(limit - used, 0)
        if self.tokens is not None:
            left["tokens"] = int(left["tokens"])
        if self.tool_calls is not None:
            left["tool_calls"] = int(left["tool_calls"])
        return self.model_copy(update=left)


def _tolerance(resource: Resource) -> float:
    # USD sums of float prices pick up rounding error; a nano-dollar is far below any price.
    return 1e-9 if resource == "usd" else 0.0


class Spend(BaseModel):
    """What was (or would be) spent. Adds with ``+``.

    Example:
        >>> Spend(input_tokens=10, output_tokens=5) + Spend(tool_calls=1)
        Spend(input_tokens=10, output_tokens=5, usd=0.0, tool_calls=1)
    """

    model_config = _STRICT

    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    usd: NonNegativeFloat = 0.0
    tool_calls: NonNegativeInt = 0

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def get(self, resource: Resource) -> float:
        """The amount spent of one resource."""
        return float(self.tokens if resource == "tokens" else getattr(self, resource))

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            usd=self.usd + other.usd,
            tool_calls=self.tool_calls + other.tool_calls,
        )


class Option(BaseModel):
    """One way of doing a step: an effort level, a model, a tool.

    Attributes:
        name: unique within the step; ``"skip"`` is reserved for doing nothing.
        model: the chat model to call, when the option names one.
        max_tokens: the option's own output-token ceiling (e.g. the effort level's); caps issued
            by the controller never exceed it.
        input_price: USD per million input tokens.
        output_price: USD per million output tokens.
        tool_calls: tool calls the option may make.
        tags: free labels; the learned predictor sees them as ``[tag]`` before the step's text.
        expected_success: what you expect of the option before any outcome is seen; the prior
            predictor starts from it (else from its effort level: see `PriorPredictor`).
    """

    model_config = _STRICT

    name: Name
    model: str | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    input_price: NonNegativeFloat = 0.0
    output_price: NonNegativeFloat = 0.0
    tool_calls: NonNegativeInt = 0
    tags: tuple[str, ...] = ()
    expected_success: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    def usd(self, input_tokens: float, output_tokens: float) -> float:
        """List-price cost of a call with these token counts."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6

    @property
    def priced(self) -> bool:
        """Whether the option has a list price."""
        return self.input_price > 0 or self.output_price > 0

    def usd_forecast(self, tokens: CostForecast, input_tokens: float | None) -> CostForecast:
        """A forecast of all tokens (prompt and output) priced at the option's list prices.

        With the prompt's size known, the tokens beyond it are priced as output; otherwise every
        token is priced at the dearer rate, which never under-budgets.
        """
        if input_tokens is not None:
            known = input_tokens

            def usd(total: float) -> float:
                return self.usd(min(known, total), max(total - known, 0.0))
        else:
            rate = max(self.input_price, self.output_price)

            def usd(total: float) -> float:
                return total * rate / 1e6

        return CostForecast(
            mean=usd(tokens.mean), p50=usd(tokens.p50), p90=usd(tokens.p90), p99=usd(tokens.p99)
        )


class Step(BaseModel):
    """A pending unit of work: a subtask of a plan or a tool call an LLM asked for.

    Attributes:
        id: unique within a run; a name of at most 256 characters, without control
            characters.
        text: what the step is; the predictor reads it.
        weight: what success on this step is worth (>= 0).
        options: the ways of doing it. ``skip`` is always available, listed or not.
        group: optional history group for the prior predictor (a dataset, a subject, a tool).
        input_tokens: the prompt's size when it is already known.
    """

    model_config = _STRICT

    id: Name
    text: str = ""
    weight: NonNegativeFloat = 1.0
    options: Annotated[tuple[Option, ...], Field(min_length=1)]
    group: str | None = None
    input_tokens: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _unique_option_names(self) -> Self:
        names = [o.name for o in self.options]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            msg = f"options: duplicate option names {duplicated}"
            raise ValueError(msg)
        if SKIP in names:
            msg = f"options: {SKIP!r} is reserved for not running the step; name the option else"
            raise ValueError(msg)
        return self

    def option(self, name: str) -> Option:
        """The option called ``name``; ``skip`` always exists.

        Raises:
            InvalidValueError: when the step has no such option.
        """
        for option in self.options:
            if option.name == name:
                return option
        if name == SKIP:
            return Option(name=SKIP)
        from roi_agents.errors import InvalidValueError

        msg = f"step {self.id!r} has no option {name!r}; it has {[o.name for o in self.options]}"
        raise InvalidValueError("option", msg)


class CostForecast(BaseModel):
    """The predicted distribution of one resource's cost: its mean and three quantiles."""

    model_config = _STRICT

    mean: NonNegativeFloat
    p50: NonNegativeFloat
    p90: NonNegativeFloat
    p99: NonNegativeFloat

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.p50 <= self.p90 <= self.p99:
            msg = f"quantiles out of order: p50={self.p50}, p90={self.p90}, p99={self.p99}"
            raise ValueError(msg)
        return self

    @classmethod
    def exact(cls, value: float) -> CostForecast:
        """A cost known in advance (e.g. a fixed tool-call count)."""
        return cls(mean=value, p50=value, p90=value, p99=value)

    def at(self, quantile: Quantile) -> float:
        """The cost at ``quantile`` (or the mean)."""
        value: float = getattr(self, quantile)
        return value


class Forecast(BaseModel):
    """What a predictor expects of one (step, option): success probability and cost.

    ``tokens`` is always forecast; ``usd`` and ``tool_calls`` when the predictor knows them.
    """

    model_config = _STRICT

    step_id: str
    option: str
    p_success: Annotated[float, Field(ge=0.0, le=1.0)]
    tokens: CostForecast
    usd: CostForecast | None = None
    tool_calls: CostForecast | None = None
    source: str = "unknown"


class Cap(BaseModel):
    """Hard limits on one step's spend. The executor must not let the step go past them."""

    model_config = _STRICT

    tokens: NonNegativeInt | None = None
    usd: NonNegativeFloat | None = None
    tool_calls: NonNegativeInt | None = None

    def get(self, resource: Resource) -> float | None:
        """The cap on one resource, ``None`` when uncapped."""
        value: float | None = getattr(self, resource)
        return value

    def max_output_tokens(self, input_tokens: int, option: Option) -> int:
        """The ``max_tokens`` to send with a call whose prompt has ``input_tokens`` tokens.

        Honours the token cap, the USD cap (at the option's prices) and the option's own
        ``max_tokens``; 0 means the call must not be sent.
        """
        limits: list[float] = []
        if option.max_tokens is not None:
            limits.append(option.max_tokens)
        if self.tokens is not None:
            limits.append(self.tokens - input_tokens)
        if self.usd is not None and option.output_price > 0:
            left = self.usd - input_tokens * option.input_price / 1e6
            limits.append(left * 1e6 / option.output_price)
        if not limits:
            msg = "max_output_tokens: no token, USD or option limit to derive a cap from"
            from roi_agents.errors import InvalidValueError

            raise InvalidValueError("cap", msg)
        return max(0, math.floor(min(limits)))


class Decision(BaseModel):
    """The controller's choice for one step.

    Attributes:
        step_id: the step.
        option: the chosen option's name (``"skip"`` to not run the step).
        cap: hard limits for running it.
        expected_value: weight times predicted success probability.
        expected_cost: the planned cost per resource (at the plan's quantile).
        p_success: the forecast success probability of the chosen option.
        reason: one line saying why.
        exhausted: the step is skipped because no option fits what is left (not because the
            budget is worth more elsewhere): the run has run out, and its ``on_exhausted`` rule
            applies.
        needs: on an exhausted skip, what the step's cheapest option would cost per resource
            (at the plan's quantile): what running it would take.
    """

    model_config = _STRICT

    step_id: str
    option: str
    cap: Cap
    expected_value: NonNegativeFloat
    expected_cost: dict[Resource, NonNegativeFloat]
    p_success: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    reason: str
    exhausted: bool = False
    needs: dict[Resource, NonNegativeFloat] = Field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        """Whether the step is not to be run."""
        return self.option == SKIP

    @classmethod
    def skip(cls, step_id: str, reason: str, *, exhausted: bool = False) -> Decision:
        """A decision not to run the step: zero caps, zero value."""
        return cls(
            step_id=step_id,
            option=SKIP,
            cap=Cap(tokens=0, usd=0.0, tool_calls=0),
            expected_value=0.0,
            expected_cost={},
            reason=reason,
            exhausted=exhausted,
        )


class Plan(BaseModel):
    """One allocation of the remaining budget over the pending steps, in step order.

    Attributes:
        decisions: one per pending step, in order.
        remaining: the budget the plan was made for.
        resource: the resource solved for (a second one, if any, is priced in by a multiplier).
        quantile: the cost quantile budgeted for each step.
        risk: whether the quantile applied to each step or to the plan's total.
        solver: ``"dp"`` (exact up to the discretisation) or ``"greedy"`` (LP-relaxation).
        expected_value: sum of the decisions' expected values.
        upper_bound: an upper bound on the best achievable expected value (LP relaxation), so
            ``upper_bound - expected_value`` bounds the plan's optimality gap.
        multiplier: the Lagrange multiplier on the second resource (0 when none was needed).
    """

    model_config = _STRICT

    decisions: tuple[Decision, ...]
    remaining: Budget
    resource: Resource
    quantile: Quantile
    risk: Risk = "step"
    solver: Literal["dp", "greedy"]
    expected_value: NonNegativeFloat
    upper_bound: NonNegativeFloat
    multiplier: NonNegativeFloat = 0.0

    @property
    def gap(self) -> float:
        """Upper bound on how much expected value the plan may leave on the table."""
        return max(self.upper_bound - self.expected_value, 0.0)

    def expected_cost(self, resource: Resource) -> float:
        """Planned spend of ``resource`` over all decisions."""
        return sum(d.expected_cost.get(resource, 0.0) for d in self.decisions)

    @property
    def next(self) -> Decision | None:
        """The decision for the first pending step, ``None`` for an empty plan."""
        return self.decisions[0] if self.decisions else None
