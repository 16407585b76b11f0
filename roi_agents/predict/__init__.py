"""Predictors: forecast each (step, option)'s success probability and cost.

`PriorPredictor` (history), `LocalPredictor` (the learned checkpoint in-process, extra
``[train]``) and `VLLMPredictor` (the same checkpoint behind a vLLM pooling server).
"""

from roi_agents.predict.base import Predictor
from roi_agents.predict.prior import PriorPredictor

__all__ = ["LocalPredictor", "Predictor", "PriorPredictor", "VLLMPredictor"]


def __getattr__(name: str) -> object:
    # Imported on first use: LocalPredictor pulls in torch, VLLMPredictor httpx and tenacity.
    if name == "LocalPredictor":
        from roi_agents.predict.local import LocalPredictor

        return LocalPredictor
    if name == "VLLMPredictor":
        from roi_agents.predict.vllm import VLLMPredictor

        return VLLMPredictor
    raise AttributeError(name)
