"""``roi-agents train``: the checkpoint, its calibration and report; other bases; trace files."""

import json
import math
import shutil

import pytest
from live import build_checkpoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from roi_agents import Budget, Controller, Option, PriorPredictor, Spend, Step
from roi_agents.data import read_records
from roi_agents.data.split import split_by
from roi_agents.errors import InvalidValueError
from roi_agents.predict import LocalPredictor
from roi_agents.predict.calibration import Calibration, Composition
from roi_agents.predict.head import head_labels
from roi_agents.predict.pooling import asks_for_mean
from roi_agents.telemetry import JsonlSpanExporter, RunTrace
from roi_agents.train import TrainConfig, load_examples, train
from roi_agents.train.pipeline import split

pytestmark = pytest.mark.integration


def test_the_checkpoint_is_complete_and_reports_on_the_bench_test_queries(
    trained_checkpoint, small_replay
):
    files = {p.name for p in trained_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert {"calibration.json", "report.json", "reliability.png"} <= files
    assert not trained_checkpoint.with_name("predictor.partial").exists()
    # The default base (all-MiniLM-L6-v2) is read by the mean of its tokens, and the checkpoint
    # tells vLLM so (test_predictors checks that both compute the same outputs).
    assert asks_for_mean(trained_checkpoint)
    config = json.loads((trained_checkpoint / "config.json").read_text())
    assert config["problem_type"] == "regression"
    # Success, tokens (2), USD (2, the data records them), then a success output per option.
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    options = ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    assert tuple(labels) == head_labels(True, options)
    report = json.loads((trained_checkpoint / "report.json").read_text())
    # The test part is the bench's (same seed, same fraction): queries never trained on.
    records = list(read_records(small_replay))
    _, held = split_by(records, lambda r: r.query_id, [0.5], seed=0)
    assert report["rows"]["test_available"] == len(held) > 80
    assert report["rows"]["test"] == report["quality"]["rows"] == 80  # --eval-rows
    assert report["rows"]["fit"] <= 200
    quality = report["quality"]
    assert 0.0 <= quality["auc"] <= 1.0
    assert 0.0 < quality["brier"] < 1.0
    assert 0.5 <= quality["coverage90"] <= 1.0
    assert quality["usd_coverage90"] is not None
    calibration = Calibration.load(trained_checkpoint)
    assert calibration is not None
    assert calibration.rows == report["rows"]["calibration"]
    assert calibration.labels == tuple(labels)  # a server's client reads rows by these
    # The maps see the calibration rows and the validation rows.
    parts = split(
        TrainConfig(data=[small_replay], out=trained_checkpoint, max_rows=200, eval_rows=80)
    )
    assert calibration.rows == len(parts.calibration) + len(parts.validation)
    assert calibration.usd is not None
    # Base rates from every fine-tuning row the split had (used or not), per option and group.
    rates = calibration.success
    for option, rate in rates.option_rates.items():
        own = [e.success for e in parts.fit_all if e.option == option]
        assert rate == pytest.approx(sum(own) / len(own))
    assert set(rates.group_rates) == {e.dataset for e in parts.fit_all}
    # The composition's weights are fitted on the same held-out rows (rows with tokens): one
    # per option, or a part's single 0 where, held out, the weight did no better than none.
    composition = calibration.composition
    assert composition.rows == calibration.rows
    assert set(composition.success) in ({""}, {"", *options})
    assert set(composition.cost) in ({""}, {"", *options})
    assert composition != Composition()


def test_local_forecasts_are_calibrated_and_ordered(trained_checkpoint):
    steps = [
        Step(
            id=f"q{i}",
            text=text,
            input_tokens=40,
            options=(Option(name="mixtral-8x7b-instruct-v0.1"), Option(name="gpt-4-1106-preview")),
        )
        for i, text in enumerate(["What is 2 + 3?", "A train leaves at 3 pm going 60 mph ..."])
    ]
    calibrated = LocalPredictor(trained_checkpoint).predict(steps)
    raw = LocalPredictor(trained_checkpoint, calibrated=False).predict(steps)
    calibration = Calibration.load(trained_checkpoint)
    assert calibration is not None
    assert calibration.success.prompt_centre is not None  # the replay rows have prompt sizes
    logits: dict[str, dict[str, float]] = {}
    for r in raw:
        logits.setdefault(r.step_id, {})[r.option] = math.log(r.p_success / (1 - r.p_success))
    for c, r in zip(calibrated, raw, strict=True):
        expected = calibration.success.p(c.option, None, logits[c.step_id], input_tokens=40)
        assert c.p_success == pytest.approx(expected)
        assert c.p_success != pytest.approx(r.p_success)
        assert 40 <= c.tokens.p50 <= c.tokens.p90 <= c.tokens.p99
        assert c.usd is not None
        assert c.usd.p50 <= c.usd.p90 <= c.usd.p99


def test_padding_does_not_change_a_mean_pooled_output(trained_checkpoint):
    local = LocalPredictor(trained_checkpoint)
    short = "What is 2 + 3?"
    alone = local.outputs([short])[0]
    padded = local.outputs([short, "A train leaves at 3 pm going 60 mph, " * 8])[0]
    assert padded == pytest.approx(alone, abs=1e-5)


def test_zero_epochs_fit_the_head_alone(tmp_path, small_replay, trained_checkpoint):
    from safetensors.torch import load_file

    from roi_agents.train.pipeline import default_base

    report = train(
        TrainConfig(
            data=[small_replay], out=tmp_path / "probe", max_rows=60, eval_rows=20, epochs=0
        )
    )
    assert len(report.val_losses) == 1
    probe = load_file(tmp_path / "probe" / "model.safetensors")
    tuned = load_file(trained_checkpoint / "model.safetensors")
    layer = "encoder.layer.0.attention.self.query.weight"
    base = load_file(default_base() / "model.safetensors")[layer]
    layer = f"bert.{layer}"
    assert probe[layer].equal(base)
    assert not tuned[layer].equal(base)
    assert not probe["classifier.weight"].equal(tuned["classifier.weight"])


def test_an_existing_output_is_not_replaced_without_overwrite(trained_checkpoint, small_replay):
    before = (trained_checkpoint / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(InvalidValueError, match="--overwrite"):
        train(TrainConfig(data=[small_replay], out=trained_checkpoint))
    assert (trained_checkpoint / "model.safetensors").stat().st_mtime_ns == before


def test_calibrate_only_refits_the_maps_in_place(trained_checkpoint, small_replay, tmp_path):
    from roi_agents.cli import main

    copy = tmp_path / "predictor"
    shutil.copytree(trained_checkpoint, copy)
    before = (copy / "model.safetensors").read_bytes()
    # A map of an earlier release is refused, with the way out.
    older = json.loads((copy / "calibration.json").read_text())
    older["success"]["shared"]["bias"] = 0.3
    (copy / "calibration.json").write_text(json.dumps(older))
    with pytest.raises(InvalidValueError, match="--calibrate-only"):
        Calibration.load(copy)
    flags = ["--data", str(small_replay), "--max-rows", "200", "--eval-rows", "80"]
    assert main(["train", *flags, "--out", str(copy), "--calibrate-only"]) == 0
    # The training run's flags give its maps and its figures back; the model is untouched.
    assert Calibration.load(copy) == Calibration.load(trained_checkpoint)
    quality = json.loads((copy / "report.json").read_text())["quality"]
    assert quality == json.loads((trained_checkpoint / "report.json").read_text())["quality"]
    assert (copy / "model.safetensors").read_bytes() == before
    # Other data fit the maps to other steps.
    assert main(["train", *flags, "--out", str(copy), "--calibrate-only", "--seed", "1"]) == 0
    assert Calibration.load(copy) != Calibration.load(trained_checkpoint)


def test_a_decoder_checkpoint_works_as_base_and_a_seed_repeats(tmp_path, small_replay):
    base = build_checkpoint("build_tiny_llama.py", tmp_path / "llama")
    reports = [
        train(
            TrainConfig(
                data=[small_replay],
                out=tmp_path / out,
                base=base,
                max_rows=60,
                eval_rows=20,
                epochs=1,
                max_length=64,
            )
        )
        for out in ("out", "again")
    ]
    assert reports[0].rows["test"] == 20
    assert reports[0].quality == reports[1].quality
    assert not asks_for_mean(tmp_path / "out")  # no BERT pooler: vLLM's default, last token
    assert Calibration.load(tmp_path / "out") == Calibration.load(tmp_path / "again")
    forecasts = LocalPredictor(tmp_path / "out").predict(
        [Step(id="a", text="How many eggs?", options=(Option(name="gpt-4-1106-preview"),))]
    )
    assert len(forecasts) == 1
    assert 0.0 <= forecasts[0].p_success <= 1.0


def test_a_trace_file_trains_a_predictor(tmp_path, trained_checkpoint):
    """Decision spans carry the step's text: a deployment learns from its own traffic."""
    path = tmp_path / "traces.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path)))
    options = (Option(name="fast", max_tokens=200), Option(name="deep", max_tokens=800))
    steps = [
        Step(id=f"s{i}", text=f"{'prove' if i % 2 else 'add'} item {i}", options=options)
        for i in range(80)
    ]
    controller = Controller(predictor=PriorPredictor())
    with RunTrace(Budget(tokens=10**7), tracer_provider=provider) as run:
        for step in steps:
            plan = controller.plan([step], run.remaining)
            with run.decision(step, plan, []) as decision:
                deep = plan.next.option == "deep"
                decision.record(
                    Spend(input_tokens=10, output_tokens=600 if deep else 50),
                    success=1.0 if deep or "add" in step.text else 0.0,
                )
    provider.shutdown()
    examples = load_examples([path])
    assert len(examples) == 80
    assert examples[1].text.endswith("prove item 1")
    report = train(
        TrainConfig(
            data=[path],
            out=tmp_path / "from-traces",
            base=trained_checkpoint,
            max_rows=60,
            eval_rows=40,
            epochs=1,
            max_length=32,
        )
    )
    assert report.rows["test"] > 0
    assert (tmp_path / "from-traces" / "calibration.json").exists()


def test_tune_forecasts_each_fold_with_maps_fitted_on_the_other_held_queries(
    trained_checkpoint, small_replay
):
    from roi_agents.bench.simulate import fit_composed
    from roi_agents.data import load_replay
    from roi_agents.predict.cache import CachedPredictor

    queries = load_replay(small_replay)
    learned = CachedPredictor(LocalPredictor(trained_checkpoint))
    held = {q.query_id for q in queries[::3]}
    build = fit_composed(learned, group_by=True, held=lambda q: q.query_id in held)
    given = [q for q in queries if q.query_id not in list(held)[:10]]  # a fold left out
    composed = build(given)
    # The maps are refitted on the held queries given, not the checkpoint's own; the
    # checkpoint's predictor (and its cache) is left as it was.
    remapped = composed.learned.predictor
    assert remapped is not learned.predictor
    assert remapped.calibration.rows == sum(len(q.outcomes) for q in given if q.query_id in held)
    assert remapped.calibration.rows != learned.predictor.calibration.rows
    assert remapped.calibration.labels == learned.predictor.calibration.labels
    assert learned.predictor.calibration == Calibration.load(trained_checkpoint)
    step = Step(
        id="x",
        text=queries[0].text,
        group="gsm8k",
        options=[Option(name=o) for o in queries[0].outcomes],
    )
    assert composed.learned.predict([step]) != learned.predict([step])
    # Built again from the same part (tune does, per fold and setting), the maps are not refitted.
    again = build(given)
    assert again is not composed
    assert again.learned is composed.learned
    assert again.composition == composed.composition
