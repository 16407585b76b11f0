"""roi-agents: budget-aware planning for LangGraph agents.

Forecast what each pending step would cost and be worth, allocate the remaining budget over them
(an ordered stochastic multiple-choice knapsack), and cap every call so the budget holds.

Example:
    >>> from roi_agents import Budget, Controller, Option, PriorPredictor, Step
    >>> steps = [Step(id="s1", text="Plan the trip", options=[Option(name="fast")])]
    >>> plan = Controller(predictor=PriorPredictor()).plan(steps, Budget(tokens=5_000))
    >>> plan.next.option
    'fast'
"""

__version__ = "0.1.0"

from roi_agents.allocate import Controller, allocate
from roi_agents.errors import BudgetExceeded, DataError, InvalidValueError, RoiAgentsError
from roi_agents.predict import Predictor, PriorPredictor
from roi_agents.prompt import (
    PromptCount,
    PromptCounter,
    TokenizerCounter,
    VLLMTokenCounter,
    prompt_bound,
)
from roi_agents.session import (
    BudgetQuestion,
    BudgetReport,
    BudgetSession,
    Hold,
    OnExhausted,
    price,
)
from roi_agents.types import (
    SKIP,
    Budget,
    Cap,
    CostForecast,
    Decision,
    Forecast,
    Option,
    Plan,
    Quantile,
    Resource,
    Spend,
    Step,
)

__all__ = [
    "SKIP",
    "Budget",
    "BudgetExceeded",
    "BudgetQuestion",
    "BudgetReport",
    "BudgetSession",
    "Cap",
    "Controller",
    "CostForecast",
    "DataError",
    "Decision",
    "Forecast",
    "Hold",
    "InvalidValueError",
    "OnExhausted",
    "Option",
    "Plan",
    "Predictor",
    "PriorPredictor",
    "PromptCount",
    "PromptCounter",
    "Quantile",
    "Resource",
    "RoiAgentsError",
    "Spend",
    "Step",
    "TokenizerCounter",
    "VLLMTokenCounter",
    "__version__",
    "allocate",
    "price",
    "prompt_bound",
]
