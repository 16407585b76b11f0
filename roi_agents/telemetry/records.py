"""Read a JSONL trace file back: runs, decisions, and recorded outcomes to learn from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from roi_agents.data.replay import ReplayRecord, jsonl_lines
from roi_agents.errors import DataError, first_problem
from roi_agents.telemetry import names
from roi_agents.types import SKIP

__all__ = ["read_spans", "replay_records"]


_Count = Annotated[int, Field(ge=0, le=2**53)] | None
"""Counts a float holds exactly (a larger one is no count a real run made)."""
_Amount = Annotated[float, Field(ge=0.0, le=1e15)] | None
"""Amounts whose sums stay finite."""
_Share = Annotated[float, Field(ge=0.0, le=1.0)] | None
_EXACT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class _Event(BaseModel):
    model_config = _EXACT

    name: str
    attributes: dict[str, Any] = Field(default_factory=dict)


class _Span(BaseModel):
    """The shape every line must have: names and ids are text, events a list of events."""

    model_config = _EXACT

    name: str
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    attributes: dict[str, Any]
    events: list[_Event] | None = None


class _DecisionFigures(BaseModel):
    """The figures a decision span must hold, where it holds them, to be read back."""

    model_config = _EXACT

    option: str | None = Field(None, alias=names.OPTION)
    model: str | None = Field(None, alias=names.GEN_AI_REQUEST_MODEL)
    tool_calls: _Count = Field(None, alias=names.ACTUAL_TOOL_CALLS)
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

    run_id: str | None = Field(None, alias=names.RUN_ID)
    scope: str | None = Field(None, alias=names.SCOPE)
    resource: Literal["tokens", "usd", "tool_calls"] | None = Field(None, alias=names.RESOURCE)
    decisions: _Count = Field(None, alias=names.DECISIONS)
    skips: _Count = Field(None, alias=names.SKIPS)
    utilization: _Amount = Field(None, alias=names.UTILIZATION)
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
        except ValueError as error:  # an integer of thousands of digits
            raise DataError(str(path), number, f"not JSON: {error}") from None
        if not isinstance(span, dict) or "name" not in span:
            raise DataError(str(path), number, "not a span (needs name and attributes)")
        _check(path, number, _Span, span)
        figures = _FIGURES.get(span["name"])
        if figures is not None:
            _check(path, number, figures, span["attributes"])
        yield number, span


def _check(path: str | Path, number: int, shape: type[BaseModel], data: Any) -> None:
    """Raise `DataError` naming the line and the field where ``data`` is not ``shape``."""
    try:
        shape.model_validate(data)
    except ValidationError as error:
        raise DataError(str(path), number, first_problem(error, "span")) from None


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
            raise DataError(str(path), number, first_problem(error, "span")) from None
        out.append(record)
    return out
