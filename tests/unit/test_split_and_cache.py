"""Seeded id-based splits shared by train and bench; the forecast cache."""

import math

import pytest

from roi_agents import Option, PriorPredictor, Step
from roi_agents.bench.simulate import split_queries
from roi_agents.data import load_replay
from roi_agents.data.replay import split_id
from roi_agents.data.split import split_by
from roi_agents.predict.cache import CachedPredictor
from roi_agents.train import load_examples


def test_a_query_lands_on_the_same_side_whatever_else_is_loaded(shared_data):
    alone = load_replay(shared_data / "gsm8k.jsonl")
    mixed = load_replay([shared_data / "gpqa.jsonl", shared_data / "gsm8k.jsonl"])
    _, test_alone = split_queries(alone, 0.5, seed=3)
    _, test_mixed = split_queries(mixed, 0.5, seed=3)
    ids = {q.query_id for q in alone}
    assert {q.query_id for q in test_alone} == {q.query_id for q in test_mixed if q.query_id in ids}
    assert 0.45 < len(test_alone) / len(alone) < 0.55
    # Training's examples split by the same rule: the bench's test queries are its test rows.
    examples = load_examples([shared_data / "gsm8k.jsonl"])
    _, held = split_by(examples, lambda e: e.query_id, [0.5], seed=3)
    assert {e.query_id for e in held} == {q.query_id for q in test_alone}
    _, other_seed = split_queries(alone, 0.5, seed=4)
    assert {q.query_id for q in other_seed} != {q.query_id for q in test_alone}


def test_a_dataset_split_tests_on_subjects_training_held_out(shared_data):
    queries = load_replay(shared_data / "mmlu.jsonl")
    train, test = split_queries(queries, 0.5, seed=0, by="dataset")
    assert len(train) + len(test) == len(queries)
    # The held-out subjects are the ones `roi-agents train --split dataset` holds out ...
    examples = load_examples([shared_data / "mmlu.jsonl"])
    known, _ = split_by(examples, lambda e: e.dataset or "", [0.5], seed=0)
    trained = {e.dataset for e in known}
    tested = {q.dataset for q in test}
    assert tested
    assert not tested & trained
    # ... and the bench's training part holds the first part of each of their queries, for
    # the prior to learn the new subjects from, and never a test query.
    learn = [q for q in train if q.dataset in tested]
    assert {q.dataset for q in learn} == tested
    assert 0.4 < len(learn) / (len(learn) + len(test)) < 0.6
    assert not {q.query_id for q in train} & {q.query_id for q in test}


class Counting:
    """A real predictor that counts the (step, option) pairs it is asked for."""

    def __init__(self):
        self.inner = PriorPredictor()
        self.asked = 0
        self.last_fallback = None

    def predict(self, steps):
        self.asked += sum(len([o for o in s.options if o.name != "skip"]) for s in steps)
        return self.inner.predict(steps)

    async def apredict(self, steps):
        return self.predict(steps)


OPTIONS = (Option(name="fast", max_tokens=100), Option(name="deep", max_tokens=900))


def _steps(n, prefix="s"):
    return [Step(id=f"{prefix}{i}", text=f"task {i}", options=OPTIONS) for i in range(n)]


async def test_only_unseen_pairs_reach_the_predictor():
    counting = Counting()
    cache = CachedPredictor(counting)
    first = cache.predict(_steps(5))
    assert counting.asked == 10
    again = cache.predict(_steps(5)[2:])  # a re-planning turn: nothing new
    assert counting.asked == 10
    assert again == first[4:]
    more = await cache.apredict(_steps(7))
    assert counting.asked == 14
    assert more[:10] == first
    # Same id, other text: another question.
    cache.predict([Step(id="s0", text="changed", options=OPTIONS)])
    assert counting.asked == 16


def test_fallback_forecasts_are_not_remembered_and_the_size_is_bounded():
    counting = Counting()
    cache = CachedPredictor(counting, size=4)
    counting.last_fallback = "ConnectError"
    cache.predict(_steps(2))
    cache.predict(_steps(2))
    assert counting.asked == 8
    counting.last_fallback = None
    cache.predict(_steps(3))
    assert counting.asked == 14
    cache.predict(_steps(3)[1:])  # s1, s2 kept (4 newest pairs)
    assert counting.asked == 14
    cache.predict(_steps(1))  # s0 was evicted
    assert counting.asked == 16


def test_training_fits_whole_queries_and_calibrates_on_the_ones_left_over(shared_data, tmp_path):
    from roi_agents.train.pipeline import TrainConfig, split

    config = TrainConfig(
        data=[shared_data / "gsm8k.jsonl"], out=tmp_path / "out", max_rows=400, eval_rows=300
    )
    parts = split(config)
    fit = {e.query_id for e in parts.fit}
    assert 398 <= len(parts.fit) <= 400  # two options per query
    assert all(sum(e.query_id == q for e in parts.fit) == 2 for q in list(fit)[:20])
    calibration = {e.query_id for e in parts.calibration}
    assert not fit & calibration
    assert not (fit | calibration) & {e.query_id for e in parts.test}
    test = [e.query_id for e in parts.test]
    assert 298 <= len(test) <= 300
    assert all(test.count(q) == 2 for q in test)  # whole queries, for the option-set maps
    # The 10% calibration split plus up to eval_rows rows of left-over queries.
    known, _ = split_by(load_examples(config.data), lambda e: e.query_id, [0.5], config.seed)
    _, _, ten_percent = split_by(known, lambda e: e.query_id, [0.8, 0.9], config.seed, "fit")
    assert len(parts.calibration) == len(ten_percent) + 300
    assert split(config).calibration == parts.calibration  # seeded


def test_calibration_reads_every_option_and_the_group_rate():
    from dataclasses import replace

    import numpy as np
    import pytest

    from roi_agents.predict.calibration import conformal_quantiles, option_set
    from roi_agents.train.examples import Example
    from roi_agents.train.pipeline import calibrate, evaluate

    rng = np.random.default_rng(0)
    rows, outputs, fitted_on = [], [], []
    # Groups differ in how often the dear option succeeds; the model cannot tell them apart.
    for group, queries, dear_rate in (("easy", 300, 0.9), ("hard", 300, 0.4), ("solo", 60, 0.5)):
        options = ("cheap", "dear") if group != "solo" else ("dear",)
        for q in range(queries):
            hard = rng.normal()
            for option in options:
                # The cheap option's logit knows the query, but the model takes every "hard"
                # query for an easier one than it is; the dear option's logit is noise.
                shift = 2.0 if group == "hard" else 0.0
                logit = shift - hard if option == "cheap" else rng.normal()
                rate = 1 / (1 + np.exp(hard - 1.0)) if option == "cheap" else dear_rate
                success, seen = (float(rng.uniform() < rate) for _ in range(2))
                tokens = 3.0 + rng.standard_t(3)
                rows.append(Example(f"{group}{q}", group, option, "t", success, tokens, None))
                outputs.append([logit, 3.0, 0.0])
                fitted_on.append(Example(f"f{group}{q}", group, option, "t", seen, 3.0, None))
    calibration = calibrate(rows, outputs, fitted_on)
    success = calibration.success
    assert success.group_rates["easy"]["dear"] == pytest.approx(0.9, abs=0.05)
    assert set(success.by_set) == {option_set(["cheap", "dear"])}  # "solo" offers one option
    dear = success.by_set["cheap|dear"]["dear"]
    assert abs(dear.weights["dear"]) < 0.2
    cheap = success.by_set["cheap|dear"]["cheap"]
    assert cheap.weights["cheap"] > 0.5
    # A group the fine-tuning rows lack has no rate of its own, and so no centre either.
    unseen = calibrate(rows, outputs, [e for e in fitted_on if e.dataset != "hard"]).success
    assert "hard" not in unseen.group_rates
    assert set(unseen.group_centres) == {"easy", "solo"}
    # Centred on the group's mean logit, the shift is gone: the level is the group's rate.
    assert success.group_centres["hard"]["cheap"] > success.group_centres["easy"]["cheap"] + 1.5
    cheap_hard = [i for i, e in enumerate(rows) if e.dataset == "hard" and e.option == "cheap"]
    logits: dict[str, dict[str, float]] = {}
    for e, o in zip(rows, outputs, strict=True):
        logits.setdefault(e.query_id, {})[e.option] = o[0]
    mean_p = np.mean([success.p("cheap", "hard", logits[rows[i].query_id]) for i in cheap_hard])
    assert mean_p == pytest.approx(np.mean([rows[i].success for i in cheap_hard]), abs=0.05)
    # 60 "solo" rows cannot bound the 99th percentile of cost: the option's maps do.
    solo, dear_maps = calibration.by_group["solo"]["dear"], calibration.by_option["dear"]
    residuals = [
        e.log_tokens - 3.0 for e in rows if e.dataset == "solo" and e.log_tokens is not None
    ]
    assert solo.tokens == conformal_quantiles(residuals, beyond=dear_maps.tokens)
    assert solo.tokens != conformal_quantiles(residuals)
    by_group = evaluate(rows, outputs, calibration)[1]
    # Without the groups' rates every map can only give the dear option about its overall rate.
    blind = calibrate(rows, outputs, [replace(e, dataset=None) for e in fitted_on])
    assert blind.success.group_rates == {}
    blind_by_group = evaluate(rows, outputs, blind)[1]
    for group in ("easy", "hard"):
        assert by_group[group].brier < blind_by_group[group].brier - 0.01


def test_a_group_never_fine_tuned_on_starts_from_the_held_out_rate():
    import numpy as np
    import pytest

    from roi_agents.train.examples import Example
    from roi_agents.train.pipeline import calibrate, evaluate

    rng = np.random.default_rng(1)
    # Fine-tuned on subjects where the option succeeds 20% of the time; held out: others, 80%.
    fitted_on = [
        Example(f"f{q}", f"old{q % 5}", "o", "t", float(rng.uniform() < 0.2), 3.0, None)
        for q in range(2000)
    ]
    rows = [
        Example(f"h{q}", f"new{q % 5}", "o", "t", float(rng.uniform() < 0.8), 3.0, None)
        for q in range(1000)
    ]
    # Success logits: noise about a mean of 1.
    outputs = [[float(x), 3.0, 0.0] for x in rng.normal(1.0, 1.0, len(rows))]
    calibration = calibrate(rows, outputs, fitted_on)
    success = calibration.success
    assert success.option_rates["o"] == pytest.approx(0.2, abs=0.03)
    assert success.held_out_rates["o"] == pytest.approx(np.mean([e.success for e in rows]))
    # A step in a group neither part has seen, at the held-out rows' mean logit: their rate.
    assert success.p("o", "other", {"o": 1.0}) == pytest.approx(0.8, abs=0.03)
    assert success.p("o", "old1", {"o": 1.0}) == pytest.approx(0.2, abs=0.05)
    # The Brier score's baseline stays the fine-tuning rows' rate.
    quality = evaluate(rows, outputs, calibration)[0]
    assert quality.brier_base == pytest.approx(
        np.mean([(0.2 - e.success) ** 2 for e in rows]), abs=0.03
    )
    assert quality.brier < quality.brier_base - 0.2


def test_calibration_reads_the_prompt_size_that_the_logits_miss():
    from dataclasses import replace

    import numpy as np
    import pytest

    from roi_agents.predict.calibration import PROMPT
    from roi_agents.train.examples import Example
    from roi_agents.train.pipeline import calibrate, evaluate

    rng = np.random.default_rng(2)
    rows, outputs = [], []
    for q in range(600):
        # The cheap option fails on long prompts; its logit is noise, as a mean-pooled encoder's
        # is about length. The dear option does not care.
        size = int(rng.lognormal(5.0, 0.5))
        hard = math.log(size + 1) - 5.0
        for option in ("cheap", "dear"):
            rate = 1 / (1 + np.exp(3 * hard)) if option == "cheap" else 0.8
            success = float(rng.uniform() < rate)
            rows.append(Example(f"q{q}", "g", option, "t", success, 3.0, None, size))
            outputs.append([float(rng.normal()), 3.0, 0.0])
    calibration = calibrate(rows, outputs)
    success = calibration.success
    assert success.prompt_centre == pytest.approx(5.0, abs=0.1)
    assert success.by_option["cheap"].weights[PROMPT] < -1.0
    assert abs(success.by_option["dear"].weights[PROMPT]) < 0.3
    short, long = (round(math.exp(x)) for x in (4.5, 5.5))
    assert (
        success.p("cheap", "g", {"cheap": 0.0}, short)
        > success.p("cheap", "g", {"cheap": 0.0}, long) + 0.3
    )
    # Rows without prompt sizes fit maps that read none, and forecast worse.
    blind = calibrate([replace(e, input_tokens=None) for e in rows], outputs)
    assert blind.success.prompt_centre is None
    assert PROMPT not in blind.success.by_option["cheap"].weights
    assert evaluate(rows, outputs, calibration)[0].brier < (
        evaluate(rows, outputs, blind)[0].brier - 0.02
    )


def test_train_calibrates_on_at_most_eval_rows_of_a_large_file(tmp_path):
    """A large file's calibration split is bounded, by whole queries, and the report says so."""
    import json

    from roi_agents.train.pipeline import TrainConfig, split

    path = tmp_path / "large.jsonl"
    with path.open("w") as out:
        for q in range(3000):
            for option in ("a", "b"):
                row = {"query_id": f"q{q}", "option": option, "score": q % 2, "cost_usd": 0.1}
                out.write(json.dumps(row) + "\n")
    parts = split(TrainConfig(data=[path], out=tmp_path / "out", max_rows=400, eval_rows=100))
    assert len(parts.calibration) <= 200  # its own 10%, then the left-over fit rows
    assert parts.calibration_available > 300 > len(parts.calibration) - 100  # 10% of 3,000 rows
    for rows in (parts.calibration, parts.fit, parts.test):
        ids = {e.query_id for e in rows}
        assert len(rows) == 2 * len(ids)  # whole queries


@pytest.mark.parametrize("by", ["query", "dataset"])
def test_fine_tuned_on_names_the_fit_part_that_train_draws_from(shared_data, tmp_path, by):
    from roi_agents.data.split import fine_tuned_on
    from roi_agents.train.pipeline import TrainConfig, split

    data = [shared_data / ("mmlu.jsonl" if by == "dataset" else "gsm8k.jsonl")]
    config = TrainConfig(data=data, out=tmp_path / "out", seed=3, split=by, max_rows=100_000)
    parts = split(config)

    def key(e):
        return (e.dataset or "") if by == "dataset" else split_id(e.query_id)

    def tuned(e):
        return fine_tuned_on(key(e), config.seed, config.train_fraction, by)

    assert parts.fit
    assert all(tuned(e) for e in parts.fit)
    assert not any(tuned(e) for e in [*parts.validation, *parts.calibration, *parts.test])
