"""Training examples: one per recorded (step, option) outcome, from replay files or trace files."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from roi_agents.data.replay import (
    QueryIds,
    ReplayRecord,
    jsonl_lines,
    read_records,
    replay_files,
)
from roi_agents.errors import DataError
from roi_agents.predict.head import model_input
from roi_agents.telemetry.records import replay_records

__all__ = ["Example", "load_examples", "to_examples"]


@dataclass(frozen=True, slots=True)
class Example:
    """One recorded outcome as the model sees it and what it should predict.

    Attributes:
        query_id: the step (query) it belongs to; splits keep a query's options together.
        dataset: the step's dataset or group, if recorded.
        option: the option's name (its tag in the input).
        text: the model's input, ``"[option] step text"``.
        success: the score in [0, 1].
        log_tokens: ``log(output_tokens + 1)``, ``None`` when not recorded.
        log_usd: ``log(cost_usd + 1e-6)``, ``None`` when not recorded.
        input_tokens: the prompt's size, ``None`` when not recorded.
    """

    query_id: str
    dataset: str | None
    option: str
    text: str
    success: float
    log_tokens: float | None
    log_usd: float | None
    input_tokens: int | None = None


def to_examples(records: Iterable[ReplayRecord]) -> list[Example]:
    """Examples from replay records."""
    return [
        Example(
            query_id=r.query_id,
            dataset=r.dataset,
            option=r.option,
            text=model_input((r.option,), r.text),
            success=r.score,
            log_tokens=None if r.output_tokens is None else math.log(r.output_tokens + 1),
            log_usd=None if r.cost_usd is None else math.log(r.cost_usd + 1e-6),
            input_tokens=r.input_tokens,
        )
        for r in records
    ]


def _is_trace(path: Path) -> bool:
    for number, line in jsonl_lines(path):
        try:
            first = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(str(path), number, f"not JSON: {error.msg}") from None
        return isinstance(first, dict) and "attributes" in first and "query_id" not in first
    raise DataError(str(path), None, "empty file")


def load_examples(paths: Sequence[str | Path]) -> list[Example]:
    """Examples from replay files (the format of ``shared/data``) and JSONL trace files.

    A file whose first line is a span (``name`` and ``attributes``) is read as a trace file:
    each decision that ran and whose success is known is one example
    (`roi_agents.telemetry.replay_records`). A folder means every ``*.jsonl`` file in it.

    Raises:
        DataError: on a malformed line or when no example is found.
    """
    files = replay_files(paths)
    examples: list[Example] = []
    ids = QueryIds()
    for file in files:
        records = replay_records(file) if _is_trace(file) else list(read_records(file))
        unique = [r.model_copy(update={"query_id": ids(file, r.query_id)}) for r in records]
        examples.extend(to_examples(unique))
    if not examples:
        raise DataError(", ".join(map(str, files)) or "--data", None, "no examples")
    return examples
