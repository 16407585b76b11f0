"""Overhead of tracing one decision: the roi.decision span, its attributes and the metrics.

Run: ``.venv/bin/python benchmarks/telemetry_overhead.py [--repeat N]``. Two measures, each
(a) with OpenTelemetry's no-op providers (no SDK configured) and (b) with the SDK, a
BatchSpanProcessor feeding an exporter that drops the spans, and a metric reader, with
exemplars off (as ``configure`` sets up) and on; p50 and p99 in microseconds, in this run:

- ``decision``: ``RunTrace.decision(...)`` plus ``DecisionTrace.record(...)``, the tracing
  alone;
- ``session call``: one call as the nodes, the middleware and ``budgeted`` make it
  (``BudgetSession.call`` on the memory ledger: reserve, the decision span current during the
  call, charge), with the run's ``roi.plan`` span opened and closed every 10 calls.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from roi_agents import (
    Budget,
    BudgetSession,
    Controller,
    CostForecast,
    Forecast,
    Option,
    Spend,
    Step,
)
from roi_agents.telemetry import RunTrace

_RUN = 10
"""Calls per run in the session measure: the plan span opens and closes once per run."""


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def measure(
    tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider, repeat: int
) -> tuple[float, float]:
    options = (Option(name="fast", model="small"), Option(name="deep", model="big"))
    step = Step(id="s", group="g", options=options)
    forecasts = [
        Forecast(
            step_id="s", option=o, p_success=p, tokens=CostForecast(mean=c, p50=c, p90=c, p99=c)
        )
        for o, p, c in (("fast", 0.6, 100.0), ("deep", 0.9, 400.0))
    ]
    plan = Controller().plan([step], Budget(tokens=10**9), forecasts=forecasts)
    spend = Spend(input_tokens=30, output_tokens=300)
    times = []
    with RunTrace(
        Budget(tokens=10**9), tracer_provider=tracer_provider, meter_provider=meter_provider
    ) as run:
        for _ in range(repeat):
            started = time.perf_counter()
            run.decision(step, plan, forecasts).record(spend, success=1.0)
            times.append(time.perf_counter() - started)
    us = np.array(times[repeat // 10 :]) * 1e6  # drop the warm-up tenth
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


def measure_session(
    tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider, repeat: int
) -> tuple[float, float]:
    option = Option(name="fast", model="small", max_tokens=300)
    step = Step(id="s", group="g", options=(option,))
    session = BudgetSession(
        Budget(tokens=10**15),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    spend = Spend(input_tokens=30, output_tokens=300)
    times = []
    for k in range(repeat):
        started = time.perf_counter()
        with session.call(None, option, prompt=30, step=step) as call:
            call.charge(spend, success=1.0)
        if k % _RUN == _RUN - 1:
            session.finish()
        times.append(time.perf_counter() - started)
    us = np.array(times[repeat // 10 :]) * 1e6
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20_000)
    args = parser.parse_args()
    for what, timed in (("decision", measure), ("session call", measure_session)):
        noop = timed(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), args.repeat)
        print(f"{what}, {'no-op providers:':<30} p50 {noop[0]:.1f} us, p99 {noop[1]:.1f} us")
        # As configure() sets them up: exemplars off by default, on when asked.
        for label, exemplar_filter in (("", AlwaysOffExemplarFilter()), (", exemplars", None)):
            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
            meter_provider = MeterProvider(
                metric_readers=[InMemoryMetricReader()], exemplar_filter=exemplar_filter
            )
            sdk = timed(tracer_provider, meter_provider, args.repeat)
            tracer_provider.shutdown()
            meter_provider.shutdown()
            name = f"SDK + batch processor{label}:"
            print(
                f"{what}, {name:<30} p50 {sdk[0]:.1f} us, p99 {sdk[1]:.1f} us "
                f"({sdk[0] / noop[0]:.1f}x the no-op p50)"
            )


if __name__ == "__main__":
    main()
