"""Read a JSONL trace file back: runs, decisions, and recorded outcomes to learn from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roi_agents.data.replay import ReplayRecord, jsonl_lines
from roi_agents.errors import DataError
from roi_agents.telemetry import names
from roi_agents.types import SKIP

__all__ = ["read_spans", "replay_records"]


def read_spans(path: str | Path) -> Iterator[dict[str, Any]]:
    """The spans of a JSONL trace file, as written by `JsonlSpanExporter`.

    Raises:
        DataError: on a line that is not a span object.
    """
    for number, line in jsonl_lines(path):
        try:
            span = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(str(path), number, f"not JSON: {error.msg}") from None
        if not isinstance(span, dict) or "name" not in span or "attributes" not in span:
            raise DataError(str(path), number, "not a span (needs name and attributes)")
        yield span


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
    for span in read_spans(path):
        a = span["attributes"]
        if span["name"] != names.SPAN_DECISION or a.get(names.OPTION) in (None, SKIP):
            continue
        if names.SUCCESS not in a or names.GEN_AI_USAGE_INPUT_TOKENS not in a:
            continue
        if a.get(names.TRUNCATED):
            continue
        out.append(
            ReplayRecord(
                query_id=":".join(str(k) for k in (span.get("trace_id"), a[names.STEP_ID]) if k),
                dataset=a.get(names.STEP_GROUP),
                option=str(a[names.OPTION]),
                input_tokens=int(a[names.GEN_AI_USAGE_INPUT_TOKENS]),
                output_tokens=int(a[names.GEN_AI_USAGE_OUTPUT_TOKENS]),
                cost_usd=float(a.get(names.ACTUAL_USD, 0.0)),
                score=float(a[names.SUCCESS]),
                text=str(a.get(names.STEP_TEXT, "")),
            )
        )
    return out
