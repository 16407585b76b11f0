"""Predictors: forecast each (step, option)'s success probability and cost.

`PriorPredictor` (history), `LocalPredictor` (the learned checkpoint in-process, extra
``[train]``), `VLLMPredictor` (the same checkpoint behind a vLLM pooling server),
`ComposedPredictor` (the prior's level moved per step by a learned predictor: the way to use
one) and `GuardedPredictor` (a learned predictor overruled by the prior where it scores worse).
"""

from roi_agents.predict.base import Learner, Predictor
from roi_agents.predict.composed import ComposedPredictor
from roi_agents.predict.prior import PriorPredictor

__all__ = [
    "ComposedPredictor",
    "GuardedPredictor",
    "Learner",
    "LocalPredictor",
    "Predictor",
    "PriorPredictor",
    "Trust",
    "VLLMPredictor",
]


def __getattr__(name: str) -> object:
    # Imported on first use: LocalPredictor pulls in torch, VLLMPredictor httpx and tenacity;
    # the guard (as VLLMPredictor) the telemetry names, whose package imports roi_agents.
    if name in ("GuardedPredictor", "Trust"):
        from roi_agents.predict import guard

        return getattr(guard, name)
    if name == "LocalPredictor":
        from roi_agents.predict.local import LocalPredictor

        return LocalPredictor
    if name == "VLLMPredictor":
        from roi_agents.predict.vllm import VLLMPredictor

        return VLLMPredictor
    raise AttributeError(name)
