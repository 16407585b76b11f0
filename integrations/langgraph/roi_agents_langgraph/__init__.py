"""roi-agents for LangGraph and LangChain chat models."""

from roi_agents_langgraph.chat import BudgetedChatModel, budgeted, prompt_token_bound
from roi_agents_langgraph.nodes import (
    BudgetControllerNode,
    MetaCognitiveNode,
    Route,
    route_budget,
)
from roi_agents_langgraph.state import BudgetState, add_spend, current_step, remaining, union

__all__ = [
    "BudgetControllerNode",
    "BudgetState",
    "BudgetedChatModel",
    "MetaCognitiveNode",
    "Route",
    "add_spend",
    "budgeted",
    "current_step",
    "prompt_token_bound",
    "remaining",
    "route_budget",
    "union",
]
