"""OpenTelemetry for budgeted runs: spans per plan and decision, GenAI metrics, exporters.

Names live in `roi_agents.telemetry.names`; `RunTrace` emits them; `configure` sets up console,
OTLP or JSONL export in one call; `roi-agents report` reads a JSONL trace back.
"""

from roi_agents.telemetry.export import (
    JsonlMetricExporter,
    JsonlSpanExporter,
    Telemetry,
    configure,
    span_to_dict,
)
from roi_agents.telemetry.records import read_spans, replay_records
from roi_agents.telemetry.tracing import DecisionTrace, RunTrace

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
