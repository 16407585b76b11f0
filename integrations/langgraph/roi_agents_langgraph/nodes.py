"""The two planning nodes and the routing function of a budgeted LangGraph graph.

A turn of the loop::

    MetaCognitiveNode -> BudgetControllerNode --route_budget--> execute | skip | finish
           ^                                                       |       |
           +-------------------------------------------------------+-------+

Your executor runs the next step under ``decision.cap``, with its calls through the run's
session (``budgeted(model, session=control.session(state))``), and returns
``control.settle(state)``; the skip node returns ``control.skip(state)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableLambda
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from opentelemetry import metrics, trace

from roi_agents.errors import InvalidValueError
from roi_agents.ledger.base import Ledger, check_ttl
from roi_agents.predict.base import Learner, Predictor
from roi_agents.predict.composed import learning
from roi_agents.prompt import PromptCounter
from roi_agents.session import BudgetSession, OnExhausted, SessionPool, check_on_exhausted
from roi_agents.types import Decision, Forecast, Spend, Step
from roi_agents_langgraph.chat import count_prompt
from roi_agents_langgraph.state import (
    BudgetState,
    ask_for_budget,
    current_step,
    pending_steps,
    run_budget,
)

if TYPE_CHECKING:
    from roi_agents.allocate import Controller

__all__ = [
    "BudgetControllerNode",
    "MetaCognitiveNode",
    "Route",
    "add_budget_loop",
    "route_budget",
]

Route = Literal["execute", "skip", "finish"]


class MetaCognitiveNode(RunnableLambda[BudgetState, dict[str, Any]]):
    """Forecasts every pending (step, option): one batched predictor call per turn.

    It reads the graph's input first, loudly: a missing or malformed ``budget`` or ``pending``
    raises `InvalidValueError` naming the key and the shape the input should have. A step
    without ``input_tokens`` gets its prompt counted (its text as one user message), so the
    plan knows what each call will carry before it is made.

    Args:
        predictor: any `Predictor` (the async path awaits ``apredict``). A learned one that
            does not learn (`LocalPredictor`, `VLLMPredictor`) is composed with a
            `PriorPredictor` (`ComposedPredictor`: the prior's level per option and group,
            moved per step by the model), as `create_budgeted_agent` and `BudgetMiddleware`
            compose theirs; the result is ``self.predictor``: give it to
            `BudgetControllerNode` as its ``learner`` so that it learns from the outcomes.
        counter: counts a step's prompt (`roi_agents.VLLMTokenCounter`, the model's own count);
            default: the byte bound.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        counter: PromptCounter | None = None,
        name: str = "forecast",
    ) -> None:
        self.predictor = learning(predictor)
        self.counter = counter
        super().__init__(self._forecast, afunc=self._aforecast, name=name)

    def _read(self, state: BudgetState) -> tuple[list[Step], dict[str, Any]]:
        run_budget(state)
        steps = pending_steps(state)
        if all(s.input_tokens is not None for s in steps):
            return steps, {}
        counted = [
            s
            if s.input_tokens is not None
            else s.model_copy(update={"input_tokens": self._count(s)})
            for s in steps
        ]
        return counted, {"pending": [s.model_dump() for s in counted]}

    def _count(self, step: Step) -> int:
        return count_prompt(self.counter, [HumanMessage(content=step.text)]).tokens

    def _forecast(self, state: BudgetState) -> dict[str, Any]:
        steps, update = self._read(state)
        return {**update, "forecasts": [f.model_dump() for f in self.predictor.predict(steps)]}

    async def _aforecast(self, state: BudgetState) -> dict[str, Any]:
        steps, update = self._read(state)
        forecasts = await self.predictor.apredict(steps)
        return {**update, "forecasts": [f.model_dump() for f in forecasts]}


class BudgetControllerNode(RunnableLambda[BudgetState, dict[str, Any]]):
    """Decides the next step with what is really left, and settles it after it ran.

    The run spends from its own ledger scope, ``{scope}/{thread_id}`` (a fresh id when the
    graph runs without one), with the state's ``budget`` as its limits: in the node's in-memory
    ledger by default, or in a shared ledger whose ``scope`` (a tenant, a user) bounds it too.
    A thread keeps the limits its first run gave its scope (``ask`` grows them; the state's
    ``budget`` is written back from the scope), so invocations on one thread id share one
    budget. Calls are reserved and charged when they are made, by the run's `session`: give it to
    `budgeted` (``budgeted(model, session=control.session(state))``) and to `BudgetedToolNode`,
    and every attempt is charged, retries and ``Send`` branches included.

    Args:
        controller: the allocation settings (default: a `Controller` with a `PriorPredictor`).
        ledger: a shared ledger, optional.
        scope: the scope above the runs' scopes (default ``"run"``).
        ttl: seconds a reservation lasts if the worker dies before charging it.
        on_exhausted: when no option of the next step fits what is left: ``"degrade"`` skips
            it (the controller has already degraded the options it could; later, cheaper steps
            may still run), ``"end"`` ends the run, ``"ask"`` asks a human for more with
            `ask_for_budget` (needs a checkpointer), ``"error"`` raises `BudgetExceeded`.
        tracer_provider: where the ``roi.decision`` spans go (default: the global provider).
        meter_provider: where the metrics go (default: the global provider).
        learner: told each settled step's outcome when `settle` is given its ``success``
            (the `PriorPredictor` or `GuardedPredictor` the forecast node asks).
    """

    def __init__(
        self,
        controller: Controller | None = None,
        *,
        ledger: Ledger | None = None,
        scope: str = "run",
        ttl: float = 600.0,
        on_exhausted: OnExhausted = "degrade",
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        learner: Learner | None = None,
        name: str = "control",
    ) -> None:
        self.on_exhausted = check_on_exhausted(on_exhausted)
        self.sessions = SessionPool(
            ledger=ledger,
            scope=scope,
            controller=controller,
            learner=learner,
            on_exhausted=self.on_exhausted,
            ask=ask_for_budget,
            ttl=check_ttl(ttl),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        super().__init__(self._decide, name=name)

    @property
    def ledger(self) -> Ledger:
        """Where the runs' scopes live."""
        return self.sessions.ledger

    def session(self, state: BudgetState) -> BudgetSession:
        """The run's session: its ledger scope, what it has left, what it spent.

        A run resumed from a checkpoint in a process whose ledger does not know its spend (a
        restart with the in-memory ledger) is charged what its state says it spent first, so
        the budget is not spent twice; one whose spend the ledger knows reports from it.
        """
        scope = state.get("scope")
        if not scope:
            try:
                config = get_config()
            except RuntimeError:  # outside a run, with a state that never went through one
                msg = "the state has no 'scope': pass a state this graph returned"
                raise InvalidValueError("state", msg) from None
            scope = self.sessions.scope_of((config.get("configurable") or {}).get("thread_id"))
        return self.sessions.get(
            scope,
            run_budget(state),
            spent=Spend.model_validate(state.get("spent") or {}),
        )

    def _decide(self, state: BudgetState) -> dict[str, Any]:
        steps = pending_steps(state)
        session = self.session(state)
        update: dict[str, Any] = {"scope": session.scope, "budget": session.budget.model_dump()}
        if not steps:  # the run is over: its trace is closed
            session.finish()
            return {**update, "decision": None}
        forecasts = [Forecast.model_validate(f) for f in state.get("forecasts") or []] or None
        decision = session.decide(steps, forecasts)
        dumped = decision.model_dump()
        if decision.exhausted and self.on_exhausted == "end":
            session.record(steps[0], decision, Spend())
            session.finish()
            return {**update, "decision": None, "pending": [], "decisions": [dumped]}
        return {**update, "decision": dumped, "decisions": [dumped]}

    def settle(
        self,
        state: BudgetState,
        spend: Spend | None = None,
        *,
        call_id: str | None = None,
        success: float | None = None,
        truncated: bool = False,
    ) -> dict[str, Any]:
        """The state update after the next step ran.

        Args:
            state: the graph state the step ran in.
            spend: ``None`` when the step's calls went through the run's `session` (the
                default way): the step's spend is then what the session charged for it, every
                attempt included. A spend given here happened outside the session and is
                charged now (a spend that no longer fits is charged all the same, flagged as
                an overrun: never lost).
            call_id: an id for this settlement (default: the scope, the step and how many
                decisions the thread has taken); settling again with it (a replayed node) adds
                nothing.
            success: the step's graded outcome, told to the node's ``learner``.
            truncated: the step stopped at its cap (a ``finish_reason`` of ``"length"``): its
                spend counts as a lower bound, for the learner and on the span.
        """
        pending = state.get("pending") or []
        update: dict[str, Any] = {"pending": pending[1:], "decision": None}
        current = current_step(state)
        if current is None:
            return update
        step, decision = current
        session = self.session(state)
        # The step's place in the thread's history: a replayed node settles the same id, a later
        # run's step of the same name another.
        call_id = call_id or f"{session.scope}:{step.id}:{len(state.get('decisions') or [])}"
        if call_id in (state.get("charged") or []):
            return update
        if spend is None:
            spend = session.spent_on(step.id)
        else:
            session.charge(spend, step_id=step.id, call_id=call_id)
            session.record(step, decision, spend, success=success, truncated=truncated)
        if success is not None:
            session.learn(step, decision.option, spend, success, truncated)
        return {**update, "spent": spend.model_dump(), "charged": [call_id]}

    def summary(self, state: BudgetState) -> str:
        """What the run did with its budget, in words (`BudgetSession.summary`).

        What it spent, what it skipped, and what the steps the budget could not pay for need.
        """
        decisions = [Decision.model_validate(d) for d in state.get("decisions") or []]
        return self.session(state).summary(decisions)

    def skip(self, state: BudgetState) -> dict[str, Any]:
        """The state update that skips the next step (traced as such)."""
        current = current_step(state)
        if current is not None:
            self.session(state).record(*current, Spend())
        pending = state.get("pending") or []
        return {"pending": pending[1:], "decision": None}


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
    after_execute: str = "forecast",
    retry_policy: RetryPolicy | None = None,
) -> None:
    """Wire the loop into ``graph``: ``start`` -> forecast -> control -> execute | skip | finish.

    Adds the nodes ``forecast``, ``control``, ``execute`` (your executor, optionally with a
    ``retry_policy``) and ``skip`` (``control.skip``); skip goes back to forecast, and execute
    to ``after_execute``: forecast by default, or a node of yours (a `BudgetedToolNode` that
    runs the step's tool calls, say) that you add and lead back to ``"forecast"``.

    Raises:
        InvalidValueError: the graph's state schema lacks keys of `BudgetState` (LangGraph
            would drop them from every update without a word).
    """
    missing = sorted(set(BudgetState.__annotations__) - set(graph.channels))
    if missing:
        msg = f"the graph's state lacks {missing}: mix BudgetState into its schema"
        raise InvalidValueError("graph", msg)
    graph.add_node("forecast", forecast)
    graph.add_node("control", control)
    graph.add_node("execute", execute, retry_policy=retry_policy)
    graph.add_node("skip", control.skip)
    graph.add_edge(start, "forecast")
    graph.add_edge("forecast", "control")
    graph.add_conditional_edges(
        "control", route_budget, {"execute": "execute", "skip": "skip", "finish": finish}
    )
    graph.add_edge("execute", after_execute)
    graph.add_edge("skip", "forecast")
