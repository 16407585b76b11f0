"""Exporters and one-call set-up: console, OTLP over HTTP, or a JSONL file.

The JSONL file holds one finished span per line (`span_to_dict`'s shape). It is what
`roi-agents report` reads, and the decision spans in it are recorded outcomes a predictor can
learn from (`roi_agents.telemetry.records`).
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opentelemetry import metrics, trace

from roi_agents.errors import InvalidValueError, MissingExtra

try:
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
        SpanExportResult,
    )
except ModuleNotFoundError as error:
    raise MissingExtra("telemetry", error.name) from error

__all__ = ["JsonlMetricExporter", "JsonlSpanExporter", "Telemetry", "configure", "span_to_dict"]

ExporterName = Literal["console", "otlp", "jsonl"]
PROJECT_ATTRIBUTE = "openinference.project.name"
"""The resource attribute Arize Phoenix (OpenInference) files spans under, by project."""


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain JSON-ready data."""
    context = span.context
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "service": (span.resource.attributes.get("service.name") if span.resource else None),
    }


class JsonlSpanExporter(SpanExporter):
    """Appends each finished span to a JSONL file, one line per span."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._handle = self.path.open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans and flush."""
        lines = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
        with self._lock:
            if self._handle.closed:
                return SpanExportResult.FAILURE
            self._handle.write(lines)
            self._handle.flush()
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Everything is written on export."""
        return True

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            self._handle.close()


class JsonlMetricExporter(MetricExporter):
    """Appends each metrics export to a JSONL file, one line per export."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Write one line."""
        line = json.dumps(json.loads(metrics_data.to_json()))
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Everything is written on export."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""


class _RepeatsQuiet(logging.Filter):
    """Let an exporter's failure through once, with the endpoint; drop its repeats.

    A backend without a metrics route answers every periodic export with the same error: one
    line says so, not one per interval.
    """

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        # Retries differ only by their jittered delay, errors by an object's address: the same.
        key = (record.name, _VARYING.sub("#", message))
        if key in self._seen:
            return False
        self._seen.add(key)
        record.msg = f"{message} (to {self.endpoint}; the same failure is not logged again)"
        record.args = ()
        return True


_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?")


_OTLP_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


@dataclass
class Telemetry:
    """The providers `configure` set up; `shutdown` flushes and stops them."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    _stopped: bool = False
    _quiet: list[tuple[logging.Logger, logging.Filter]] = field(default_factory=list)

    def force_flush(self) -> bool:
        """Export every finished span and the current metrics now."""
        spans = self.tracer_provider.force_flush()
        measured = self.meter_provider.force_flush()
        return bool(spans and measured)

    def shutdown(self) -> None:
        """Flush, then stop both providers (also run at interpreter exit); once."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.shutdown)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        for logger, quiet in self._quiet:
            logger.removeFilter(quiet)


def configure(
    exporter: ExporterName = "console",
    *,
    path: str | Path | None = None,
    endpoint: str | None = None,
    service_name: str = "roi-agents",
    export_interval_ms: int = 10_000,
    set_global: bool = True,
    exemplars: bool = False,
    metrics_export: bool = True,
    project: str | None = None,
) -> Telemetry:
    """Set up tracing and metrics in one call.

    Args:
        exporter: ``"console"``, ``"otlp"`` (OTLP over HTTP/protobuf, extra ``[otlp]``) or
            ``"jsonl"`` (spans to ``path``, metrics to ``path`` with ``.metrics.jsonl``).
        path: the JSONL file, for ``"jsonl"``.
        endpoint: the OTLP collector's base URL (default: the exporter's own default and
            ``OTEL_EXPORTER_OTLP_ENDPOINT``).
        service_name: the ``service.name`` resource attribute.
        project: the project trace UIs file the spans under (the resource attribute
            ``openinference.project.name``, which Arize Phoenix reads; default: the service
            name).
        export_interval_ms: how often metrics are exported.
        set_global: install the providers as OpenTelemetry's global ones.
        exemplars: attach trace exemplars to metric points (the SDK's default); off, each
            metric record costs less (about 15% of a traced decision, see
            ``benchmarks/telemetry_overhead.py``).
        metrics_export: export metrics too; off, spans only (for a backend without a metrics
            endpoint, which would refuse every export).

    Returns:
        The providers; spans and metrics are flushed at exit or by `Telemetry.shutdown`.

    Raises:
        InvalidValueError: on an unknown exporter, or ``"jsonl"`` without a path.
        MissingExtra: ``"otlp"`` without the extra ``[otlp]`` installed.
    """
    resource = Resource.create(
        {"service.name": service_name, PROJECT_ATTRIBUTE: project or service_name}
    )
    span_exporter: SpanExporter
    metric_exporter: MetricExporter
    if exporter == "console":
        span_exporter, metric_exporter = ConsoleSpanExporter(), ConsoleMetricExporter()
    elif exporter == "jsonl":
        if path is None:
            raise InvalidValueError("path", "the jsonl exporter needs a file path")
        path = Path(path)
        span_exporter = JsonlSpanExporter(path)
        metric_exporter = JsonlMetricExporter(path.with_suffix(".metrics.jsonl"))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as error:
            raise MissingExtra("otlp", error.name) from error
        base = endpoint.rstrip("/") if endpoint else None
        span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None)
        metric_exporter = OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None)
    else:
        msg = f"expected console, otlp or jsonl, got {exporter!r}"
        raise InvalidValueError("exporter", msg)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    readers = (
        [PeriodicExportingMetricReader(metric_exporter, export_interval_millis=export_interval_ms)]
        if metrics_export
        else []
    )
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        exemplar_filter=None if exemplars else AlwaysOffExemplarFilter(),
    )
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    telemetry = Telemetry(tracer_provider, meter_provider)
    if exporter == "otlp":
        quiet = _RepeatsQuiet(endpoint or "the default OTLP endpoint")
        for name in _OTLP_LOGGERS:
            logger = logging.getLogger(name)
            logger.addFilter(quiet)
            telemetry._quiet.append((logger, quiet))
    atexit.register(telemetry.shutdown)
    return telemetry
