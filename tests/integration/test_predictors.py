"""LocalPredictor and VLLMPredictor on the same trained checkpoint; VLLMPredictor's fallbacks."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from roi_agents_vllm import VLLMServer

from roi_agents import Option, PriorPredictor, Spend, Step
from roi_agents.predict import ComposedPredictor, LocalPredictor, VLLMPredictor
from roi_agents.predict.calibration import Calibration, Composition, SuccessMap, option_set
from roi_agents.telemetry import names

pytestmark = pytest.mark.integration

OPTIONS = (
    Option(name="fast", tags=("fast",), max_tokens=64),
    Option(name="deep", tags=("deep",)),
    Option(name="tool", tags=("tool",)),
)
STEPS = [
    Step(id=f"s{i}", text=text, options=OPTIONS, input_tokens=12 + i)
    for i, text in enumerate(
        [
            "add two numbers",
            "prove the theorem step by step",
            "summarise the report",
            "search the notes",
        ]
    )
]


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint):
    return trained_checkpoint


@pytest.fixture(scope="module")
def pooling_server(checkpoint, tmp_path_factory):
    server = VLLMServer(
        checkpoint,
        served_model_name="predictor",
        runner="pooling",
        max_model_len=512,
        log=tmp_path_factory.mktemp("vllm") / "vllm.log",
    )
    with server:
        yield server


def _close(a, b):
    assert (a.step_id, a.option) == (b.step_id, b.option)
    assert a.p_success == pytest.approx(b.p_success, abs=1e-3)
    for field in ("mean", "p50", "p90", "p99"):
        assert getattr(a.tokens, field) == pytest.approx(getattr(b.tokens, field), rel=1e-3)
        assert getattr(a.usd, field) == pytest.approx(getattr(b.usd, field), rel=1e-3)


def test_vllm_and_local_forecasts_agree(pooling_server, checkpoint):
    local_predictor = LocalPredictor(checkpoint, device="cpu")
    assert local_predictor.calibration is not None
    local = local_predictor.predict(STEPS)
    remote_predictor = VLLMPredictor(pooling_server.url, "predictor", calibration=checkpoint)
    remote = remote_predictor.predict(STEPS)
    assert remote_predictor.last_fallback is None
    assert len(local) == len(remote) == len(STEPS) * len(OPTIONS)
    for a, b in zip(local, remote, strict=True):
        _close(a, b)
        assert b.source == "vllm"
    # The option's max_tokens caps the output forecast; the prompt is added.
    fast = next(f for f in remote if f.option == "fast" and f.step_id == "s0")
    assert fast.tokens.p99 <= 12 + 64
    # A turn bigger than batch_size goes in several requests, with the same answers.
    chunked = VLLMPredictor(pooling_server.url, "predictor", calibration=checkpoint, batch_size=5)
    for a, b in zip(chunked.predict(STEPS), remote, strict=True):
        _close(a, b)
    assert chunked.last_fallback is None
    # The calibration names the outputs (a success logit per option): without it the rows
    # cannot be read, and the predictor falls back, saying why.
    bare = VLLMPredictor(pooling_server.url, "predictor")
    assert {f.source for f in bare.predict(STEPS)} == {"prior"}
    assert "needs its labels" in (bare.last_fallback or "")


def test_set_maps_and_group_rates_apply_the_same_on_both(pooling_server, checkpoint):
    stored = Calibration.load(checkpoint)
    assert stored is not None
    joint = SuccessMap(weights={"fast": -1.0, "deep": 0.5, "tool": 0.2})
    success = stored.success.model_copy(
        update={
            "by_set": {option_set(o.name for o in OPTIONS): {"deep": joint}},
            "group_rates": {"g": {"deep": 0.9}},
        }
    )
    calibration = stored.model_copy(update={"success": success})
    steps = [s.model_copy(update={"group": "g"}) for s in STEPS]
    local_predictor = LocalPredictor(checkpoint, device="cpu")
    local_predictor.calibration = calibration
    remote = VLLMPredictor(pooling_server.url, "predictor", calibration=calibration)
    local, forecasts = local_predictor.predict(steps), remote.predict(steps)
    for a, b in zip(local, forecasts, strict=True):
        _close(a, b)
    raw = local_predictor.outputs([f"[{o.name}] {s.text}" for s in steps for o in OPTIONS])
    for i, step in enumerate(steps):
        logits = {o.name: raw[3 * i + k][0] for k, o in enumerate(OPTIONS)}
        deep = next(f for f in forecasts if f.step_id == step.id and f.option == "deep")
        expected = joint.p_success("deep", success.centred("g", logits), 0.9)
        assert expected is not None
        assert deep.p_success == pytest.approx(expected, abs=1e-3)


def test_composed_forecasts_agree_on_both(pooling_server, checkpoint):
    """The composition is client-side: over either predictor it gives the same forecasts."""

    def composed(learned):
        prior = PriorPredictor()
        for i, step in enumerate(STEPS):
            for option in OPTIONS:
                spend = Spend(input_tokens=12 + i, output_tokens=40 + 30 * i)
                prior.observe(step, option.name, spend, success=float(i % 2))
        # Weight 1 for both parts: the checkpoint's own may be 0 where its held-out rows said so.
        return ComposedPredictor(learned, prior, composition=Composition())

    local = composed(LocalPredictor(checkpoint, device="cpu"))
    remote = composed(VLLMPredictor(pooling_server.url, "predictor", calibration=checkpoint))
    stored = Calibration.load(checkpoint)
    assert stored is not None
    assert ComposedPredictor(remote.learned).composition == stored.composition
    assert stored.composition.rows > 0  # fitted on the checkpoint's held-out rows
    for _ in range(2):  # before and after both learn the same outcome
        a, b = local.predict(STEPS), remote.predict(STEPS)
        assert remote.learned.last_fallback is None
        for x, y in zip(a, b, strict=True):
            assert (x.step_id, x.option) == (y.step_id, y.option)
            assert x.p_success == pytest.approx(y.p_success, abs=1e-3)
            for field in ("mean", "p50", "p90", "p99"):
                assert getattr(x.tokens, field) == pytest.approx(getattr(y.tokens, field), rel=1e-3)
        assert {f.source for f in b} == {"prior + vllm"}
        for predictor in (local, remote):
            predictor.observe(STEPS[1], "deep", Spend(input_tokens=13, output_tokens=500), 1.0)
    # The learned deviations moved the prior's level: the steps' forecasts differ.
    prior_only = {round(f.p_success, 6) for f in remote.prior.predict(STEPS) if f.option == "deep"}
    moved = {round(f.p_success, 6) for f in b if f.option == "deep"}
    assert len(prior_only) == 1 < len(moved)


async def test_async_predict_agrees(pooling_server, checkpoint):
    sync = VLLMPredictor(pooling_server.base_url, "predictor", calibration=checkpoint)
    remote = VLLMPredictor(pooling_server.base_url, "predictor", calibration=checkpoint)
    asynchronous = await remote.apredict(STEPS)
    sync_forecasts = sync.predict(STEPS)
    assert remote.last_fallback is None
    for a, b in zip(sync_forecasts, asynchronous, strict=True):
        _close(a, b)


class _Bad(BaseHTTPRequestHandler):
    mode = "nan"
    hits = 0

    def do_POST(self):
        type(self).hits += 1
        length = int(self.headers["Content-Length"])
        n = len(json.loads(self.rfile.read(length))["input"])
        if self.mode == "500":
            self.send_response(500)
            self.end_headers()
            return
        if self.mode == "drip":  # an answer one byte a second: the turn's deadline ends it
            self.send_response(200)
            self.end_headers()
            for _ in range(30):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1.0)
            return
        rows = {
            "nan": [[math.nan, 5.0, 0.0]] * n,
            "short": [[0.1, 5.0]] * n,
            "count": [[0.1, 5.0, 0.0]] * (n - 1),
            "nested": [[[0.1], 5.0, 0.0]] * n,
            "null": [None] * n,
            "scalar": [0.5] * n,
            "nullcell": [[None, 5.0, 0.0]] * n,
            "bool": [[True, 5.0, 0.0]] * n,
            "huge": "1e400",
            "garbage": None,
        }[self.mode]
        if rows is None:
            body = b"not json"
        elif rows == "1e400":  # a number no float holds
            body = b'{"data": [' + b", ".join([b'{"probs": [1e400, 5.0, 0.0]}'] * n) + b"]}"
        else:
            body = json.dumps({"data": [{"probs": r} for r in rows]}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


MALFORMED = [
    *("nan", "short", "count", "garbage", "500"),
    *("nested", "null", "scalar", "nullcell", "bool", "huge"),
]


@pytest.mark.parametrize("mode", MALFORMED)
def test_malformed_answers_fall_back_to_the_prior(mode):
    _Bad.mode, _Bad.hits = mode, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bad)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        predictor = VLLMPredictor(
            f"http://127.0.0.1:{server.server_address[1]}",
            "p",
            fallback=PriorPredictor(),
            attempts=3,
        )
        with provider.get_tracer("t").start_as_current_span("turn"):
            forecasts = predictor.predict(STEPS)
    finally:
        server.shutdown()
        server.server_close()
    assert all(f.source == "prior" for f in forecasts)
    assert predictor.last_fallback
    assert _Bad.hits == (3 if mode == "500" else 1)  # only 5xx is retried
    (span,) = exporter.get_finished_spans()
    assert [e.name for e in span.events] == [names.EVENT_FALLBACK]


@pytest.mark.parametrize("kind", ["vllm", "local"])
def test_bench_runs_with_the_learned_predictor(
    pooling_server, checkpoint, small_replay, tmp_path, kind, caplog
):
    from roi_agents.cli import main

    spec = f"vllm:{pooling_server.url}@{checkpoint}" if kind == "vllm" else f"local:{checkpoint}"
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--data",
                str(small_replay),
                "--episodes",
                "2",
                "--steps",
                "5",
                "--budgets",
                "0.25",
                "--predictor",
                spec,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert all(p["overruns"] == 0 for p in result["budgets"][0]["policies"].values())
    if kind == "vllm":  # long GSM8K texts are cut, not refused: no fallback
        assert not [r for r in caplog.records if "falls back" in r.getMessage()]


def test_killing_the_server_mid_run_falls_back_without_an_exception(pooling_server, checkpoint):
    predictor = VLLMPredictor(
        pooling_server.url, "predictor", calibration=checkpoint, timeout=2.0, attempts=2
    )
    assert predictor.predict(STEPS[:1])[0].source == "vllm"
    pooling_server.stop()
    forecasts = predictor.predict(STEPS)
    assert {f.source for f in forecasts} == {"prior"}
    assert "ConnectError" in predictor.last_fallback


@pytest.mark.parametrize("mode", ["drip", "dead"])
async def test_a_turn_has_one_deadline_and_a_failed_server_is_left_alone(mode):
    """A server that drips its answer, or is gone: the turn ends at its deadline, and the next
    turns fall back at once until the cooldown has passed (then the server is asked again)."""
    _Bad.mode, _Bad.hits = mode, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bad)
    port = server.server_address[1]
    if mode == "dead":
        server.server_close()
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        predictor = VLLMPredictor(
            f"http://127.0.0.1:{port}", "p", timeout=5, attempts=3, deadline=2.5, cooldown=1.0
        )
        started = time.monotonic()
        assert all(f.source == "prior" for f in predictor.predict(STEPS))
        assert time.monotonic() - started < 4.5  # the deadline, not 3 x 5 s of reads
        started = time.monotonic()
        assert all(f.source == "prior" for f in await predictor.apredict(STEPS))
        assert time.monotonic() - started < 0.5  # the circuit is open: not asked
        assert "next try" in predictor.last_fallback
        hits = _Bad.hits
        time.sleep(1.1)
        predictor.predict(STEPS)  # the cooldown passed: asked again
        assert mode == "dead" or _Bad.hits > hits
    finally:
        if mode != "dead":
            server.shutdown()
            server.server_close()
