"""roi-agents for LangGraph and LangChain chat models."""

from roi_agents_langgraph.agent import DEFAULT_TOOL_OPTIONS, AgentState, create_budgeted_agent
from roi_agents_langgraph.chat import (
    BudgetedChatModel,
    budgeted,
    count_prompt,
    prompt_token_bound,
    spend_of,
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
    "tool_call_allowance",
    "union",
]
