"""OpenTelemetry for budgeted runs: spans per plan and decision, GenAI metrics, exporters.

Names live in `roi_agents.telemetry.names`; `RunTrace` emits them through the OpenTelemetry API
(whatever provider the process has); `configure` sets up console, OTLP or JSONL export in one
call (extra ``[telemetry]``: the SDK, imported only when asked for); `roi-agents report` reads a
JSONL trace back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roi_agents.telemetry.records import read_spans, replay_records
from roi_agents.telemetry.tracing import DecisionTrace, RunTrace

if TYPE_CHECKING:
    from roi_agents.telemetry.export import (
        JsonlMetricExporter,
        JsonlSpanExporter,
        Telemetry,
        configure,
        span_to_dict,
    )

__all__ = [
    "DecisionTrace",
    "JsonlMetricExporter",
    "JsonlSpanExporter",
    "RunTrace",
    "Telemetry",
    "configure",
    "read_spans",
    "replay_records",
    "span_to_dict",
]

_EXPORT = frozenset(
    {"JsonlMetricExporter", "JsonlSpanExporter", "Telemetry", "configure", "span_to_dict"}
)


def __getattr__(name: str) -> Any:
    """The exporters, imported with the SDK on first use."""
    if name in _EXPORT:
        from roi_agents.telemetry import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
