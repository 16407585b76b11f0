"""Trace a budgeted run: a ``roi.plan`` span for the run, a ``roi.decision`` span per step.

Works with whatever tracer and meter providers the application configured (the global ones by
default; `roi_agents.telemetry.configure` sets them up in one call). Without an SDK the API's
no-op providers make every call here cheap and silent.

Example:
    >>> with RunTrace(Budget(tokens=5_000), run_id="r1") as run:  # doctest: +SKIP
    ...     plan = controller.plan(pending, run.remaining, forecasts=forecasts)
    ...     with run.decision(pending[0], plan, forecasts) as step:
    ...         spend = execute(pending[0], plan.next)  # your call, under plan.next.cap
    ...         step.record(spend, success=1.0)
"""

from __future__ import annotations

import json
import math
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from roi_agents import __version__
from roi_agents.errors import BudgetExceeded, InvalidValueError
from roi_agents.predict.head import model_input
from roi_agents.telemetry import names
from roi_agents.types import (
    RESOURCES,
    SKIP,
    Budget,
    Cap,
    Decision,
    Forecast,
    Plan,
    Quantile,
    Resource,
    Spend,
    Step,
)

__all__ = ["DecisionTrace", "RunTrace"]

_SCOPE = "roi_agents"
_CAP_NAMES = [(resource, names.per_resource(names.CAP, resource)) for resource in RESOURCES]


class _Instruments:
    """The metric instruments of one meter provider, created once.

    Decisions are counted in process and reported by an observable counter when the reader
    collects: a decision costs a dictionary update, not a synchronous measurement.
    """

    _cache: ClassVar[weakref.WeakKeyDictionary[metrics.MeterProvider, _Instruments]] = (
        weakref.WeakKeyDictionary()
    )
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, provider: metrics.MeterProvider) -> None:
        meter = provider.get_meter(_SCOPE, __version__)
        self.tokens = meter.create_histogram(
            names.METRIC_TOKEN_USAGE, unit="{token}", description="Tokens used per call"
        )
        self._decisions: Counter[tuple[str, str]] = Counter()
        self._decisions_lock = threading.Lock()
        meter.create_observable_counter(
            names.METRIC_DECISIONS,
            callbacks=[self._observe_decisions],
            unit="{decision}",
            description="Decisions by option",
        )
        self.utilization = meter.create_histogram(
            names.METRIC_UTILIZATION, unit="1", description="Spent over budget per run"
        )
        self.forecast_ratio = meter.create_histogram(
            names.METRIC_FORECAST_RATIO, unit="1", description="actual / planned cost"
        )

    def count_decision(self, option: str, model: str) -> None:
        with self._decisions_lock:
            self._decisions[option, model] += 1

    def _observe_decisions(self, options: metrics.CallbackOptions) -> list[metrics.Observation]:
        with self._decisions_lock:
            totals = list(self._decisions.items())
        return [
            metrics.Observation(n, {names.OPTION: option, names.GEN_AI_REQUEST_MODEL: model})
            for (option, model), n in totals
        ]

    @classmethod
    def of(cls, provider: metrics.MeterProvider) -> _Instruments:
        with cls._lock:
            found = cls._cache.get(provider)
            if found is None:
                found = cls._cache[provider] = cls(provider)
            return found


def _budget_attributes(prefix: str, budget: Budget) -> dict[str, float]:
    out: dict[str, float] = {}
    for resource in budget.limited():
        value = budget.get(resource)
        assert value is not None
        out[names.per_resource(prefix, resource)] = value
    return out


class RunTrace:
    """One budgeted run as a ``roi.plan`` span, child of the span current when it starts.

    Args:
        budget: the run's budget.
        resource: the resource plans are made for (utilisation and forecast error use it).
        quantile: the cost quantile plans budget at.
        run_id: an id for the run (a thread id, a request id).
        scope: the ledger scope the run spends from, if any.
        spent: what the run had spent before this trace began (a graph's or an agent's
            thread state, traced a step at a time).
        tracer_provider: defaults to the global one.
        meter_provider: defaults to the global one.
        record_text: put each step's text on its decision span (``roi.step.text``, cut as the
            learned predictor reads it), so the trace file can train the predictor; turn off
            where prompts must not leave the process.
    """

    def __init__(
        self,
        budget: Budget,
        *,
        resource: Resource = "tokens",
        quantile: Quantile = "p90",
        run_id: str | None = None,
        scope: str | None = None,
        spent: Spend | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        record_text: bool = True,
    ) -> None:
        self.budget = budget
        self.record_text = record_text
        self.resource: Resource = resource
        self.quantile: Quantile = quantile
        self.run_id = run_id
        self.scope = scope
        self.spent = spent if spent is not None else Spend()
        self.decisions = 0
        self.skips = 0
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            _SCOPE, __version__
        )
        self._instruments = _Instruments.of(meter_provider or metrics.get_meter_provider())
        self._span: Span | None = None
        self._context: Context | None = None
        self._activation: Any = None
        self._limits = self._limits_of(budget)

    @staticmethod
    def _limits_of(budget: Budget) -> list[tuple[Resource, float, str, str]]:
        """(resource, limit, its budget-before and budget-after attribute names) per limit."""
        return [
            (
                resource,
                limit,
                names.per_resource(names.BUDGET_BEFORE, resource),
                names.per_resource(names.BUDGET_AFTER, resource),
            )
            for resource in budget.limited()
            if (limit := budget.get(resource)) is not None
        ]

    def grow(self, budget: Budget) -> None:
        """The run's budget grew (a person granted more): an event, and the new limits from now.

        The run's span ends with the grown budget, and later decisions count what is left
        against it.
        """
        self.budget = budget
        self._limits = self._limits_of(budget)
        if self._span is not None:
            grown = _budget_attributes(names.BUDGET, budget)
            self._span.add_event(names.EVENT_GROWN, grown)
            self._span.set_attributes(grown)

    @property
    def remaining(self) -> Budget:
        """What the run has left (never negative)."""
        return self.budget.left_after(self.spent)

    def _left_attributes(self, after: bool) -> dict[str, float]:
        spent = self.spent
        return {
            name_after if after else name_before: max(limit - spent.get(resource), 0)
            for resource, limit, name_before, name_after in self._limits
        }

    @property
    def open(self) -> bool:
        """Whether the run's ``roi.plan`` span is open."""
        return self._span is not None

    def start(self) -> None:
        """Open the run's ``roi.plan`` span without making it current; `end` closes it.

        For a run that goes on across many calls of your code (a LangGraph graph's nodes): its
        decisions are the plan span's children all the same, so the run is one trace. The span
        is a child of the span current now. Starting an open run does nothing.
        """
        if self._span is not None:
            return
        attributes: dict[str, Any] = {
            names.RESOURCE: self.resource,
            names.QUANTILE: self.quantile,
            names.GEN_AI_OPERATION_NAME: names.OPERATION_RUN,
            names.OPENINFERENCE_SPAN_KIND: names.KIND_RUN,
            **_budget_attributes(names.BUDGET, self.budget),
        }
        if self.run_id is not None:
            attributes[names.RUN_ID] = attributes[names.GEN_AI_CONVERSATION_ID] = self.run_id
        attributes[names.INPUT_VALUE] = self.budget.model_dump_json(exclude_none=True)
        attributes[names.INPUT_MIME_TYPE] = "application/json"
        if self.scope is not None:
            attributes[names.SCOPE] = self.scope
        self.decisions = self.skips = 0
        self._span = self._tracer.start_span(names.SPAN_PLAN, attributes=attributes)
        self._context = trace.set_span_in_context(self._span)

    def __enter__(self) -> RunTrace:
        self.start()
        assert self._span is not None
        self._activation = trace.use_span(self._span, end_on_exit=False)
        self._activation.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._span is not None, "RunTrace used outside a with block"
        self._activation.__exit__(exc_type, exc, traceback)
        self.end(exc)

    def end(self, exc: BaseException | None = None) -> None:
        """Close the run's ``roi.plan`` span with what it spent; a closed run does nothing.

        Args:
            exc: the error that ended the run, if one did (recorded on the span).
        """
        span = self._span
        if span is None:
            return
        if isinstance(exc, BudgetExceeded):
            self.refused(exc)
        elif exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
        for resource in self.budget.limited():
            span.set_attribute(names.per_resource(names.SPENT, resource), self.spent.get(resource))
        span.set_attribute(names.DECISIONS, self.decisions)
        span.set_attribute(names.SKIPS, self.skips)
        spent = {r: self.spent.get(r) for r in self.budget.limited()}
        output = {"spent": spent, "decisions": self.decisions, "skips": self.skips}
        span.set_attribute(names.OUTPUT_VALUE, json.dumps(output))
        span.set_attribute(names.OUTPUT_MIME_TYPE, "application/json")
        limit = self.budget.get(self.resource)
        if limit:
            utilization = self.spent.get(self.resource) / limit
            span.set_attribute(names.UTILIZATION, utilization)
            self._instruments.utilization.record(utilization, {names.RESOURCE: self.resource})
        span.end()
        self._span = self._context = None

    def decision(
        self,
        step: Step,
        plan: Plan | None = None,
        forecasts: Sequence[Forecast] = (),
        *,
        decision: Decision | None = None,
    ) -> DecisionTrace:
        """Open the ``roi.decision`` span of the step the plan decided first.

        The span is a child of the run's ``roi.plan`` span inside a ``with`` block, and of the
        current span otherwise (a graph node that traces one decision at a time).

        Args:
            step: the step.
            plan: the plan just made (its first decision is the step's, unless ``decision``).
            forecasts: the forecasts the plan was made from; the step's are recorded.
            decision: the step's decision, when no plan is given or it is not ``plan.next``.
        """
        chosen = decision or (plan.next if plan is not None else None)
        if chosen is None:
            raise InvalidValueError("decision", "pass a plan with decisions or a decision")
        option = step.option(chosen.option)
        attributes: dict[str, Any] = {
            names.STEP_ID: step.id,
            names.OPTION: chosen.option,
            names.OPTIONS_CONSIDERED: [*(o.name for o in step.options if o.name != SKIP), SKIP],
            names.P_SUCCESS: chosen.p_success,
            names.REASON: chosen.reason,
            names.OUTPUT_VALUE: chosen.reason,
            names.OPENINFERENCE_SPAN_KIND: names.KIND_RUN if chosen.skipped else names.KIND_CALL,
            **self._left_attributes(after=False),
        }
        if not chosen.skipped:
            attributes[names.GEN_AI_OPERATION_NAME] = names.OPERATION_CALL
        if step.group is not None:
            attributes[names.STEP_GROUP] = step.group
        if self.record_text and step.text:
            attributes[names.STEP_TEXT] = attributes[names.INPUT_VALUE] = model_input((), step.text)
        if option.model is not None:
            attributes[names.GEN_AI_REQUEST_MODEL] = option.model
        planned = chosen.expected_cost.get(self.resource)
        if planned is not None:
            attributes[names.COST_PLANNED] = planned
        for forecast in forecasts:
            if forecast.step_id == step.id and forecast.option == chosen.option:
                distribution = getattr(forecast, self.resource)
                if distribution is not None:
                    attributes[names.COST_MEAN] = distribution.mean
                break
        return self._open(chosen, attributes, option.model, planned, priced=option.priced)

    def tool_calls(self, step_id: str, n: int, tools: Sequence[str] = ()) -> DecisionTrace:
        """Open the ``roi.decision`` span of one turn of tool calls, held as one.

        A decision like any other (option ``tools``, kind TOOL, ``execute_tool``), capped at
        the calls it holds; `DecisionTrace.record` its spend (the calls that ran) to close it.

        Args:
            step_id: the step the calls are charged to.
            n: the calls held.
            tools: the names of the tools called, in order, where known.
        """
        decision = Decision(
            step_id=step_id,
            option=names.OPTION_TOOLS,
            cap=Cap(tool_calls=n),
            expected_value=0.0,
            expected_cost={"tool_calls": float(n)},
            reason="1 tool call held before it runs"
            if n == 1
            else f"{n} tool calls held before they run",
        )
        attributes: dict[str, Any] = {
            names.STEP_ID: step_id,
            names.OPTION: names.OPTION_TOOLS,
            names.REASON: decision.reason,
            names.OPENINFERENCE_SPAN_KIND: names.KIND_TOOLS,
            names.GEN_AI_OPERATION_NAME: names.OPERATION_TOOLS,
            **self._left_attributes(after=False),
        }
        if tools:
            attributes[names.TOOLS] = list(tools)
        if len(set(tools)) == 1:
            attributes[names.GEN_AI_TOOL_NAME] = tools[0]
        return self._open(decision, attributes, None, None, priced=False)

    def _open(
        self,
        chosen: Decision,
        attributes: dict[str, Any],
        model: str | None,
        planned: float | None,
        *,
        priced: bool,
    ) -> DecisionTrace:
        cap = chosen.cap
        for resource, name in _CAP_NAMES:
            limit = getattr(cap, resource)
            if limit is not None:
                attributes[name] = limit
        span = self._tracer.start_span(
            names.SPAN_DECISION,
            context=self._context,
            attributes=attributes,
        )
        self.decisions += 1
        if chosen.skipped:
            self.skips += 1
        self._instruments.count_decision(chosen.option, model or "")
        return DecisionTrace(self, span, chosen, model, planned, priced=priced)

    def planned(self, plan: Plan) -> None:
        """A plan or a re-plan: an event on the run's span with what it chose and expects.

        Attributes: the options chosen for the pending steps in order, the plan's expected
        value and its upper bound, its planned cost and what was left, in the resource it was
        made for, the solver, and the quantile and risk it planned at (a `Policy` may vary them
        from plan to plan).
        """
        if self._span is None:
            return
        resource = plan.resource
        left = plan.remaining.get(resource)
        self._span.add_event(
            names.EVENT_PLAN,
            {
                names.PLAN_OPTIONS: [d.option for d in plan.decisions],
                names.PLAN_EXPECTED_VALUE: plan.expected_value,
                names.PLAN_UPPER_BOUND: plan.upper_bound,
                names.PLAN_COST: sum(d.expected_cost.get(resource, 0.0) for d in plan.decisions),
                names.PLAN_LEFT: -1.0 if left is None else left,
                names.RESOURCE: resource,
                names.PLAN_SOLVER: plan.solver,
                names.QUANTILE: plan.quantile,
                names.RISK: plan.risk,
            },
        )

    def fallback(self, reason: str, **attributes: str | float) -> None:
        """A predictor fell back to the prior: an event on the run's span."""
        if self._span is not None:
            self._span.add_event(names.EVENT_FALLBACK, {names.EVENT_REASON: reason, **attributes})

    def refused(self, error: BudgetExceeded) -> None:
        """A budget refused a call or a reservation: an event with the numbers."""
        if self._span is not None:
            self._span.add_event(
                names.EVENT_REFUSED,
                {
                    names.RESOURCE: error.resource,
                    names.SCOPE: error.scope,
                    "roi.limit": error.limit,
                    "roi.requested": error.requested,
                },
            )


class DecisionTrace:
    """The open ``roi.decision`` span of one step; `record` the outcome to close it."""

    def __init__(
        self,
        run: RunTrace,
        span: Span,
        decision: Decision,
        model: str | None,
        planned: float | None,
        *,
        priced: bool = False,
    ) -> None:
        self.run = run
        self.span = span
        self.decision = decision
        self.model = model
        self.planned = planned
        self.priced = priced
        self._ended = False

    def record(
        self, spend: Spend, *, success: float | None = None, truncated: bool = False
    ) -> None:
        """The step's real usage (and success, when known); ends the span.

        ``truncated``: the step stopped at its cap (a ``finish_reason`` of ``"length"``). Its
        cost is then only a lower bound and its success is not the option's: the span says so
        (``roi.outcome.truncated``), and `replay_records` and the report's calibration leave it
        out.
        """
        if self._ended:
            return
        run, span = self.run, self.span
        run.spent = run.spent + spend
        attributes: dict[str, Any] = {
            names.GEN_AI_USAGE_INPUT_TOKENS: spend.input_tokens,
            names.GEN_AI_USAGE_OUTPUT_TOKENS: spend.output_tokens,
            names.ACTUAL_USD: spend.usd,
            names.ACTUAL_TOOL_CALLS: spend.tool_calls,
            names.TRUNCATED: truncated,
            **run._left_attributes(after=True),
        }
        if success is not None:
            attributes[names.SUCCESS] = success
        if self.priced or spend.usd > 0:
            attributes[names.GEN_AI_USAGE_COST_AMOUNT] = spend.usd
            attributes[names.GEN_AI_USAGE_COST_CURRENCY] = "USD"
            attributes[names.GEN_AI_USAGE_COST_SOURCE] = "local"
        labels = {names.OPTION: self.decision.option, names.GEN_AI_REQUEST_MODEL: self.model or ""}
        actual = spend.get(run.resource)
        if self.planned and actual > 0:
            ratio = actual / self.planned
            attributes[names.FORECAST_ERROR] = math.log(ratio)
            run._instruments.forecast_ratio.record(ratio, labels)
        span.set_attributes(attributes)
        if spend.input_tokens or spend.output_tokens:
            tokens = run._instruments.tokens
            tokens.record(spend.input_tokens, {**labels, names.GEN_AI_TOKEN_TYPE: "input"})
            tokens.record(spend.output_tokens, {**labels, names.GEN_AI_TOKEN_TYPE: "output"})
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end()

    def __enter__(self) -> DecisionTrace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, BudgetExceeded):
            self.run.refused(exc)
            self.span.add_event(names.EVENT_REFUSED, {names.RESOURCE: exc.resource})
        elif exc is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, str(exc)))
        if not self._ended and self.decision.skipped:
            self.record(Spend())
        self._end()
