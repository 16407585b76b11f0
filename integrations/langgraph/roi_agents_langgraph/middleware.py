"""`BudgetMiddleware` for ``langchain.agents.create_agent``: every model call under the budget.

Beside langchain's ``ModelCallLimitMiddleware`` (counts calls) and ``ToolCallLimitMiddleware``
(counts tool calls), this one budgets what the calls cost. Before each model call it counts the
whole request (messages, tool schemas, tool-call arguments), plans this call and the ones
expected after it over what the thread has left, reserves the chosen option's cap in the
thread's ledger scope and sends the call with that option's model and ``max_tokens``; the
reply's real usage is charged once. The turn itself is the core's (`roi_agents.session`): this
module only translates the agent's request and reply.

Each conversation (thread id) spends from its own scope, ``{scope}/{thread_id}``, in the
middleware's ledger (in memory by default; give a SQLite or PostgreSQL ledger to share budgets
across workers, with ``scope`` the tenant or user above the threads). Invocations on one thread
id share its budget, concurrent ones included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import OmitFromInput, PrivateStateAttr
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from roi_agents.errors import BudgetExceeded, InvalidValueError
from roi_agents.ledger.base import Ledger
from roi_agents.predict.base import Learner, Predictor
from roi_agents.predict.composed import learning
from roi_agents.predict.prior import PriorPredictor
from roi_agents.prompt import PromptCount, PromptCounter
from roi_agents.session import (
    BudgetSession,
    OnExhausted,
    SessionPool,
    check_budget,
    check_on_exhausted,
)
from roi_agents.types import Budget, Decision, Option, Spend, Step
from roi_agents_langgraph.chat import acount_prompt, count_prompt, spend_of, stopped_at_cap
from roi_agents_langgraph.state import ask_for_budget

if TYPE_CHECKING:
    from roi_agents.allocate import Controller

__all__ = ["DEFAULT_OPTIONS", "BudgetMiddleware", "BudgetMiddlewareState"]

DEFAULT_OPTIONS = (
    Option(name="fast", max_tokens=256, tags=("fast",)),
    Option(name="deep", max_tokens=2048, tags=("deep",)),
)
"""A short and a long answer."""


class BudgetMiddlewareState(AgentState[Any]):
    """The agent state plus the thread's ledger scope and what the thread has spent so far.

    Both are the middleware's own: not taken from the agent's input (a caller cannot move its
    spend to another scope), and the scope not shown in its output.
    """

    roi_scope: NotRequired[Annotated[str, PrivateStateAttr]]
    roi_spent: NotRequired[Annotated[dict[str, Any], OmitFromInput]]


class BudgetMiddleware(AgentMiddleware[BudgetMiddlewareState, Any, Any]):
    """Budget every model call of a ``create_agent`` agent.

    Args:
        budget: each thread's budget (tokens and/or USD at the options' prices).
        options: the ways of answering (default `DEFAULT_OPTIONS`: a short and a long answer);
            options with a ``model`` switch to that chat model (``models``) or model name.
        models: chat models by the options' ``model`` names; an option without one keeps the
            agent's model.
        predictor: forecasts per call and option (default: a `PriorPredictor` that learns from
            this middleware's own calls: their cost, and their success when ``grade`` gives it.
            A call cut off at its ``max_tokens`` is not learned from: its cost is only a lower
            bound). A learned one that does not learn (`LocalPredictor`, `VLLMPredictor`) is
            composed with that prior (`ComposedPredictor`): the prior's level, moved per call
            by the checkpoint.
        controller: allocation settings.
        expected_calls: how many model calls the plan assumes are still to come, this one
            included: the budget is spread over them.
        grade: reply -> success in [0, 1], or None when unknown; without it nothing is taken
            for a success (the prior keeps each option's starting expectation).
        on_exhausted: when no option fits what the thread has left: ``"degrade"`` or ``"end"``
            end the run with a message that says why and what is left; ``"ask"`` interrupts
            for more budget (see `ask_for_budget`); ``"error"`` raises
            `BudgetExceeded` with the real figures.
        ledger: where the threads' scopes live (default: one in memory, for this process).
        scope: the scope above the threads (a tenant or user; default ``"thread"``).
        counter: the model's own prompt count (`roi_agents.VLLMTokenCounter`); default: the
            byte bound.
        tracer_provider: where each call's ``roi.decision`` span goes (default: the global one).
        meter_provider: where the decision and token metrics go (default: the global one).
    """

    state_schema = BudgetMiddlewareState

    def __init__(
        self,
        *,
        budget: Budget,
        options: Sequence[Option] = DEFAULT_OPTIONS,
        models: Mapping[str, BaseChatModel] | None = None,
        predictor: Predictor | None = None,
        controller: Controller | None = None,
        expected_calls: int = 3,
        grade: Callable[[AIMessage], float | None] | None = None,
        on_exhausted: OnExhausted = "end",
        ledger: Ledger | None = None,
        scope: str = "thread",
        counter: PromptCounter | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__()
        check_budget(budget)
        if not options:
            raise InvalidValueError("options", "at least one option")
        if expected_calls < 1:
            raise InvalidValueError("expected_calls", f"must be >= 1, got {expected_calls}")
        self.budget = budget
        self.options = tuple(options)
        self.models = dict(models or {})
        self.prior = learning(predictor, PriorPredictor(group_by=False))
        self.expected_calls = expected_calls
        self.on_exhausted = check_on_exhausted(on_exhausted)
        self.grade = grade
        self.counter = counter
        self.sessions = SessionPool(
            ledger=ledger,
            scope=scope,
            controller=controller,
            learner=self.prior if isinstance(self.prior, Learner) else None,
            on_exhausted=self.on_exhausted,
            ask=ask_for_budget,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )

    @property
    def ledger(self) -> Ledger:
        """Where the threads' scopes live."""
        return self.sessions.ledger

    # -- the thread's session ---------------------------------------------------------------

    def _thread_scope(self, state: Mapping[str, Any]) -> str:
        scope = state.get("roi_scope")
        if scope:
            return str(scope)
        return self.sessions.scope_of((get_config().get("configurable") or {}).get("thread_id"))

    def session(self, state: Mapping[str, Any]) -> BudgetSession:
        """The session of the thread ``state`` belongs to (made, and seeded, on first use).

        A thread whose checkpointed state says it spent what this process's ledger does not
        know (a restart with the in-memory ledger) is charged that first: nothing is lost. One
        whose spend the ledger knows (a shared ledger, a session made again) reports from it.
        """
        return self.sessions.get(
            self._thread_scope(state),
            self.budget,
            spent=Spend.model_validate(state.get("roi_spent") or {}),
        )

    def before_agent(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Name the thread's ledger scope in its state, once."""
        if state.get("roi_scope"):
            return None
        return {"roi_scope": self._thread_scope(state)}

    async def abefore_agent(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `before_agent`."""
        return self.before_agent(state, runtime)

    def after_agent(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """The invocation is over: close its trace (one ``roi.plan`` span per invocation)."""
        self.session(state).finish()
        return None

    async def aafter_agent(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `after_agent`."""
        return self.after_agent(state, runtime)

    # -- one call ---------------------------------------------------------------------------

    def _messages(self, request: ModelRequest[Any]) -> list[BaseMessage]:
        messages: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            messages = [request.system_message, *messages]
        return messages

    def _steps(self, request: ModelRequest[Any], prompt: PromptCount) -> list[Step]:
        messages = request.messages
        text = str(messages[-1].content) if messages else ""
        return [
            Step(id=f"call-{k}", text=text, options=self.options, input_tokens=prompt.tokens)
            for k in range(self.expected_calls)
        ]

    @staticmethod
    def _stop(session: BudgetSession, decision: Decision) -> AIMessage:
        """The agent's last answer when the budget ends the thread: what happened, in words."""
        said = session.summary([decision], labels={decision.step_id: "the next answer"})
        return AIMessage(content=f"Stopped. {said}")

    def _request(
        self, request: ModelRequest[Any], option: Option, max_tokens: int | None
    ) -> ModelRequest[Any]:
        settings = dict(request.model_settings)
        if max_tokens is not None:
            settings["max_tokens"] = max_tokens
        overrides: dict[str, Any] = {"model_settings": settings}
        if option.model is not None:
            if option.model in self.models:
                overrides["model"] = self.models[option.model]
            else:
                settings["model"] = option.model
        return request.override(**overrides)

    def _plan(
        self, request: ModelRequest[Any], prompt: PromptCount
    ) -> tuple[BudgetSession, Step, Decision]:
        session = self.session(request.state)
        steps = self._steps(request, prompt)
        decision = session.decide(steps, self.prior.predict(steps))
        return session, steps[0], decision

    @staticmethod
    def _outcome(
        response: ModelResponse[Any] | AIMessage, option: Option
    ) -> tuple[AIMessage | None, Spend | None, bool]:
        """The reply, its spend, and whether it was cut off at its cap."""
        messages = [response] if isinstance(response, AIMessage) else response.result
        reply = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if reply is None:
            return None, None, False
        return reply, spend_of(reply, option), stopped_at_cap(reply)

    def _learn(
        self,
        session: BudgetSession,
        step: Step,
        option: Option,
        reply: AIMessage | None,
        spend: Spend | None,
        truncated: bool,
    ) -> None:
        """Tell the learner the call's cost, and its grade when ``grade`` gives one."""
        if reply is not None and spend is not None:
            success = self.grade(reply) if self.grade is not None else None
            session.learn(step, option.name, spend, success, truncated)

    def _refused(self, session: BudgetSession, error: BudgetExceeded) -> AIMessage:
        if self.on_exhausted == "error":
            raise error
        said = session.summary()
        return AIMessage(
            content=f"Stopped: the budget cannot pay for this request ({error}). {said}"
        )

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        """Send the call under its reserved cap with the chosen option; charge its usage."""
        prompt = count_prompt(self.counter, self._messages(request), request.tools)
        session, step, decision = self._plan(request, prompt)
        if decision.skipped:
            return self._stop(session, decision)
        option = step.option(decision.option)
        try:
            with session.call(decision, option, prompt=prompt, step=step) as call:
                response = handler(self._request(request, option, call.max_tokens))
                reply, spend, truncated = self._outcome(response, option)
                call.charge(spend, truncated=truncated)
        except BudgetExceeded as refused:
            return self._refused(session, refused)
        self._learn(session, step, option, reply, spend, truncated)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        """Async `wrap_model_call`."""
        prompt = await acount_prompt(self.counter, self._messages(request), request.tools)
        session, step, decision = self._plan(request, prompt)
        if decision.skipped:
            return self._stop(session, decision)
        option = step.option(decision.option)
        try:
            async with session.call(decision, option, prompt=prompt, step=step) as call:
                response = await handler(self._request(request, option, call.max_tokens))
                reply, spend, truncated = self._outcome(response, option)
                await call.acharge(spend, truncated=truncated)
        except BudgetExceeded as refused:
            return self._refused(session, refused)
        self._learn(session, step, option, reply, spend, truncated)
        return response

    def after_model(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Write what the thread has spent so far into its state."""
        return {"roi_spent": self.session(state).spent.model_dump()}

    async def aafter_model(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `after_model`."""
        return self.after_model(state, runtime)
