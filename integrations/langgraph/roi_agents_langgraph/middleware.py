"""`BudgetMiddleware` for ``langchain.agents.create_agent``.

Forecasts, allocation, caps and accounting for every model call, degrading to a cheaper option
before it stops.

Beside langchain's ``ModelCallLimitMiddleware`` (counts calls) and ``ToolCallLimitMiddleware``
(counts tool calls), this one budgets what the calls cost: before each model call it plans the
call and the ones expected after it over what is left, sends the call with the chosen option's
model and ``max_tokens`` (the cap minus the prompt's size), and after it adds the real
``usage_metadata`` to the thread's spend. When no option fits, the agent ends with a message
that says why (``on_exhausted="end"``) or raises `BudgetExceeded` (``"error"``). Each call is a
``roi.decision`` span, as in the budget loop's nodes: the decision, and once the call returned
its real usage and whether it stopped at its cap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import hook_config
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from roi_agents.allocate import Controller
from roi_agents.errors import BudgetExceeded, InvalidValueError
from roi_agents.predict.base import Predictor
from roi_agents.predict.prior import PriorPredictor
from roi_agents.telemetry.tracing import DecisionTrace, RunTrace
from roi_agents.types import Budget, Decision, Forecast, Option, Spend, Step
from roi_agents_langgraph.chat import prompt_token_bound, stopped_at_cap
from roi_agents_langgraph.state import add_spend, union

__all__ = ["BudgetMiddleware", "BudgetMiddlewareState"]


class BudgetMiddlewareState(AgentState[Any]):
    """The agent state plus the thread's spend and the ids of the calls charged."""

    roi_spent: NotRequired[Annotated[dict[str, Any], add_spend]]
    roi_charged: NotRequired[Annotated[list[str], union]]


class BudgetMiddleware(AgentMiddleware[BudgetMiddlewareState, Any, Any]):
    """Budget every model call of a ``create_agent`` agent.

    Args:
        budget: the thread's budget (tokens and/or USD at the options' prices).
        options: the ways of answering, e.g. a strong and a cheap model, or effort levels.
        models: chat models by the options' ``model`` names; an option without one keeps the
            agent's model.
        predictor: forecasts per call and option (default: a `PriorPredictor` that learns the
            cost of this middleware's own calls, of those with an option's ``model``, as
            successes: nothing grades them. A call cut off at its ``max_tokens``, with a
            ``finish_reason`` of ``"length"``, is not learned from: its cost is only a lower
            bound, and learning it as the cost would lower the next caps again and again).
        controller: allocation settings.
        expected_calls: how many model calls the plan assumes are still to come, this one
            included: the budget is spread over them.
        on_exhausted: ``"end"`` the run with a message, or raise (``"error"``).
        tracer_provider: where each call's ``roi.decision`` span goes (default: the global one).
        meter_provider: where the decision and token metrics go (default: the global one).
    """

    state_schema = BudgetMiddlewareState

    def __init__(
        self,
        *,
        budget: Budget,
        options: Sequence[Option],
        models: Mapping[str, BaseChatModel] | None = None,
        predictor: Predictor | None = None,
        controller: Controller | None = None,
        expected_calls: int = 3,
        on_exhausted: Literal["end", "error"] = "end",
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__()
        if not options:
            raise InvalidValueError("options", "at least one option")
        if expected_calls < 1:
            raise InvalidValueError("expected_calls", f"must be >= 1, got {expected_calls}")
        if on_exhausted not in ("end", "error"):
            raise InvalidValueError("on_exhausted", f"'end' or 'error', got {on_exhausted!r}")
        self.budget = budget
        self.options = tuple(options)
        self.models = dict(models or {})
        self.prior = predictor if predictor is not None else PriorPredictor(group_by=False)
        self.controller = controller or Controller()
        self.expected_calls = expected_calls
        self.on_exhausted = on_exhausted
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider

    def _remaining(self, state: Any) -> Budget:
        return self.budget.left_after(Spend.model_validate(state.get("roi_spent") or {}))

    def _decide(self, request: ModelRequest[Any]) -> tuple[Decision, Step, list[Forecast]]:
        messages = list(request.messages)
        if request.system_message is not None:
            messages = [request.system_message, *messages]
        prompt = prompt_token_bound(messages)
        steps = [
            Step(
                id=f"call-{k}",
                text=str(messages[-1].content) if messages else "",
                options=self.options,
                input_tokens=prompt,
            )
            for k in range(self.expected_calls)
        ]
        forecasts = self.prior.predict(steps)
        remaining = self._remaining(request.state)
        decision = self.controller.plan(steps, remaining, forecasts=forecasts).next
        assert decision is not None
        return decision, steps[0], forecasts

    def _exhausted(self, state: Any) -> dict[str, Any] | None:
        left = self._remaining(state)
        if not any(left.get(r) == 0 for r in left.limited()):
            return None
        message = f"Stopped: the budget is spent ({left.model_dump(exclude_none=True)} left)."
        if self.on_exhausted == "error":
            resource = next(r for r in left.limited() if left.get(r) == 0)
            limit = self.budget.get(resource) or 0.0
            raise BudgetExceeded(resource=resource, scope="thread", limit=0, requested=limit)
        return {"jump_to": "end", "messages": [AIMessage(content=message)]}

    @hook_config(can_jump_to=["end"])
    def before_model(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """End the run (or raise) when the budget has nothing left."""
        return self._exhausted(state)

    @hook_config(can_jump_to=["end"])
    async def abefore_model(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `before_model`."""
        return self._exhausted(state)

    def _open(self, request: ModelRequest[Any]) -> tuple[Decision, Step, DecisionTrace]:
        """Decide the call and open its ``roi.decision`` span."""
        decision, step, forecasts = self._decide(request)
        run = RunTrace(
            self.budget,
            resource=self.controller.resource,
            quantile=self.controller.quantile,
            spent=Spend.model_validate(request.state.get("roi_spent") or {}),
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )
        return decision, step, run.decision(step, forecasts=forecasts, decision=decision)

    def _spent(self, reply: AIMessage) -> tuple[Spend, Option | None]:
        """A reply's real spend, priced by the option whose ``model`` answered (else no USD)."""
        usage = reply.usage_metadata
        assert usage is not None
        model = (reply.response_metadata or {}).get("model_name")
        option = next((o for o in self.options if o.model and o.model == model), None)
        spend = Spend(
            input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"],
            usd=option.usd(usage["input_tokens"], usage["output_tokens"]) if option else 0.0,
        )
        return spend, option

    def _close(self, traced: DecisionTrace, response: ModelResponse[Any] | AIMessage) -> None:
        """Record the call's real usage on its span (none for a call not sent)."""
        messages = [response] if isinstance(response, AIMessage) else response.result
        reply = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
        if reply is None or reply.usage_metadata is None:
            traced.record(Spend())
            return
        traced.record(self._spent(reply)[0], truncated=stopped_at_cap(reply))

    def _apply(
        self, request: ModelRequest[Any], decision: Decision, step: Step
    ) -> ModelRequest[Any] | AIMessage:
        if decision.skipped:
            reason = f"Stopped: {decision.reason}"
            if self.on_exhausted == "error":
                raise BudgetExceeded(
                    resource="tokens",
                    scope="thread",
                    limit=0,
                    requested=float(step.input_tokens or 0),
                )
            return AIMessage(content=reason)
        option = step.option(decision.option)
        max_tokens = decision.cap.max_output_tokens(step.input_tokens or 0, option)
        if max_tokens <= 0:
            return AIMessage(content=f"Stopped: no room for an answer ({decision.reason})")
        overrides: dict[str, Any] = {
            "model_settings": {**request.model_settings, "max_tokens": max_tokens}
        }
        if option.model is not None and option.model in self.models:
            overrides["model"] = self.models[option.model]
        return request.override(**overrides)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage:
        """Send the call with the chosen option's model and ``max_tokens``, traced."""
        decision, step, traced = self._open(request)
        with traced:
            applied = self._apply(request, decision, step)
            response = applied if isinstance(applied, AIMessage) else handler(applied)
            self._close(traced, response)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage:
        """Async `wrap_model_call`."""
        decision, step, traced = self._open(request)
        with traced:
            applied = self._apply(request, decision, step)
            response = applied if isinstance(applied, AIMessage) else await handler(applied)
            self._close(traced, response)
        return response

    def _account(self, state: Any) -> dict[str, Any] | None:
        messages = state.get("messages") or []
        last = messages[-1] if messages else None
        if not isinstance(last, AIMessage) or last.usage_metadata is None:
            return None
        call_id = last.id or ""
        if call_id and call_id in (state.get("roi_charged") or []):
            return None  # already charged (a replay)
        spend, option = self._spent(last)
        if (
            isinstance(self.prior, PriorPredictor)
            and option is not None
            and not stopped_at_cap(last)
        ):
            self.prior.record(option.name, None, spend, 1.0)
        return {"roi_spent": spend.model_dump(), "roi_charged": [call_id] if call_id else []}

    def after_model(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Add the call's real usage to the thread's spend."""
        return self._account(state)

    async def aafter_model(
        self, state: BudgetMiddlewareState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `after_model`."""
        return self._account(state)
