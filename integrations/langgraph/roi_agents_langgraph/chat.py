"""Put a chat model's every call under a budget: counted, reserved, capped and charged.

The translation between LangChain and the core budget turn (`roi_agents.session`): messages and
bound tools become the OpenAI request a `PromptCounter` counts, ``usage_metadata`` becomes
`Spend` by `roi_agents.session.price`, and the call runs inside `BudgetSession.call`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool

from roi_agents.errors import InvalidValueError
from roi_agents.ledger.base import Ledger
from roi_agents.prompt import PromptCount, PromptCounter, prompt_bound
from roi_agents.session import BudgetSession, Call, price
from roi_agents.types import Budget, Decision, Option, Spend, Step

__all__ = [
    "BudgetedChatModel",
    "budgeted",
    "count_prompt",
    "prompt_token_bound",
    "spend_of",
    "stopped_at_cap",
]

_ANY = Option(name="call")


def stopped_at_cap(reply: AIMessage) -> bool:
    """Whether the reply stopped at its ``max_tokens`` (a ``finish_reason`` of ``"length"``).

    Its cost is then only a lower bound, and its success is not the option's.
    """
    return (reply.response_metadata or {}).get("finish_reason") == "length"


def spend_of(reply: AIMessage, option: Option | None) -> Spend | None:
    """A reply's spend from its ``usage_metadata`` (``None`` when it carries none)."""
    usage = reply.usage_metadata
    if usage is None:
        return None
    return price(option, usage["input_tokens"], usage["output_tokens"])


def _messages(value: LanguageModelInput) -> list[BaseMessage]:
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    return convert_to_messages(value)


def _openai(
    messages: Sequence[BaseMessage], tools: Sequence[Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    as_dicts = convert_to_openai_messages(list(messages))
    return (
        as_dicts if isinstance(as_dicts, list) else [as_dicts],
        [dict(convert_to_openai_tool(t)) for t in tools],
    )


def count_prompt(
    counter: PromptCounter | None, messages: Sequence[BaseMessage], tools: Sequence[Any] = ()
) -> PromptCount:
    """The prompt of a request carrying ``messages`` and ``tools``, as the model will see it.

    ``tools`` may be LangChain tools or OpenAI tool dicts; tool-call arguments in the messages
    count too. Without a counter, the byte bound (`roi_agents.prompt.prompt_bound`).
    """
    request, schemas = _openai(messages, tools)
    return (counter.count if counter else prompt_bound)(request, schemas)


async def acount_prompt(
    counter: PromptCounter | None, messages: Sequence[BaseMessage], tools: Sequence[Any] = ()
) -> PromptCount:
    """Async `count_prompt`."""
    if counter is None:
        return count_prompt(None, messages, tools)
    request, schemas = _openai(messages, tools)
    return await counter.acount(request, schemas)


def prompt_token_bound(messages: Sequence[BaseMessage], tools: Sequence[Any] = ()) -> int:
    """An upper bound on the prompt's tokens without the model's tokenizer (tools included)."""
    return count_prompt(None, messages, tools).tokens


def _check_settings(settings: Mapping[str, Any]) -> None:
    """Refuse settings that would let a call spend past its reservation."""
    for name in ("max_tokens", "max_completion_tokens"):
        if settings.get(name) is not None:
            msg = f"the budget sets {name}; pass a decision or an option's max_tokens instead"
            raise InvalidValueError(name, msg)
    n = settings.get("n")
    if n is not None and n != 1:
        msg = f"n={n} asks for {n} answers, each spending a prompt and a cap: use n=1"
        raise InvalidValueError("n", msg)


class BudgetedChatModel:
    """A chat model whose every call is counted, reserved, capped and charged by a session.

    Before each call the whole request is counted (messages, the tools bound to the model,
    tool-call arguments), the call's cap is reserved in the session's ledger, and the call is
    sent with ``max_tokens`` = the cap less the prompt (never more than the option's own) and
    the option's model. A call whose prompt alone does not fit is never sent
    (`BudgetExceeded`). The reply's real usage is charged once; a call that raises after it was
    sent is charged at its cap. Calls from many threads or tasks share the budget safely.

    Args:
        model: any langchain-core chat model (tools bound with ``bind_tools`` are counted).
        session: the budget to spend from.
        counter: the model's own prompt count (`roi_agents.VLLMTokenCounter`, a tokenizer);
            default: the byte bound.
        option: the option of calls made without one.
    """

    def __init__(
        self,
        model: BaseChatModel | Runnable[Any, Any],
        *,
        session: BudgetSession,
        counter: PromptCounter | None = None,
        option: Option = _ANY,
    ) -> None:
        bound: Mapping[str, Any] = getattr(model, "kwargs", None) or {}
        _check_settings({"n": getattr(model, "n", None) or bound.get("n")})
        self.model = model
        self.session = session
        self.counter = counter
        self.option = option
        self.tools = list(bound.get("tools") or [])  # bound with bind_tools
        self.last_max_tokens: int | None = None

    @property
    def spent(self) -> Spend:
        """What the session charged in all."""
        return self.session.spent

    def _bind(self, call: Call) -> Runnable[Any, Any]:
        settings: dict[str, Any] = {}
        if call.max_tokens is not None:
            settings["max_tokens"] = call.max_tokens
        if call.option.model is not None:
            settings["model"] = call.option.model
        self.last_max_tokens = call.max_tokens
        return self.model.bind(**settings)

    def invoke(
        self,
        value: LanguageModelInput,
        *,
        decision: Decision | None = None,
        option: Option | None = None,
        step: Step | None = None,
        call_id: str | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Call the model under the budget (and the decision's cap, when given).

        Args:
            value: the prompt, as for any chat model.
            decision: the step's decision; without one the cap is what is left.
            option: the decision's option (its model, ``max_tokens`` and prices).
            step: the step, for the decision's span.
            call_id: the call's id (default: a fresh one per call, so a retry is a new call).
            **kwargs: passed to the model.

        Raises:
            BudgetExceeded: the prompt alone does not fit what is left (nothing is sent).
            InvalidValueError: the decision is a skip, or chose another option; ``max_tokens``
                or ``n`` > 1 given here (the budget sets the first, and refuses the second).
        """
        _check_settings(kwargs)
        messages = _messages(value)
        count = count_prompt(self.counter, messages, self.tools)
        chosen = option or self.option
        with self.session.call(decision, chosen, prompt=count, step=step, call_id=call_id) as call:
            reply = self._bind(call).invoke(messages, **kwargs)
            assert isinstance(reply, AIMessage)
            call.charge(spend_of(reply, chosen), truncated=stopped_at_cap(reply))
        return reply

    async def ainvoke(
        self,
        value: LanguageModelInput,
        *,
        decision: Decision | None = None,
        option: Option | None = None,
        step: Step | None = None,
        call_id: str | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Async `invoke`."""
        _check_settings(kwargs)
        messages = _messages(value)
        count = await acount_prompt(self.counter, messages, self.tools)
        chosen = option or self.option
        call = self.session.call(decision, chosen, prompt=count, step=step, call_id=call_id)
        async with call:
            reply = await self._bind(call).ainvoke(messages, **kwargs)
            assert isinstance(reply, AIMessage)
            await call.acharge(spend_of(reply, chosen), truncated=stopped_at_cap(reply))
        return reply


def budgeted(
    model: BaseChatModel | Runnable[Any, Any],
    *,
    budget: Budget | None = None,
    ledger: Ledger | None = None,
    scope: str | None = None,
    session: BudgetSession | None = None,
    counter: PromptCounter | None = None,
    option: Option = _ANY,
) -> BudgetedChatModel:
    """Wrap ``model`` so every call is reserved, capped and charged (see `BudgetedChatModel`).

    Give a ``budget`` (the wrapper's own), a ``ledger`` and ``scope`` (shared with other
    workers; with a ``budget`` too, a new scope gets it as its limits), or a ``session``.

    Example:
        >>> chat = budgeted(ChatOpenAI(...), budget=Budget(tokens=2_000))  # doctest: +SKIP
        >>> chat.invoke("Summarise the report")  # capped at what is left  # doctest: +SKIP
    """
    if session is None:
        session = BudgetSession(budget, ledger=ledger, scope=scope)
    return BudgetedChatModel(model, session=session, counter=counter, option=option)
