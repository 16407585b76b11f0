"""The two planning nodes and the routing function of a budgeted LangGraph graph.

A turn of the loop::

    MetaCognitiveNode -> BudgetControllerNode --route_budget--> execute | skip | finish
           ^                                                       |       |
           +-------------------------------------------------------+-------+

Your executor runs the next step under ``decision.cap`` (with `budgeted` for chat models) and
returns ``controller.settle(state, spend, call_id=...)``; the skip node returns
``controller.skip(state)``.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy, interrupt
from opentelemetry import metrics, trace

from roi_agents.allocate import Controller
from roi_agents.errors import BudgetExceeded, InvalidValueError
from roi_agents.ledger.base import Amount, Ledger, check_scope, check_ttl
from roi_agents.predict.base import Learner, Predictor
from roi_agents.telemetry.tracing import RunTrace
from roi_agents.types import Budget, Decision, Forecast, Spend, Step
from roi_agents_langgraph.state import BudgetState, current_step, remaining

__all__ = [
    "BudgetControllerNode",
    "MetaCognitiveNode",
    "Route",
    "add_budget_loop",
    "route_budget",
]

Route = Literal["execute", "skip", "finish"]


def _steps(state: BudgetState) -> list[Step]:
    return [Step.model_validate(s) for s in state.get("pending") or []]


class MetaCognitiveNode(RunnableLambda[BudgetState, dict[str, Any]]):
    """Forecasts every pending (step, option): one batched predictor call per turn.

    Args:
        predictor: any `Predictor` (the async path awaits ``apredict``).
    """

    def __init__(self, predictor: Predictor, *, name: str = "forecast") -> None:
        self.predictor = predictor
        super().__init__(self._forecast, afunc=self._aforecast, name=name)

    def _forecast(self, state: BudgetState) -> dict[str, Any]:
        steps = _steps(state)
        return {"forecasts": [f.model_dump() for f in self.predictor.predict(steps)]}

    async def _aforecast(self, state: BudgetState) -> dict[str, Any]:
        steps = _steps(state)
        forecasts = await self.predictor.apredict(steps)
        return {"forecasts": [f.model_dump() for f in forecasts]}


class BudgetControllerNode(RunnableLambda[BudgetState, dict[str, Any]]):
    """Decides the next step with what is really left, and settles it after it ran.

    With a ledger, what is left is also bounded by the scope's balance, the decision's cap is
    reserved before the step runs (idempotently per thread and step, so a replayed node holds
    it once), and `settle` commits the real spend.

    Args:
        controller: the allocation settings.
        ledger: a shared ledger, optional.
        scope: the ledger scope this graph spends from (required with a ledger).
        ttl: seconds a reservation lasts if the worker dies before settling.
        on_exhausted: when no option of the next step fits what is left, ``"skip"`` it (the
            controller has already degraded the options it could), or ``"ask"`` a human for
            more budget with LangGraph's ``interrupt()`` (needs a checkpointer): resume with
            ``Command(resume={"tokens": 2000})`` to add to the budget, or ``None`` to skip.
        tracer_provider: where the ``roi.decision`` span of each settled or skipped step goes
            (a child of the current span; default: the global provider, a no-op without SDK).
        meter_provider: where the metrics go (default: the global provider).
        learner: told each settled step's outcome when `settle` is given its ``success``
            (the `PriorPredictor` or `GuardedPredictor` the forecast node asks).
    """

    def __init__(
        self,
        controller: Controller,
        *,
        ledger: Ledger | None = None,
        scope: str | None = None,
        ttl: float = 600.0,
        on_exhausted: Literal["skip", "ask"] = "skip",
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        learner: Learner | None = None,
        name: str = "control",
    ) -> None:
        if on_exhausted not in ("skip", "ask"):
            raise InvalidValueError("on_exhausted", f"'skip' or 'ask', got {on_exhausted!r}")
        if ledger is not None and scope is None:
            raise InvalidValueError("scope", "a ledger needs the scope to spend from")
        self.controller = controller
        self.ledger = ledger
        self.scope = check_scope(scope) if scope is not None else None
        self.ttl = check_ttl(ttl)
        self.on_exhausted = on_exhausted
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.learner = learner
        super().__init__(self._decide, name=name)

    def _left(self, state: BudgetState) -> Budget:
        left = remaining(state)
        if self.ledger is None or self.scope is None:
            return left
        shared = self.ledger.balance(self.scope).as_budget()
        bounded: dict[str, float | int] = {}
        for resource in left.limited():
            mine, theirs = left.get(resource), shared.get(resource)
            assert mine is not None
            bounded[resource] = mine if theirs is None else min(mine, theirs)
        return Budget.model_validate(bounded)

    def _decide(self, state: BudgetState, config: RunnableConfig) -> dict[str, Any]:
        steps = _steps(state)
        if not steps:
            return {"decision": None, "reservation": None}
        forecasts = [Forecast.model_validate(f) for f in state.get("forecasts") or []]
        left = self._left(state)
        plan = self.controller.plan(steps, left, forecasts=forecasts or None)
        decision = plan.next
        assert decision is not None
        update: dict[str, Any] = {"reservation": None}
        if self.on_exhausted == "ask" and decision.reason.startswith("skip: no option fits"):
            extra = interrupt(
                {
                    "question": "The budget cannot pay for the next step. Add to it?",
                    "step": steps[0].id,
                    "remaining": left.model_dump(exclude_none=True),
                    "reason": decision.reason,
                }
            )
            if extra:
                budget, added = Budget.model_validate(state["budget"]), Budget.model_validate(extra)
                grown: dict[str, float] = {}
                for resource in budget.limited():
                    grown[resource] = (budget.get(resource) or 0) + (added.get(resource) or 0)
                update["budget"] = Budget.model_validate(grown).model_dump()
                more = remaining({**state, "budget": update["budget"]})
                plan = self.controller.plan(steps, more, forecasts=forecasts or None)
                decision = plan.next
                assert decision is not None
        if self.ledger is not None and self.scope is not None and not decision.skipped:
            cap = decision.cap
            thread = (config.get("configurable") or {}).get("thread_id", "")
            try:
                hold = self.ledger.reserve(
                    self.scope,
                    Amount.of_cap(cap),
                    ttl=self.ttl,
                    idempotency_key=f"{thread}:{steps[0].id}" if thread else None,
                )
                update["reservation"] = hold.id
            except BudgetExceeded as refused:
                decision = Decision.skip(decision.step_id, f"skip: {refused}")
        dumped = decision.model_dump()
        return {**update, "decision": dumped, "decisions": [dumped]}

    def settle(
        self,
        state: BudgetState,
        spend: Spend,
        *,
        call_id: str,
        success: float | None = None,
        truncated: bool = False,
    ) -> dict[str, Any]:
        """The state update after the next step ran and spent ``spend``.

        A ``call_id`` already charged (a retried node, a replay) adds nothing; with a ledger the
        reservation is committed with the real spend. The step's ``roi.decision`` span (with
        ``success``, when known) is emitted here, and the node's ``learner`` is told the outcome
        when ``success`` is known; say ``truncated`` when the step stopped at its cap (a
        ``finish_reason`` of ``"length"``), so that its spend counts as a lower bound (for the
        learner, and on the span: `replay_records` then leaves it out).
        """
        pending = state.get("pending") or []
        update: dict[str, Any] = {"pending": pending[1:], "decision": None, "reservation": None}
        if call_id in (state.get("charged") or []):
            return update
        hold = state.get("reservation")
        if self.ledger is not None and hold:
            self.ledger.commit(hold, Amount.of(spend))
        current = current_step(state)
        if current is not None:
            step, decision = current
            self._trace(state, step, decision, spend, success, truncated)
            if self.learner is not None and success is not None:
                self.learner.observe(step, decision.option, spend, success, truncated=truncated)
        return {**update, "spent": spend.model_dump(), "charged": [call_id]}

    def _trace(
        self,
        state: BudgetState,
        step: Step,
        decision: Decision,
        spend: Spend,
        success: float | None,
        truncated: bool = False,
    ) -> None:
        """One finished ``roi.decision`` span for the next step: decision and outcome."""
        run = RunTrace(
            Budget.model_validate(state["budget"]),
            resource=self.controller.resource,
            quantile=self.controller.quantile,
            spent=Spend.model_validate(state.get("spent") or {}),
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )
        forecasts = [Forecast.model_validate(f) for f in state.get("forecasts") or []]
        with run.decision(step, forecasts=forecasts, decision=decision) as traced:
            traced.record(spend, success=success, truncated=truncated)

    def skip(self, state: BudgetState) -> dict[str, Any]:
        """The state update that skips the next step (its hold, if any, is released)."""
        hold = state.get("reservation")
        if self.ledger is not None and hold:
            self.ledger.release(hold)
        current = current_step(state)
        if current is not None:
            self._trace(state, *current, Spend(), None)
        pending = state.get("pending") or []
        return {"pending": pending[1:], "decision": None, "reservation": None}


def route_budget(state: BudgetState) -> Route:
    """Conditional edge: ``execute`` the next step, ``skip`` it, or ``finish``."""
    current = current_step(state)
    if current is None:
        return "finish"
    return "skip" if current[1].skipped else "execute"


def add_budget_loop(
    graph: StateGraph[Any, Any, Any, Any],
    forecast: MetaCognitiveNode,
    control: BudgetControllerNode,
    execute: Any,
    *,
    start: str = START,
    finish: str = END,
    retry_policy: RetryPolicy | None = None,
) -> None:
    """Wire the loop into ``graph``: ``start`` -> forecast -> control -> execute | skip | finish.

    Adds the nodes ``forecast``, ``control``, ``execute`` (your executor, optionally with a
    ``retry_policy``) and ``skip`` (``control.skip``); execute and skip go back to forecast.
    """
    graph.add_node("forecast", forecast)
    graph.add_node("control", control)
    graph.add_node("execute", execute, retry_policy=retry_policy)
    graph.add_node("skip", control.skip)
    graph.add_edge(start, "forecast")
    graph.add_edge("forecast", "control")
    graph.add_conditional_edges(
        "control", route_budget, {"execute": "execute", "skip": "skip", "finish": finish}
    )
    graph.add_edge("execute", "forecast")
    graph.add_edge("skip", "forecast")
