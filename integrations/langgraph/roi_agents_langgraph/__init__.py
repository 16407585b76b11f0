"""roi-agents for LangGraph and LangChain chat models.

Names are imported on first use, so ``import roi_agents_langgraph`` does not load LangGraph or
LangChain until one of them is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roi_agents_langgraph.agent import DEFAULT_TOOL_OPTIONS, AgentState, create_budgeted_agent
    from roi_agents_langgraph.chat import (
        BudgetedChatModel,
        budgeted,
        count_prompt,
        prompt_token_bound,
        spend_of,
        stopped_at_cap,
    )
    from roi_agents_langgraph.middleware import (
        DEFAULT_OPTIONS,
        BudgetMiddleware,
        BudgetMiddlewareState,
    )
    from roi_agents_langgraph.nodes import (
        BudgetControllerNode,
        MetaCognitiveNode,
        Route,
        add_budget_loop,
        route_budget,
    )
    from roi_agents_langgraph.state import (
        BudgetState,
        add_spend,
        ask_for_budget,
        current_step,
        remaining,
        union,
    )
    from roi_agents_langgraph.tools import BudgetedToolNode, tool_call_allowance

__all__ = [
    "DEFAULT_OPTIONS",
    "DEFAULT_TOOL_OPTIONS",
    "AgentState",
    "BudgetControllerNode",
    "BudgetMiddleware",
    "BudgetMiddlewareState",
    "BudgetState",
    "BudgetedChatModel",
    "BudgetedToolNode",
    "MetaCognitiveNode",
    "Route",
    "add_budget_loop",
    "add_spend",
    "ask_for_budget",
    "budgeted",
    "count_prompt",
    "create_budgeted_agent",
    "current_step",
    "prompt_token_bound",
    "remaining",
    "route_budget",
    "spend_of",
    "stopped_at_cap",
    "tool_call_allowance",
    "union",
]

_MODULES: dict[str, str] = {
    "AgentState": "agent",
    "BudgetControllerNode": "nodes",
    "BudgetMiddleware": "middleware",
    "BudgetMiddlewareState": "middleware",
    "BudgetState": "state",
    "BudgetedChatModel": "chat",
    "BudgetedToolNode": "tools",
    "DEFAULT_OPTIONS": "middleware",
    "DEFAULT_TOOL_OPTIONS": "agent",
    "MetaCognitiveNode": "nodes",
    "Route": "nodes",
    "add_budget_loop": "nodes",
    "add_spend": "state",
    "ask_for_budget": "state",
    "budgeted": "chat",
    "count_prompt": "chat",
    "create_budgeted_agent": "agent",
    "current_step": "state",
    "prompt_token_bound": "chat",
    "remaining": "state",
    "route_budget": "nodes",
    "spend_of": "chat",
    "stopped_at_cap": "chat",
    "tool_call_allowance": "tools",
    "union": "state",
}


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
