"""Enforce a decision's cap on a real chat-model call, and account for what it really used."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue

from roi_agents.errors import BudgetExceeded, InvalidValueError
from roi_agents.types import Budget, Cap, Decision, Option, Spend

__all__ = ["BudgetedChatModel", "budgeted", "prompt_token_bound", "stopped_at_cap"]

# Tokens a chat template may add per message (role, separators, special tokens), and once.
_PER_MESSAGE = 16
_PER_PROMPT = 16


def stopped_at_cap(reply: AIMessage) -> bool:
    """Whether the reply stopped at its ``max_tokens`` (a ``finish_reason`` of ``"length"``).

    Its cost is then only a lower bound, and its success is not the option's.
    """
    return (reply.response_metadata or {}).get("finish_reason") == "length"


def prompt_token_bound(messages: Sequence[BaseMessage]) -> int:
    """An upper bound on the prompt's tokens without the model's tokenizer.

    A byte-level BPE token covers at least one byte, so the UTF-8 size of the text plus a
    template allowance per message bounds the count from above. It overestimates (so the
    output cap is conservative) but never under: the budget holds.
    """
    total = _PER_PROMPT
    for message in messages:
        content = message.content
        text = content if isinstance(content, str) else str(content)
        total += len(text.encode("utf-8")) + _PER_MESSAGE
    return total


def _messages(value: LanguageModelInput) -> list[BaseMessage]:
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    return convert_to_messages(value)


class BudgetedChatModel:
    """A chat model whose every call is capped by a `Decision` and accounted for.

    Each call is sent with ``max_tokens`` = the decision's cap minus an upper bound on the
    prompt's tokens (and never more than the option's own ``max_tokens``), and with the option's
    model when it names one; a call whose cap leaves no room is never sent (`BudgetExceeded`).
    What the server reports in ``usage_metadata`` is added to `spent`.

    Args:
        model: any langchain-core chat model.
        budget: the run's budget; calls are also capped by what it has left.
        count_tokens: exact prompt counting, when the model's tokenizer is at hand.
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        budget: Budget | None = None,
        count_tokens: Callable[[Sequence[BaseMessage]], int] | None = None,
    ) -> None:
        self.model = model
        self.budget = budget
        self.count_tokens = count_tokens or prompt_token_bound
        self.spent = Spend()
        self.calls = 0
        self.last_max_tokens: int | None = None
        self._lock = threading.Lock()

    @property
    def remaining(self) -> Budget | None:
        """What the run's budget has left, if it has one."""
        return None if self.budget is None else self.budget.remaining_after(self.spent)

    def _prepare(
        self, value: LanguageModelInput, decision: Decision, option: Option
    ) -> tuple[list[BaseMessage], dict[str, Any]]:
        if decision.skipped:
            raise InvalidValueError("decision", f"step {decision.step_id!r} is skipped: no call")
        if option.name != decision.option:
            msg = f"decision chose {decision.option!r}, not {option.name!r}"
            raise InvalidValueError("option", msg)
        messages = _messages(value)
        prompt = self.count_tokens(messages)
        cap = decision.cap
        left = self.remaining
        if left is not None:
            cap = Cap(
                tokens=_least(cap.tokens, left.tokens),
                usd=_least(cap.usd, left.usd),
                tool_calls=cap.tool_calls,
            )
        max_tokens = cap.max_output_tokens(prompt, option)
        if max_tokens <= 0:
            limit = cap.tokens if cap.tokens is not None else 0
            raise BudgetExceeded(resource="tokens", scope="call", limit=limit, requested=prompt + 1)
        settings: dict[str, Any] = {"max_tokens": max_tokens}
        if option.model is not None:
            settings["model"] = option.model
        self.last_max_tokens = max_tokens
        return messages, settings

    def _account(self, message: AIMessage, option: Option) -> AIMessage:
        usage = message.usage_metadata
        if usage is None:
            msg = "the model reported no usage_metadata: the spend cannot be accounted for"
            raise InvalidValueError("usage_metadata", msg)
        spend = Spend(
            input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"],
            usd=option.usd(usage["input_tokens"], usage["output_tokens"]),
        )
        with self._lock:
            self.spent = self.spent + spend
            self.calls += 1
        return message

    def invoke(
        self, value: LanguageModelInput, *, decision: Decision, option: Option, **kwargs: Any
    ) -> AIMessage:
        """Call the model under the decision's cap.

        Raises:
            BudgetExceeded: the cap leaves no room for an answer (nothing is sent).
            InvalidValueError: the decision is a skip, or names another option.
        """
        messages, settings = self._prepare(value, decision, option)
        message = self.model.bind(**settings).invoke(messages, **kwargs)
        assert isinstance(message, AIMessage)
        return self._account(message, option)

    async def ainvoke(
        self, value: LanguageModelInput, *, decision: Decision, option: Option, **kwargs: Any
    ) -> AIMessage:
        """Async `invoke`."""
        messages, settings = self._prepare(value, decision, option)
        message = await self.model.bind(**settings).ainvoke(messages, **kwargs)
        assert isinstance(message, AIMessage)
        return self._account(message, option)


def _least(a: float | None, b: float | None) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def budgeted(
    model: BaseChatModel,
    *,
    budget: Budget | None = None,
    count_tokens: Callable[[Sequence[BaseMessage]], int] | None = None,
) -> BudgetedChatModel:
    """Wrap ``model`` so every call obeys its decision's cap (see `BudgetedChatModel`)."""
    return BudgetedChatModel(model, budget=budget, count_tokens=count_tokens)
