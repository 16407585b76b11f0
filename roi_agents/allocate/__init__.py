"""The budget controller: multiple-choice knapsack allocation with hard caps.

See `roi_agents.allocate.controller` for the method and its guarantees.
"""

from roi_agents.allocate.controller import Controller, SolverName, allocate
from roi_agents.allocate.policy import Policy, Risk, Setting

__all__ = ["Controller", "Policy", "Risk", "Setting", "SolverName", "allocate"]
