"""Count what a chat request will carry before it is sent: messages, tool schemas, tool calls.

A budget that counts message text only is blind to what a chat template renders around it: the
tool schemas (often more than the conversation) and the arguments of earlier tool calls. Every
counter here takes the request as the OpenAI chat API carries it (``messages`` and ``tools`` as
plain dicts), so the core needs no LangChain.

- `VLLMTokenCounter`: the server's own count (``/tokenize`` with the same messages and tools),
  exact for a vLLM server.
- `TokenizerCounter`: a Hugging Face tokenizer's chat template, exact for that model.
- `prompt_bound`: no tokenizer at hand; a documented upper bound (see its docstring).

Example:
    >>> prompt_bound([{"role": "user", "content": "hi"}]).tokens
    34
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, NonNegativeInt

__all__ = [
    "PromptCount",
    "PromptCounter",
    "TokenizerCounter",
    "VLLMTokenCounter",
    "prompt_bound",
]

logger = logging.getLogger(__name__)

Message = Mapping[str, Any]
Tool = Mapping[str, Any]

# Tokens a chat template may add around each message (role, separators, special tokens), once
# per prompt, and around the tool schemas (real templates wrap them in a fixed preamble of a few
# hundred bytes: Qwen's is about 330).
PER_MESSAGE = 16
PER_PROMPT = 16
PER_TOOL = 16
TOOLS_PREAMBLE = 512


class PromptCount(BaseModel):
    """A request's prompt size and how it was found.

    Attributes:
        tokens: the prompt's tokens (an upper bound when ``exact`` is False).
        counted_by: ``"vllm"``, ``"tokenizer"``, ``"bound"`` or a custom counter's name.
        exact: whether it is the model's own count.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: NonNegativeInt
    counted_by: str
    exact: bool


@runtime_checkable
class PromptCounter(Protocol):
    """Counts the prompt tokens of a chat request (messages and tools as OpenAI dicts)."""

    def count(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> PromptCount:
        """The prompt's size, tools and tool-call arguments included."""
        ...

    async def acount(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> PromptCount:
        """Async `count`."""
        ...


def _json_bytes(value: Any) -> int:
    # Indented and ASCII-escaped JSON is at least as long as any form a template renders with
    # ``tojson`` (compact or indented, escaped or not), byte for byte.
    return len(json.dumps(value, indent=4, ensure_ascii=True, default=str).encode("utf-8"))


def _text_bytes(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    return _json_bytes(content)  # content parts (text blocks, images by reference)


def prompt_bound(messages: Sequence[Message], tools: Sequence[Tool] = ()) -> PromptCount:
    """An upper bound on a chat request's prompt tokens, without the model's tokenizer.

    A byte-level BPE token covers at least one byte, so bytes bound tokens from above. Counted:
    each message's UTF-8 text plus ``PER_MESSAGE`` tokens for its role and separators; its
    ``tool_calls`` and any other field but ``role`` and ``content`` as indented JSON; each tool
    schema as indented JSON plus ``PER_TOOL``, and ``TOOLS_PREAMBLE`` once when there are tools;
    ``PER_PROMPT`` once. A template whose fixed text exceeds these allowances (or a tokenizer that
    is not byte-level) can break the bound: give a `PromptCounter` then.
    """
    total = PER_PROMPT
    for message in messages:
        total += PER_MESSAGE + _text_bytes(message.get("content"))
        extra = {k: v for k, v in message.items() if k not in ("role", "content") and v}
        if extra:
            total += _json_bytes(extra)
    if tools:
        total += TOOLS_PREAMBLE + sum(PER_TOOL + _json_bytes(tool) for tool in tools)
    return PromptCount(tokens=total, counted_by="bound", exact=False)


class VLLMTokenCounter:
    """The exact count from a vLLM server's ``/tokenize``, with the same chat template and tools.

    When the server cannot answer (down, an old version, garbage), the count falls back to
    `prompt_bound` and says so (``counted_by="bound"``) and a warning is logged.

    Args:
        base_url: the server's root or its ``/v1`` URL.
        model: the served model name.
        timeout: seconds per request.
        client: an ``httpx.Client`` to reuse.
        async_client: an ``httpx.AsyncClient`` to reuse.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        root = base_url.rstrip("/").removesuffix("/v1")
        self.url = f"{root}/tokenize"
        self.model = model
        self.timeout = timeout
        self._client = client
        self._async_client = async_client

    def _body(self, messages: Sequence[Message], tools: Sequence[Tool]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": True,
        }
        if tools:
            body["tools"] = [dict(t) for t in tools]
        return body

    def _read(
        self, response: httpx.Response, messages: Sequence[Message], tools: Sequence[Tool]
    ) -> PromptCount:
        try:
            response.raise_for_status()
            count = response.json()["count"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"count is {count!r}")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            return self._fallback(error, messages, tools)
        return PromptCount(tokens=count, counted_by="vllm", exact=True)

    def _fallback(
        self, error: Exception, messages: Sequence[Message], tools: Sequence[Tool]
    ) -> PromptCount:
        logger.warning("vLLM /tokenize failed (%s): counting by the byte bound", error)
        return prompt_bound(messages, tools)

    def count(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> PromptCount:
        """The server's count of the rendered prompt (falls back to `prompt_bound`)."""
        try:
            if self._client is not None:
                response = self._client.post(
                    self.url, json=self._body(messages, tools), timeout=self.timeout
                )
            else:
                response = httpx.post(
                    self.url, json=self._body(messages, tools), timeout=self.timeout
                )
        except httpx.HTTPError as error:
            return self._fallback(error, messages, tools)
        return self._read(response, messages, tools)

    async def acount(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> PromptCount:
        """Async `count`."""
        try:
            if self._async_client is not None:
                response = await self._async_client.post(
                    self.url, json=self._body(messages, tools), timeout=self.timeout
                )
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.post(self.url, json=self._body(messages, tools))
        except httpx.HTTPError as error:
            return self._fallback(error, messages, tools)
        return self._read(response, messages, tools)


class TokenizerCounter:
    """The exact count from a Hugging Face tokenizer's chat template (the model's own).

    Args:
        tokenizer: anything with transformers' ``apply_chat_template`` (a
            ``PreTrainedTokenizerBase``).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> PromptCount:
        """The tokens of the rendered prompt, generation prompt included."""
        ids = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=[dict(t) for t in tools] or None,
            add_generation_prompt=True,
            tokenize=True,
        )
        if isinstance(ids, Mapping):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return PromptCount(tokens=len(ids), counted_by="tokenizer", exact=True)

    async def acount(self, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> PromptCount:
        """Async `count` (the tokenizer runs in process)."""
        return self.count(messages, tools)
