"""roi-agents for LangGraph and LangChain chat models."""

from roi_agents_langgraph.chat import BudgetedChatModel, budgeted, prompt_token_bound

__all__ = ["BudgetedChatModel", "budgeted", "prompt_token_bound"]
