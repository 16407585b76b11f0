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

from roi_agents.allocate import Controller, allocate
from roi_agents.errors import BudgetExceeded, DataError, InvalidValueError, RoiAgentsError
from roi_agents.predict import Predictor, PriorPredictor
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

__version__ = "0.1.0"

__all__ = [
    "SKIP",
    "Budget",
    "BudgetExceeded",
    "Cap",
    "Controller",
    "CostForecast",
    "DataError",
    "Decision",
    "Forecast",
    "InvalidValueError",
    "Option",
    "Plan",
    "Predictor",
    "PriorPredictor",
    "Quantile",
    "Resource",
    "RoiAgentsError",
    "Spend",
    "Step",
    "__version__",
    "allocate",
]
