"""Read a JSONL trace file back: runs, decisions, and recorded outcomes to learn from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    ValidationError,
)

from roi_agents.data.replay import ReplayRecord, jsonl_lines
from roi_agents.errors import DataError
from roi_agents.telemetry import names
from roi_agents.types import SKIP

__all__ = ["read_spans", "replay_records"]


_Count = NonNegativeInt | None
_Amount = NonNegativeFloat | None
_Share = Annotated[float, Field(ge=0.0, le=1.0)] | None
_EXACT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class _DecisionFigures(BaseModel):
    """The figures a decision span must hold, where it holds them, to be read back."""

    model_config = _EXACT

    option: str | None = Field(None, alias=names.OPTION)
    input_tokens: _Count = Field(None, alias=names.GEN_AI_USAGE_INPUT_TOKENS)
    output_tokens: _Count = Field(None, alias=names.GEN_AI_USAGE_OUTPUT_TOKENS)
    usd: _Amount = Field(None, alias=names.ACTUAL_USD)
    success: _Share = Field(None, alias=names.SUCCESS)
    p_success: _Share = Field(None, alias=names.P_SUCCESS)
    planned: _Amount = Field(None, alias=names.COST_PLANNED)
    error: float | None = Field(None, alias=names.FORECAST_ERROR)
    truncated: bool | None = Field(None, alias=names.TRUNCATED)


class _PlanFigures(BaseModel):
    """The figures a plan span must hold, where it holds them, to be read back."""

    model_config = _EXACT

    decisions: _Count = Field(None, alias=names.DECISIONS)
    skips: _Count = Field(None, alias=names.SKIPS)
    utilization: float | None = Field(None, alias=names.UTILIZATION)
    budget_tokens: _Amount = Field(None, alias=f"{names.BUDGET}.tokens")
    budget_usd: _Amount = Field(None, alias=f"{names.BUDGET}.usd")
    budget_tool_calls: _Amount = Field(None, alias=f"{names.BUDGET}.tool_calls")
    spent_tokens: _Amount = Field(None, alias=f"{names.SPENT}.tokens")
    spent_usd: _Amount = Field(None, alias=f"{names.SPENT}.usd")
    spent_tool_calls: _Amount = Field(None, alias=f"{names.SPENT}.tool_calls")


_FIGURES: dict[str, type[BaseModel]] = {
    names.SPAN_DECISION: _DecisionFigures,
    names.SPAN_PLAN: _PlanFigures,
}


def read_spans(path: str | Path) -> Iterator[dict[str, Any]]:
    """The spans of a JSONL trace file, as written by `JsonlSpanExporter`.

    Raises:
        DataError: on a line that is not a span object, or a plan or decision span whose
            figures are of the wrong type or out of range (a negative token count, a success
            of 5), named by line and attribute.
    """
    for _, span in _numbered_spans(path):
        yield span


def _numbered_spans(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in jsonl_lines(path):
        try:
            span = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(str(path), number, f"not JSON: {error.msg}") from None
        if not isinstance(span, dict) or "name" not in span:
            raise DataError(str(path), number, "not a span (needs name and attributes)")
        if not isinstance(span.get("attributes"), dict):
            raise DataError(str(path), number, "not a span (needs name and attributes)")
        figures = _FIGURES.get(span["name"])
        if figures is not None:
            try:
                figures.model_validate(span["attributes"])
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise DataError(str(path), number, f"{where}: {first['msg']}") from None
        yield number, span


def replay_records(path: str | Path) -> list[ReplayRecord]:
    """Every decision that ran to its end and whose success is known, as a replay record.

    The step within its trace (``trace_id:step_id``: steps of different runs never merge) is the
    query, the option the option, the step's group the dataset, its recorded text
    (``roi.step.text``) the text; token counts and USD are the recorded usage. This is how a
    deployment learns from its own traffic: the records train a predictor exactly like a replay
    file. A step cut off at its cap (``roi.outcome.truncated``) is left out: its cost is only a
    lower bound, and learning it as the cost would price the option lower than it is.
    """
    out = []
    for number, span in _numbered_spans(path):
        a = span["attributes"]
        if span["name"] != names.SPAN_DECISION or a.get(names.OPTION) in (None, SKIP):
            continue
        if names.SUCCESS not in a or names.GEN_AI_USAGE_INPUT_TOKENS not in a:
            continue
        if a.get(names.TRUNCATED):
            continue
        try:
            record = ReplayRecord.model_validate(
                {
                    "query_id": ":".join(
                        str(k) for k in (span.get("trace_id"), a.get(names.STEP_ID)) if k
                    ),
                    "dataset": a.get(names.STEP_GROUP),
                    "option": str(a[names.OPTION]),
                    "input_tokens": a[names.GEN_AI_USAGE_INPUT_TOKENS],
                    "output_tokens": a.get(names.GEN_AI_USAGE_OUTPUT_TOKENS),
                    "cost_usd": a.get(names.ACTUAL_USD, 0.0),
                    "score": a[names.SUCCESS],
                    "text": str(a.get(names.STEP_TEXT, "")),
                }
            )
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "span"
            raise DataError(str(path), number, f"{where}: {first['msg']}") from None
        out.append(record)
    return out
