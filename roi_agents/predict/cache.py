"""`CachedPredictor`: forecast each (step, option) once across re-planning turns.

The controller re-plans after every step and asks again for the forecasts of every pending step.
A learned model gives the same answer for the same input, so the second ask is wasted work: the
cache sends only the (step, option) pairs it has not seen to the predictor it wraps, in one
batched call. Do not wrap a predictor whose forecasts change as it learns online (the prior).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from roi_agents.errors import InvalidValueError
from roi_agents.predict.base import Predictor
from roi_agents.types import SKIP, Forecast, Option, Step

__all__ = ["CachedPredictor"]

_Key = tuple[str, str, int | None, Option]


class CachedPredictor:
    """Remembers up to ``size`` forecasts, keyed by step id, text, prompt size and option.

    Forecasts made while the wrapped predictor reports a fallback (its ``last_fallback`` is
    set) are passed on but not remembered, so a server that comes back is asked again.

    Args:
        predictor: the predictor to ask on a miss.
        size: forecasts kept; the least recently used go first.
    """

    def __init__(self, predictor: Predictor, *, size: int = 100_000) -> None:
        if size < 1:
            raise InvalidValueError("size", f"must be >= 1, got {size}")
        self.predictor = predictor
        self.size = size
        self._memory: OrderedDict[_Key, Forecast] = OrderedDict()

    @staticmethod
    def _keys(steps: Sequence[Step]) -> list[_Key]:
        return [
            (s.id, s.text, s.input_tokens, o) for s in steps for o in s.options if o.name != SKIP
        ]

    def _missing(self, steps: Sequence[Step]) -> list[Step]:
        return [
            step for step in steps if any(key not in self._memory for key in self._keys([step]))
        ]

    def _merge(
        self, steps: Sequence[Step], fresh: Sequence[Step], got: list[Forecast]
    ) -> list[Forecast]:
        fresh_keys = self._keys(fresh)
        if len(fresh_keys) != len(got):
            msg = f"{len(got)} forecasts for {len(fresh_keys)} (step, option) pairs"
            raise InvalidValueError("forecasts", msg)
        now = dict(zip(fresh_keys, got, strict=True))
        if getattr(self.predictor, "last_fallback", None) is None:
            self._memory.update(now)
            while len(self._memory) > self.size:
                self._memory.popitem(last=False)
        out = []
        for key in self._keys(steps):
            forecast = now.get(key) or self._memory[key]
            if key in self._memory:
                self._memory.move_to_end(key)
            out.append(forecast)
        return out

    def predict(self, steps: Sequence[Step]) -> list[Forecast]:
        """The forecasts of ``steps``; only the unseen ones are asked for."""
        fresh = self._missing(steps)
        return self._merge(steps, fresh, self.predictor.predict(fresh) if fresh else [])

    async def apredict(self, steps: Sequence[Step]) -> list[Forecast]:
        """Async `predict`."""
        fresh = self._missing(steps)
        return self._merge(steps, fresh, await self.predictor.apredict(fresh) if fresh else [])
