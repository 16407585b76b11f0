"""The `Predictor` protocol every forecaster implements; `Learner`, for those that learn online."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from roi_agents.types import Forecast, Spend, Step

__all__ = ["Learner", "Predictor"]


@runtime_checkable
class Predictor(Protocol):
    """Forecasts success probability and cost for every (step, option) pair.

    One call covers a whole planning turn, so a remote predictor makes one batched request.
    Options named ``skip`` get no forecast. Implementations must return finite, validated
    `Forecast` objects or raise; they never return a partial list.
    """

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        """One forecast per (step, option) of ``steps``, in step then option order."""
        ...

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        """Async `predict`."""
        ...


@runtime_checkable
class Learner(Protocol):
    """A predictor that learns from the outcomes of the steps it forecast."""

    def observe(
        self,
        step: Step,
        option: str,
        spend: Spend,
        success: float | None,
        *,
        truncated: bool = False,
    ) -> None:
        """Record that ``option`` ran on ``step``, spent ``spend`` and scored ``success``.

        ``success`` is ``None`` when nothing graded the step: only its cost is learned.
        ``truncated``: the step was cut off at its cap, so its cost was at least ``spend``.
        """
        ...
