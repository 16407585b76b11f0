"""OTLP over HTTP/protobuf to a real receiver on loopback, built on opentelemetry-proto."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from traced_run import _run

from roi_agents.telemetry import configure, names

pytestmark = pytest.mark.integration


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[dict[str, list]] = {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            message = ExportTraceServiceRequest()
        elif self.path == "/v1/metrics":
            message = ExportMetricsServiceRequest()
        else:
            self.send_response(404)
            self.end_headers()
            return
        message.ParseFromString(body)
        self.received.setdefault(self.path, []).append(message)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def _value(any_value):
    return getattr(any_value, any_value.WhichOneof("value"))


def test_spans_and_metrics_arrive_at_an_otlp_receiver():
    _Receiver.received = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        telemetry = configure("otlp", endpoint=endpoint, service_name="otlp-test", set_global=False)
        decisions, run = _run(telemetry.tracer_provider, telemetry.meter_provider)
        telemetry.shutdown()
    finally:
        server.shutdown()
        server.server_close()
        server.server_close()
    spans = [
        span
        for request in _Receiver.received["/v1/traces"]
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    services = {
        _value(a.value)
        for request in _Receiver.received["/v1/traces"]
        for rs in request.resource_spans
        for a in rs.resource.attributes
        if a.key == "service.name"
    }
    assert services == {"otlp-test"}
    assert sorted(s.name for s in spans) == sorted(
        [names.SPAN_PLAN] + [names.SPAN_DECISION] * len(decisions)
    )
    plan = next(s for s in spans if s.name == names.SPAN_PLAN)
    attributes = {a.key: _value(a.value) for a in plan.attributes}
    assert attributes[f"{names.SPENT}.tokens"] == run.spent.tokens
    assert attributes[names.RUN_ID] == "r1"
    metric_names = {
        m.name
        for request in _Receiver.received["/v1/metrics"]
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {
        names.METRIC_TOKEN_USAGE,
        names.METRIC_DECISIONS,
        names.METRIC_UTILIZATION,
        names.METRIC_FORECAST_RATIO,
    } <= metric_names


class _NoMetrics(BaseHTTPRequestHandler):
    """A trace backend without a metrics route (as Phoenix): 405 on /v1/metrics."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(405 if self.path == "/v1/metrics" else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_backend_that_refuses_metrics_is_said_once_or_not_asked(caplog):
    import time

    from roi_agents import Budget
    from roi_agents.telemetry import RunTrace

    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoMetrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for metrics_export in (True, False):
            caplog.clear()
            telemetry = configure(
                "otlp",
                endpoint=endpoint,
                export_interval_ms=50,
                set_global=False,
                metrics_export=metrics_export,
            )
            with RunTrace(
                Budget(tokens=10),
                tracer_provider=telemetry.tracer_provider,
                meter_provider=telemetry.meter_provider,
            ):
                pass
            time.sleep(0.5)  # several export intervals
            telemetry.shutdown()
            failures = [
                r.getMessage() for r in caplog.records if "Failed to export" in r.getMessage()
            ]
            if metrics_export:
                assert len(failures) == 1
                assert "405" in failures[0]
                assert endpoint in failures[0]
            else:
                assert failures == []
    finally:
        server.shutdown()
        server.server_close()
