"""Predictors: forecast each (step, option)'s success probability and cost."""

from roi_agents.predict.base import Predictor
from roi_agents.predict.prior import PriorPredictor

__all__ = ["Predictor", "PriorPredictor"]
