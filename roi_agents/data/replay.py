"""Replay files: real recorded outcomes, one JSON object per (query, option) line.

The format (see ``shared/data/README.md`` in the project):

=================== ==========================================================================
field               meaning
=================== ==========================================================================
``query_id``        unique id of the query within the file (required)
``option``          the way the query was answered, e.g. a model or an effort level (required)
``score``           quality of the answer in [0, 1]; graded scores allowed (required)
``cost_usd``        cost at list prices (required unless both token counts are given)
``input_tokens``    prompt tokens
``output_tokens``   answer tokens (thinking included)
``thinking_tokens`` reasoning tokens inside ``output_tokens``
``dataset``         the benchmark (and subject) of the query
``text``            the prompt as the model saw it
=================== ==========================================================================

Ids, options and datasets are names (`Name`: printable, at most 256 characters); a cost is at
most `MAX_USD` and a token count at most `MAX_COUNT`, as a budget's. Any number of options per
query is accepted, and a query may lack some options. Query ids need
only be unique within a file: when files are loaded together, a query whose id an earlier file
already used gets the file's name after it (`FROM_FILE`), so queries of different files never
merge; seeded splits read the id before it (`split_id`), whichever files are loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from roi_agents.errors import DataError
from roi_agents.types import MAX_COUNT, MAX_USD, Name, Resource, Spend

__all__ = [
    "ReplayQuery",
    "ReplayRecord",
    "jsonl_lines",
    "load_replay",
    "read_records",
    "replay_files",
    "write_records",
]


_Tokens = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class ReplayRecord(BaseModel):
    """One recorded outcome: a query answered one way."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    query_id: Name
    option: Name
    score: Annotated[float, Field(ge=0.0, le=1.0)]
    cost_usd: Annotated[float, Field(ge=0.0, le=MAX_USD)] | None = None
    input_tokens: _Tokens | None = None
    output_tokens: _Tokens | None = None
    thinking_tokens: _Tokens | None = None
    dataset: Name | None = None
    text: str = ""
    _where: tuple[str, int] | None = PrivateAttr(None)

    @property
    def where(self) -> tuple[str, int] | None:
        """The file and 1-based line it was read from (`read_records`), if it was."""
        return self._where

    @model_validator(mode="after")
    def _has_a_cost(self) -> Self:
        if self.cost_usd is None and (self.input_tokens is None or self.output_tokens is None):
            msg = "cost_usd: needed unless both input_tokens and output_tokens are given"
            raise ValueError(msg)
        return self

    @property
    def spend(self) -> Spend:
        """The recorded spend (missing token counts as 0)."""
        return Spend(
            input_tokens=self.input_tokens or 0,
            output_tokens=self.output_tokens or 0,
            usd=self.cost_usd or 0.0,
        )

    def cost(self, resource: Resource) -> float | None:
        """The recorded cost in ``resource``, ``None`` when the file does not say."""
        if resource == "usd":
            return self.cost_usd
        if resource == "tokens":
            if self.input_tokens is None or self.output_tokens is None:
                return None
            return float(self.input_tokens + self.output_tokens)
        return 0.0


@dataclass(frozen=True, slots=True)
class ReplayQuery:
    """A query with every recorded way of answering it."""

    query_id: str
    dataset: str | None
    text: str
    outcomes: dict[str, ReplayRecord]


FROM_FILE = " @ "


def split_id(query_id: str) -> str:
    """The id a seeded split reads: ``query_id`` without the file a clash appended."""
    return query_id.partition(FROM_FILE)[0]


class QueryIds:
    """Gives each file's query ids, making them unique across the files loaded together."""

    def __init__(self) -> None:
        self._earlier: set[str] = set()
        self._current: set[str] = set()
        self._file: Path | None = None

    def __call__(self, file: Path, query_id: str) -> str:
        """The id of query ``query_id`` of ``file``, files taken in order."""
        if file != self._file:
            self._earlier |= self._current
            self._current, self._file = set(), file
        self._current.add(query_id)
        return f"{query_id}{FROM_FILE}{file.name}" if query_id in self._earlier else query_id


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a JSONL file with their 1-based numbers.

    Raises:
        DataError: when the file cannot be read, or a line is not UTF-8 (named by number).
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise DataError(str(path), None, f"cannot read: {error.strerror}") from error
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(str(path), number, f"not UTF-8: {error.reason}") from None
            if line.strip():
                yield number, line


def read_records(path: str | Path) -> Iterator[ReplayRecord]:
    """Yield the validated records of one replay file.

    Raises:
        DataError: naming the file and line of the first malformed record, or of a (query,
            option) pair recorded a second time.
    """
    seen: dict[tuple[str, str], int] = {}
    for number, line in jsonl_lines(path):
        try:
            record = ReplayRecord.model_validate_json(line)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'line'}: {e['msg']}"
                for e in error.errors()
            )
            raise DataError(str(path), number, problems) from None
        first = seen.setdefault((record.query_id, record.option), number)
        if first != number:
            msg = (
                f"query {record.query_id!r} has option {record.option!r} twice "
                f"(first on line {first})"
            )
            raise DataError(str(path), number, msg)
        record._where = (str(path), number)
        yield record


def load_replay(paths: str | Path | Iterable[str | Path]) -> list[ReplayQuery]:
    """Load replay files into queries, in order of first appearance.

    Args:
        paths: one file or several; a folder means every ``*.jsonl`` file in it.

    Raises:
        DataError: on a malformed line, a (query, option) pair recorded twice, or no records.
    """
    files = replay_files([paths] if isinstance(paths, str | Path) else paths)
    queries: dict[str, ReplayQuery] = {}
    ids = QueryIds()
    for file in files:
        for record in read_records(file):  # a pair twice in one file is named by its line
            query_id = ids(file, record.query_id)
            query = queries.get(query_id)
            if query is None:
                query = ReplayQuery(query_id, record.dataset, record.text, {})
                queries[query_id] = query
            query.outcomes[record.option] = record
    if not queries:
        raise DataError(", ".join(str(f) for f in files), None, "no records")
    return list(queries.values())


def replay_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named: a folder means every ``*.jsonl`` file in it.

    Raises:
        DataError: on a folder holding no ``*.jsonl`` file.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise DataError(str(path), None, "folder holds no *.jsonl replay file")
            files.extend(found)
        else:
            files.append(path)
    return files


def write_records(records: Iterable[ReplayRecord], path: str | Path) -> int:
    """Write records as a replay file (atomically: a temporary file, then a rename).

    Returns:
        The number of records written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    count = 0
    with partial.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.model_dump(exclude_none=True)) + "\n")
            count += 1
    partial.replace(path)
    return count
