import json
import math

import pytest
from forecasts import fixed_forecasts
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from traced_run import OPTIONS, REAL, TABLE, _run

from roi_agents import (
    Budget,
    BudgetExceeded,
    Controller,
    Spend,
    Step,
)
from roi_agents.cli import main
from roi_agents.telemetry import RunTrace, configure, names, read_spans, replay_records
from roi_agents.telemetry.report import build_report


@pytest.fixture
def providers():
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield tracer_provider, meter_provider, spans, reader
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _metric(reader, name):
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    return metric.data.data_points
    return []


def test_spans_nest_and_carry_the_decisions_and_usage(providers):
    tracer_provider, meter_provider, exporter, _ = providers
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("agent.invoke") as outer:
        decisions, run = _run(tracer_provider, meter_provider)
    spans = exporter.get_finished_spans()
    plan = next(s for s in spans if s.name == names.SPAN_PLAN)
    children = [s for s in spans if s.name == names.SPAN_DECISION]
    assert plan.parent.span_id == outer.get_span_context().span_id
    assert len(children) == len(decisions) == 5
    assert all(c.parent.span_id == plan.context.span_id for c in children)
    left = 1000
    for span, decision in zip(children, decisions, strict=True):
        a = span.attributes
        assert a[names.STEP_ID] == decision.step_id
        assert a[names.OPTION] == decision.option
        assert a[names.REASON] == decision.reason
        assert a[names.P_SUCCESS] == decision.p_success
        assert list(a[names.OPTIONS_CONSIDERED]) == ["fast", "deep", "skip"]
        assert a[f"{names.BUDGET_BEFORE}.tokens"] == left
        assert a[f"{names.CAP}.tokens"] == decision.cap.tokens
        if decision.skipped:
            continue
        tokens_in, tokens_out = REAL[decision.option]
        used = tokens_in + min(tokens_out, decision.cap.tokens - tokens_in)
        assert a[names.GEN_AI_USAGE_INPUT_TOKENS] == tokens_in
        assert a[names.GEN_AI_USAGE_INPUT_TOKENS] + a[names.GEN_AI_USAGE_OUTPUT_TOKENS] == used
        assert (
            a[names.GEN_AI_REQUEST_MODEL]
            == {"fast": "small-model", "deep": "big-model"}[decision.option]
        )
        assert a[names.FORECAST_ERROR] == pytest.approx(
            math.log(used / decision.expected_cost["tokens"])
        )
        left -= used
        assert a[f"{names.BUDGET_AFTER}.tokens"] == left
    assert plan.attributes[f"{names.SPENT}.tokens"] == 1000 - left == run.spent.tokens
    assert plan.attributes[names.UTILIZATION] == pytest.approx((1000 - left) / 1000)
    assert plan.attributes[names.DECISIONS] == 5
    assert plan.attributes[names.SKIPS] == sum(d.skipped for d in decisions)


def test_metrics_match_the_recorded_usage(providers):
    tracer_provider, meter_provider, _, reader = providers
    decisions, run = _run(tracer_provider, meter_provider)
    tokens = _metric(reader, names.METRIC_TOKEN_USAGE)
    by_type = {}
    for point in tokens:
        by_type[point.attributes[names.GEN_AI_TOKEN_TYPE]] = (
            by_type.get(point.attributes[names.GEN_AI_TOKEN_TYPE], 0) + point.sum
        )
    assert by_type["input"] + by_type["output"] == run.spent.tokens
    counts = {p.attributes[names.OPTION]: p.value for p in _metric(reader, names.METRIC_DECISIONS)}
    assert counts == {o: sum(d.option == o for d in decisions) for o in counts}
    assert sum(counts.values()) == 5
    (utilization,) = _metric(reader, names.METRIC_UTILIZATION)
    assert utilization.sum == pytest.approx(run.spent.tokens / 1000)
    errors = _metric(reader, names.METRIC_FORECAST_RATIO)
    assert sum(p.count for p in errors) == sum(not d.skipped for d in decisions)


def test_budget_exceeded_is_an_event_and_nothing_is_lost(providers):
    tracer_provider, meter_provider, exporter, _ = providers
    run = RunTrace(
        Budget(tokens=100), tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    step = Step(id="s0", options=OPTIONS)
    forecasts = fixed_forecasts([step], TABLE)

    def run_out_of_budget():
        with run:  # the run ends by the exception
            plan = Controller().plan([step], run.remaining, forecasts=forecasts)
            with run.decision(step, plan, forecasts):
                raise BudgetExceeded(resource="tokens", scope="run", limit=100, requested=400)

    with pytest.raises(BudgetExceeded):
        run_out_of_budget()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {names.SPAN_PLAN, names.SPAN_DECISION}
    refused = [e for e in spans[names.SPAN_PLAN].events if e.name == names.EVENT_REFUSED]
    assert refused
    assert refused[0].attributes["roi.requested"] == 400
    assert any(e.name == names.EVENT_REFUSED for e in spans[names.SPAN_DECISION].events)


def test_fallback_is_an_event(providers):
    tracer_provider, meter_provider, exporter, _ = providers
    with RunTrace(
        Budget(tokens=10), tracer_provider=tracer_provider, meter_provider=meter_provider
    ) as run:
        run.fallback("vllm: connection refused", predictor="vllm")
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == names.EVENT_FALLBACK
    assert event.attributes[names.EVENT_REASON] == "vllm: connection refused"


def test_jsonl_round_trip_report_and_training_records(tmp_path):
    path = tmp_path / "traces.jsonl"
    telemetry = configure("jsonl", path=path, set_global=False)
    for k in range(3):
        _run(
            telemetry.tracer_provider,
            telemetry.meter_provider,
            budget=900 + 300 * k,
            run_id=f"run-{k}",
        )
    telemetry.shutdown()  # flushes the batch processor
    spans = list(read_spans(path))
    assert sum(s["name"] == names.SPAN_PLAN for s in spans) == 3
    assert sum(s["name"] == names.SPAN_DECISION for s in spans) == 15
    assert (tmp_path / "traces.metrics.jsonl").read_text().strip()
    records = replay_records(path)
    assert records
    assert {r.option for r in records} <= {"fast", "deep"}
    assert all(r.score == (1.0 if r.option == "deep" else 0.0) for r in records)
    assert all(r.dataset == "demo" for r in records)
    # The runs share step ids; each run's steps are queries of their own (trace id first).
    assert len({r.query_id.split(":")[1] for r in records}) < len(records)
    assert len({r.query_id for r in records}) == len(records)
    # The records train a predictor exactly like a replay file.
    from roi_agents import PriorPredictor

    prior = PriorPredictor(prior_strength=1)
    for r in records:
        prior.record(r.option, r.dataset, r.spend, r.score)
    fc = {f.option: f for f in prior.predict([Step(id="new", group="demo", options=OPTIONS)])}
    seen = {r.option for r in records}
    if "deep" in seen:
        assert fc["deep"].p_success > 0.5
    if "fast" in seen:
        assert fc["fast"].p_success < 0.5
    report = build_report(path)
    assert [r.run_id for r in report.runs] == ["run-0", "run-1", "run-2"]
    for run in report.runs:
        assert run.spent["tokens"] <= run.budget["tokens"]
        assert run.decisions == 5
    assert sum(o.decisions for o in report.options) == 15
    assert report.calibration.count == len(records)
    assert (
        main(
            [
                "report",
                str(path),
                "--json",
                str(tmp_path / "r.json"),
                "--plot",
                str(tmp_path / "r.png"),
                "--html",
                str(tmp_path / "r.html"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())["runs"][0]["run_id"] == "run-0"
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "r.html").read_text()
    assert page.count("<circle") == len(report.points) + len(report.calibration.bins)
    assert all(f">run-{k}<" in page for k in range(3))
    assert "<script" not in page
    assert "http" not in page


def test_a_step_cut_off_at_its_cap_is_traced_as_such_and_not_learned_from(tmp_path):
    path = tmp_path / "traces.jsonl"
    telemetry = configure("jsonl", path=path, set_global=False)
    steps = [Step(id=f"s{k}", group="demo", options=OPTIONS) for k in range(2)]
    run = RunTrace(Budget(tokens=5_000), tracer_provider=telemetry.tracer_provider)
    with run:
        for k, cut_off in enumerate((True, False)):
            left = fixed_forecasts(steps[k:], TABLE)
            plan = Controller().plan(steps[k:], run.remaining, forecasts=left)
            with run.decision(steps[k], plan, left) as step:
                step.record(
                    Spend(input_tokens=20, output_tokens=64), success=0.0, truncated=cut_off
                )
    telemetry.shutdown()
    decisions = [s["attributes"] for s in read_spans(path) if s["name"] == names.SPAN_DECISION]
    assert [d[names.TRUNCATED] for d in decisions] == [True, False]
    (record,) = replay_records(path)  # the cut-off step's cost is only a lower bound
    assert record.query_id.endswith(":s1")
    report = build_report(path)
    assert report.calibration.count == 1
    assert sum(o.cut_off for o in report.options) == 1
    assert sum(o.decisions for o in report.options) == 2


def test_configure_refuses_bad_arguments():
    from roi_agents import InvalidValueError

    with pytest.raises(InvalidValueError, match="path"):
        configure("jsonl", set_global=False)
    with pytest.raises(InvalidValueError, match="exporter"):
        configure("zipkin", set_global=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"gen_ai.usage.input_tokens": -5}, "gen_ai.usage.input_tokens: Input should be greater"),
        ({"roi.outcome.success": 5}, "roi.outcome.success: Input should be less than or equal"),
        ({"gen_ai.usage.output_tokens": "many"}, "gen_ai.usage.output_tokens: Input should be"),
        ({"roi.forecast.p_success": "high"}, "roi.forecast.p_success: Input should be"),
    ],
)
def test_a_trace_with_wrong_figures_is_refused_by_line_and_attribute(
    tmp_path, capsys, change, named
):
    from roi_agents.errors import DataError

    good = {
        "name": "roi.decision",
        "trace_id": "t1",
        "attributes": {
            "roi.step.id": "s1",
            "roi.option": "fast",
            "roi.outcome.success": 1.0,
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 20,
        },
    }
    bad = {**good, "attributes": {**good["attributes"], **change}}
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=f"traces.jsonl:2: {named}"):
        replay_records(path)
    assert main(["report", str(path)]) == 2
    assert named in " ".join(capsys.readouterr().out.split())


def test_configure_names_the_project_and_can_leave_metrics_out(tmp_path):
    from roi_agents.telemetry.export import PROJECT_ATTRIBUTE

    path = tmp_path / "traces.jsonl"
    telemetry = configure(
        "jsonl", path=path, metrics_export=False, project="acme-agents", set_global=False
    )
    resource = telemetry.tracer_provider.resource.attributes
    assert (resource["service.name"], resource[PROJECT_ATTRIBUTE]) == ("roi-agents", "acme-agents")
    with RunTrace(Budget(tokens=100), tracer_provider=telemetry.tracer_provider) as run:
        pass
    telemetry.shutdown()
    assert [s["name"] for s in read_spans(path)] == [names.SPAN_PLAN]
    assert run.spent == Spend()
    assert not path.with_suffix(".metrics.jsonl").exists()  # no metrics exported, none written


def test_a_priced_call_carries_its_cost_and_an_unpriced_one_none(providers):
    from roi_agents import Decision, Option
    from roi_agents.types import Cap

    tracer_provider, meter_provider, exporter, _ = providers
    priced = Option(name="paid", model="m", input_price=1.0, output_price=4.0)
    free = Option(name="free", model="m")
    step = Step(id="s", options=(priced, free))
    with RunTrace(
        Budget(tokens=10_000), tracer_provider=tracer_provider, meter_provider=meter_provider
    ) as run:
        for option in (priced, free):
            decision = Decision(
                step_id="s",
                option=option.name,
                cap=Cap(tokens=500),
                expected_value=0.5,
                expected_cost={"tokens": 300.0},
                reason="test",
            )
            spend = Spend(input_tokens=100, output_tokens=50, usd=option.usd(100, 50))
            with run.decision(step, decision=decision) as traced:
                traced.record(spend)
    paid, unpaid = [
        s.attributes for s in exporter.get_finished_spans() if s.name == names.SPAN_DECISION
    ]
    assert paid[names.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(0.0003) == paid[names.ACTUAL_USD]
    assert paid[names.GEN_AI_USAGE_COST_CURRENCY] == "USD"
    assert paid[names.GEN_AI_USAGE_COST_SOURCE] == "local"
    assert names.GEN_AI_USAGE_COST_AMOUNT not in unpaid  # no price: no cost claimed


def _span(name, trace, span_id, parent=None, events=(), **attributes):
    return {
        "name": name,
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "attributes": attributes,
        "events": list(events),
    }


def test_the_report_reads_runs_without_plan_spans_and_totals_every_scope(tmp_path):
    """Runs from a plan span (scoped) and from bare decisions; hostile text stays text."""
    from roi_agents.telemetry.report_html import write_html

    call = {
        names.OPTION: "fast",
        names.GEN_AI_USAGE_INPUT_TOKENS: 10,
        names.GEN_AI_USAGE_OUTPUT_TOKENS: 30,
        names.ACTUAL_USD: 0.5,
    }
    refused = {"name": names.EVENT_REFUSED, "attributes": {}}
    spans = [
        _span(names.SPAN_DECISION, "t1", "d1", "p1", **call),
        _span(names.SPAN_DECISION, "t1", "d2", "p1", **{**call, names.ACTUAL_TOOL_CALLS: 2}),
        _span(
            names.SPAN_PLAN,
            "t1",
            "p1",
            events=[refused],
            **{
                names.RUN_ID: "<script>alert(1)</script>",
                names.SCOPE: "acme/bob/thread-1",
                f"{names.BUDGET}.tokens": 100,
                f"{names.SPENT}.tokens": 80,
                names.DECISIONS: 2,
            },
        ),
        _span(names.SPAN_PLAN, "t2", "p2", **{names.SCOPE: "acme/eve/t", names.DECISIONS: 1}),
        _span(names.SPAN_DECISION, "t2", "d3", "p2", **call),
        # A trace with no plan span: two decisions, one skipped.
        _span(names.SPAN_DECISION, "t3", "d4", "outer", **call),
        _span(names.SPAN_DECISION, "t3", "d5", "outer", **{names.OPTION: "skip"}),
    ]
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    report = build_report(path)
    by_trace = {r.trace_id: r for r in report.runs}
    assert by_trace["t1"].refused == 1
    assert by_trace["t1"].spent == {"tokens": 80}
    assert by_trace["t2"].spent == {"tokens": 40.0, "usd": 0.5, "tool_calls": 0.0}
    bare = by_trace["t3"]
    assert not bare.planned
    assert bare.run_id is None
    assert bare.decisions == 2
    assert bare.skips == 1
    assert bare.spent["tokens"] == 40
    scopes = {s.scope: s for s in report.scopes}
    assert (scopes["acme"].runs, scopes["acme"].tokens, scopes["acme"].tool_calls) == (2, 120, 2)
    assert scopes["acme/bob"].tokens == scopes["acme/bob/thread-1"].tokens == 80
    assert scopes["acme/eve"].usd == pytest.approx(0.5)
    assert scopes["(no scope)"].runs == 1
    page = write_html(report, tmp_path / "r.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "trace t3" in page
    assert main(["report", str(path)]) == 0


def test_an_export_failure_is_said_once_whatever_its_delay_or_address():
    import logging

    from roi_agents.telemetry.export import _RepeatsQuiet

    quiet = _RepeatsQuiet("http://127.0.0.1:9")
    template = "Transient error %s encountered while exporting span batch, retrying in %.2fs."

    def record(error, delay):
        return logging.LogRecord(
            "otlp", logging.WARNING, __file__, 1, template, (error, delay), None
        )

    refused = "<urllib3.connection.HTTPConnection object at {}>: Connection refused"
    passed = [
        quiet.filter(record(refused.format(address), delay))
        for address, delay in (("0x7f01", 1.07), ("0x7f99", 2.29), ("0x7fab", 4.51))
    ]
    assert passed == [True, False, False]
    other = logging.LogRecord("otlp", logging.WARNING, __file__, 1, "Failed: %s", ("404",), None)
    assert quiet.filter(other)  # another failure is said, once
    assert "http://127.0.0.1:9" in other.getMessage()


@pytest.mark.parametrize(
    ("span", "named"),
    [
        ({"gen_ai.usage.input_tokens": 10**400}, "gen_ai.usage.input_tokens"),
        ({"roi.actual.tool_calls": "three"}, "roi.actual.tool_calls"),
        ({"roi.actual.tool_calls": -7}, "roi.actual.tool_calls"),
        ({"gen_ai.request.model": ["a", "b"]}, "gen_ai.request.model"),
        ({"roi.actual.usd": 1e308}, "roi.actual.usd"),
        ("name", "name"),
        ("span_id", "span_id"),
        ("events", "events"),
    ],
)
def test_a_hostile_trace_is_one_line_naming_what_is_wrong(tmp_path, capsys, span, named):
    line = {"name": names.SPAN_DECISION, "span_id": "d", "attributes": {}, "events": []}
    if isinstance(span, dict):
        line["attributes"] = {names.OPTION: "fast", **span}
    elif span == "events":
        line["events"] = {"name": "x"}
    else:
        line[span] = ["not", "text"]
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(line) + "\n")
    assert main(["report", str(path)]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert f"{path}:1: {named}" in out.replace("\n", "")


def test_markup_and_control_characters_in_a_trace_are_shown_as_text(tmp_path, capsys):
    spans = [
        {
            "name": names.SPAN_PLAN,
            "span_id": "p",
            "attributes": {names.RUN_ID: "[/red]run\x1b]0;x\x07", names.SCOPE: "a/[b]"},
        },
        {"name": names.SPAN_DECISION, "span_id": "d", "parent_span_id": "p", "attributes": {}},
    ]
    path = tmp_path / "[bold]t.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[/red]run\\x1b]0;x\\x07" in out
    assert "\x1b]0" not in out
    empty = tmp_path / "[bold]empty.jsonl"
    empty.write_text("")
    assert main(["report", str(empty)]) == 2
    assert f"{empty}: no roi.plan or roi.decision span" in capsys.readouterr().out


def test_a_grown_budget_is_the_runs_from_then_on(providers):
    tracer_provider, meter_provider, exporter, _ = providers
    from roi_agents import BudgetSession, Option

    session = BudgetSession(
        Budget(tokens=300), tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    option = Option(name="a", max_tokens=50)
    with session.call(None, option, prompt=10) as call:
        call.charge(Spend(input_tokens=10, output_tokens=50))
    session.grow(Budget(tokens=29))
    with session.call(None, option, prompt=10) as call:
        call.charge(Spend(input_tokens=10, output_tokens=50))
    session.finish()
    spans = exporter.get_finished_spans()
    (plan,) = [s for s in spans if s.name == names.SPAN_PLAN]
    assert plan.attributes[f"{names.BUDGET}.tokens"] == 329
    assert plan.attributes[names.UTILIZATION] == pytest.approx(120 / 329)
    (grown,) = [e for e in plan.events if e.name == names.EVENT_GROWN]
    assert grown.attributes[f"{names.BUDGET}.tokens"] == 329
    second = [s for s in spans if s.name == names.SPAN_DECISION][1]
    assert second.attributes[f"{names.BUDGET_BEFORE}.tokens"] == 329 - 60


def test_the_plan_event_says_the_quantile_and_risk_a_policy_chose(providers):
    from roi_agents.allocate import Policy, Setting

    tracer_provider, meter_provider, exporter, _ = providers
    policy = Policy(
        resource="tokens",
        settings=[Setting(per_step=50, quantile="p99", risk="run"), Setting(per_step=5000)],
    )
    controller = Controller(policy=policy)
    pending = [Step(id=f"s{i}", options=OPTIONS) for i in range(4)]
    with RunTrace(
        Budget(tokens=400), tracer_provider=tracer_provider, meter_provider=meter_provider
    ) as run:
        for budget in (400, 40_000):
            forecasts = fixed_forecasts(pending, TABLE)
            run.planned(controller.plan(pending, Budget(tokens=budget), forecasts=forecasts))
    (plan,) = [s for s in exporter.get_finished_spans() if s.name == names.SPAN_PLAN]
    made = [e.attributes for e in plan.events if e.name == names.EVENT_PLAN]
    assert [(a[names.QUANTILE], a[names.RISK]) for a in made] == [("p99", "run"), ("p90", "step")]
