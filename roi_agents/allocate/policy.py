"""A controller policy: the plan's risk settings, chosen per budget level by `roi-agents tune`.

How tight a budget is decides how a plan should take its risk. With room to spare, budgeting
each step at its own p90 keeps cut-offs rare at little cost; when the budget barely pays for one
good cheap model on every step, budgeting thirty p90s at once moves steps to a weaker model
for a risk the sum of thirty costs does not run (replay bench, GPQA at 0.1). A `Policy` holds,
for several budgets per step, the settings that earned most on replayed episodes of the
training part; `Controller(policy=...)` plans each turn with the settings of the budget per
pending step nearest to what it has left (in ratio).

Example:
    >>> policy = Policy(
    ...     resource="tokens",
    ...     settings=[
    ...         Setting(per_step=500, quantile="p90", risk="run"),
    ...         Setting(per_step=4000, quantile="p90", risk="step"),
    ...     ],
    ... )
    >>> policy.setting_for(800).risk
    'run'
    >>> policy.setting_for(3000).risk
    'step'
"""

from __future__ import annotations

import codecs
import math
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    model_validator,
)

from roi_agents.errors import InvalidValueError, first_problem
from roi_agents.types import Quantile, Resource, Risk

__all__ = ["Policy", "Risk", "Setting"]


_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
# The largest policy file read: a tuned one is a few kB.
_MOST_BYTES = 10_000_000


class Setting(BaseModel):
    """The plan's risk settings at one budget level, and how they were chosen.

    Attributes:
        per_step: the budget per pending step (in the policy's resource) they apply around.
        quantile: cost quantile the plan budgets at.
        risk: ``step`` or ``run`` (`roi_agents.allocate.allocate`).
        fraction: the bench's budget fraction they were tuned at (always the dearest option
            costs 1), when tuned.
        values: per candidate (``"<quantile>/<risk>"``), the mean value per episode it earned on
            the replayed episodes of the training part.
        margin: the paired gain over the default (``p90/step``) of the candidate that earned
            most, and its standard error bootstrapped over the replayed queries, when tuned: it
            is chosen only when the gain is above the error.
    """

    model_config = _STRICT

    per_step: Annotated[float, Field(gt=0.0, strict=True)]
    quantile: Quantile = "p90"
    risk: Risk = "step"
    fraction: PositiveFloat | None = None
    values: dict[str, float] = Field(default_factory=dict)
    margin: tuple[float, float] | None = None


class Policy(BaseModel):
    """Settings per budget level; `setting_for` picks the one for a turn.

    Attributes:
        resource: what ``per_step`` counts, and what the controller it plans for solves; a
            turn whose budget does not limit it keeps the controller's own settings (with a
            warning).
        settings: at least one, any order, each at its own ``per_step``.
        follow: how far a `ComposedPredictor` follows its learned model (its ``follow``; 1: as
            the checkpoint's calibration says, 0: the prior alone). Tuned with a learned
            predictor; give it to the `ComposedPredictor` you build.
        follows: per candidate ``follow``, the mean value per episode at the default settings
            summed over the budgets, when tuned with a learned predictor.
        data: what it was tuned on, in words.
        online: tuned with the predictor learning from each step's outcome as the episodes
            ran (``roi-agents tune --online``), as ``bench --online`` and the nodes run it.
        seed, train_fraction, split: the split whose training part it was tuned on, when
            tuned: ``bench --policy`` measures it honestly only on that split's test part.
    """

    model_config = _STRICT

    resource: Resource
    settings: Annotated[tuple[Setting, ...], Field(min_length=1)]
    follow: Annotated[float, Field(ge=0.0)] = 1.0
    follows: dict[str, float] = Field(default_factory=dict)
    data: str = ""
    online: bool = False
    seed: Annotated[int, Field(ge=0)] | None = None
    train_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    split: Literal["query", "dataset"] | None = None

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        steps = [s.per_step for s in self.settings]
        if len(set(steps)) < len(steps):
            raise ValueError("settings: two settings have the same per_step")
        return self

    def setting_for(self, per_step: float) -> Setting:
        """The setting whose ``per_step`` is nearest ``per_step`` in ratio (log scale)."""
        if not per_step > 0:
            return min(self.settings, key=lambda s: s.per_step)
        target = math.log(per_step)
        return min(self.settings, key=lambda s: abs(math.log(s.per_step) - target))

    def save(self, path: str | Path) -> None:
        """Write it as JSON.

        Raises:
            InvalidValueError: when the file cannot be written.
        """
        try:
            Path(path).write_text(self.model_dump_json(indent=2) + "\n")
        except (OSError, ValueError) as error:
            raise InvalidValueError("policy", f"cannot write {path}: {error}") from None

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read one `save` wrote.

        Raises:
            InvalidValueError: when the file is missing or is not a policy.
        """
        try:
            with Path(path).open("rb") as file:
                data = file.read(_MOST_BYTES + 1)
        except OSError as error:
            raise InvalidValueError("policy", f"cannot read {path}: {error}") from None
        if len(data) > _MOST_BYTES:
            raise InvalidValueError("policy", f"{path} is over {_MOST_BYTES:,} bytes: not a policy")
        try:
            return cls.model_validate_json(data.removeprefix(codecs.BOM_UTF8))
        except ValidationError as error:
            msg = f"{path} is not a policy: {first_problem(error, 'the file')}"
            raise InvalidValueError("policy", msg) from None
