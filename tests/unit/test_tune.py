import dataclasses
import json

import pytest

from roi_agents.allocate import Policy, Setting
from roi_agents.bench.simulate import BenchConfig, run_bench, split_queries
from roi_agents.bench.tune import CANDIDATES, DEFAULT, tune
from roi_agents.cli import main
from roi_agents.data import load_replay
from roi_agents.data.replay import ReplayQuery
from roi_agents.errors import InvalidValueError

CONFIG = BenchConfig(budgets=(0.1, 0.5), episodes=6, steps=10, seed=1)


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return load_replay(shared_data / "gsm8k.jsonl")


@pytest.fixture(scope="module")
def tuned(gsm8k):
    return tune(gsm8k, CONFIG, data="gsm8k")


def test_one_setting_per_budget_chosen_by_the_rule(tuned, gsm8k):
    train, _ = split_queries(gsm8k, CONFIG.train_fraction, CONFIG.seed)
    dearest = [q.outcomes["gpt-4-1106-preview"].cost("usd") for q in train]
    mean_dearest = sum(dearest) / len(dearest)
    policy = tuned.policy
    assert policy.resource == "usd"
    assert [s.fraction for s in policy.settings] == [0.1, 0.5]
    assert (tuned.folds, tuned.episodes, tuned.train_queries) == (2, 3, len(train))
    assert tuned.steps == CONFIG.steps
    for setting in policy.settings:
        assert setting.per_step == pytest.approx(setting.fraction * mean_dearest)
        assert set(setting.values) == {f"{q}/{r}" for q, r in CANDIDATES}
        assert all(0 <= v <= CONFIG.steps for v in setting.values.values())
        gain, se = setting.margin
        chosen = f"{setting.quantile}/{setting.risk}"
        best = max(setting.values, key=setting.values.get)
        assert chosen in (best, "/".join(DEFAULT))  # best only if it won on every fold too
        if gain <= se:
            assert chosen == "/".join(DEFAULT)


def test_the_test_part_is_never_read(tuned, gsm8k):
    _, test = split_queries(gsm8k, CONFIG.train_fraction, CONFIG.seed)
    held = {q.query_id for q in test}
    # Every test query fails everything and costs nothing: the policy must not change.
    spoiled = [
        q
        if q.query_id not in held
        else ReplayQuery(
            query_id=q.query_id,
            dataset=q.dataset,
            text=q.text,
            outcomes={name: r.model_copy(update={"score": 0.0}) for name, r in q.outcomes.items()},
        )
        for q in gsm8k
    ]
    assert tune(spoiled, CONFIG, data="gsm8k").policy == tuned.policy


def test_bench_plans_with_the_policy(tuned, gsm8k):
    result = run_bench(
        gsm8k, BenchConfig(budgets=(0.1,), episodes=3, steps=10, seed=1, policy=tuned.policy)
    )
    shape = result.to_json()
    assert Policy.model_validate(shape["policy"]) == tuned.policy
    assert result.budgets[0.1]["ours"].overruns == 0


def test_bad_settings_are_named(gsm8k):
    with pytest.raises(InvalidValueError, match="folds"):
        tune(gsm8k, CONFIG, folds=1)
    with pytest.raises(InvalidValueError, match="folds"):
        tune(gsm8k[:3], BenchConfig(steps=1, episodes=2), folds=3)


def test_policy_round_trips_and_bad_files_are_named(tmp_path):
    policy = Policy(resource="tokens", settings=[Setting(per_step=10.0, risk="run")])
    policy.save(tmp_path / "p.json")
    # Two settings at one per_step would leave their order to decide.
    twice = [Setting(per_step=10.0, risk="run"), Setting(per_step=10.0, quantile="p99")]
    with pytest.raises(ValueError, match="same per_step"):
        Policy(resource="tokens", settings=twice)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "p.json").read_bytes())
    assert Policy.load(tmp_path / "bom.json") == policy
    assert Policy.load(tmp_path / "p.json") == policy
    (tmp_path / "bad.json").write_text('{"resource": "tokens", "settings": []}')
    with pytest.raises(InvalidValueError, match="not a policy"):
        Policy.load(tmp_path / "bad.json")
    with pytest.raises(InvalidValueError, match="cannot read"):
        Policy.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="per_step"):
        Setting(per_step=-1.0)


def test_cli_tune_then_bench_with_the_policy(shared_data, tmp_path, capsys):
    data = str(shared_data / "gsm8k.jsonl")
    small = ["--budgets", "0.25", "--episodes", "4", "--steps", "8"]
    out = tmp_path / "policy.json"
    assert main(["tune", "--data", data, *small, "--out", str(out)]) == 0
    policy = Policy.load(out)
    assert [s.fraction for s in policy.settings] == [0.25]
    assert "p90/run" in capsys.readouterr().out
    result = tmp_path / "bench.json"
    assert main(["bench", "--data", data, *small, "--policy", str(out), "--json", str(result)]) == 0
    shown = capsys.readouterr().out
    assert "by its policy" in shown
    assert "warning" not in shown
    # Another seed's test part may be this policy's training part; online is not offline.
    assert main(["bench", "--data", data, *small, "--policy", str(out), "--seed", "1"]) == 0
    assert "tuned with seed 0" in capsys.readouterr().out
    assert main(["bench", "--data", data, *small, "--policy", str(out), "--online"]) == 0
    assert "tuned offline; this bench runs online" in capsys.readouterr().out
    assert json.loads(result.read_text())["policy"]["settings"][0]["fraction"] == 0.25
    assert main(["bench", "--data", data, *small, "--policy", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().out
    assert main(["tune", "--data", data, *small, "--out", str(tmp_path)]) == 2
    assert "cannot write" in capsys.readouterr().out
    assert main(["bench", "--data", data, *small, "--json", str(tmp_path)]) == 2
    assert "json: cannot write" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--data", data, "--budgets", "0.1,0.1"])
    assert "twice" in capsys.readouterr().err
    assert main(["tune", "--data", data, *small, "--seed", "-1", "--out", str(out)]) == 2
    assert "seed: must be >= 0" in capsys.readouterr().out
    assert main(["tune", "--data", data, *small, "--folds", "1", "--out", str(out)]) == 2
    assert "folds" in capsys.readouterr().out
    # GPQA's training folds hold about 48 queries: longer episodes are cut, and it says so.
    gpqa = ["--data", str(shared_data / "gpqa.jsonl"), "--budgets", "0.25", "--episodes", "2"]
    assert main(["tune", *gpqa, "--steps", "60", "--out", str(out)]) == 0
    assert "not --steps 60" in capsys.readouterr().out


def test_with_a_composed_predictor_it_also_chooses_how_far_to_follow(gsm8k):
    from roi_agents.bench.simulate import fit_prior
    from roi_agents.bench.tune import FOLLOWS
    from roi_agents.predict.composed import ComposedPredictor

    seen = []

    def build(train):
        # A prior fitted on the same queries stands in for the checkpoint: it knows each
        # option's rate and nothing per step, so following it changes no forecast.
        composed = ComposedPredictor(fit_prior(True)(train), fit_prior(True)(train))
        seen.append(composed)
        return composed

    tuned = tune(gsm8k, CONFIG, predictor=build)
    assert set(tuned.policy.follows) == {f"{f:g}" for f in FOLLOWS}
    assert len(set(tuned.policy.follows.values())) == 1  # no deviation: every follow alike
    assert tuned.policy.follow == 0.0  # ties keep the prior alone
    # bench --policy gives the composed predictor the policy's follow.
    policy = tuned.policy.model_copy(update={"follow": 0.5})
    run_bench(
        gsm8k, BenchConfig(budgets=(0.1,), episodes=1, steps=5, policy=policy), predictor=build
    )
    assert seen[-1].follow == 0.5


def test_a_policy_for_another_resource_is_refused(gsm8k):
    policy = Policy(resource="tokens", settings=[Setting(per_step=100.0, risk="run")])
    with pytest.raises(InvalidValueError, match="counts tokens"):
        run_bench(gsm8k, BenchConfig(budgets=(0.1,), episodes=1, steps=5, policy=policy))


def test_only_the_queries_given_are_replayed(gsm8k):
    train, _ = split_queries(gsm8k, CONFIG.train_fraction, CONFIG.seed)
    chosen = {q.query_id for q in train[:200]}
    tuned = tune(gsm8k, CONFIG, replay=lambda q: q.query_id in chosen)
    assert (tuned.train_queries, tuned.replayed_queries) == (len(train), 200)
    with pytest.raises(InvalidValueError, match="3 training queries to replay"):
        tune(gsm8k, CONFIG, replay=lambda q: q.query_id in set(list(chosen)[:3]))


def test_online_each_candidate_learns_from_its_own_episodes(gsm8k):
    from roi_agents.predict.prior import PriorPredictor

    class Counting(PriorPredictor):
        def __init__(self) -> None:
            super().__init__()
            self.observed = 0

        def observe(self, *args, **kwargs) -> None:
            self.observed += 1
            super().observe(*args, **kwargs)

    built: list[Counting] = []

    def build(train):
        prior = Counting()
        for query in train:
            for record in query.outcomes.values():
                prior.record(record.option, query.dataset, record.spend, record.score)
        built.append(prior)
        return prior

    online = dataclasses.replace(CONFIG, online=True)
    tuned = tune(gsm8k, online, predictor=build)
    assert tuned.policy.online
    # Per fold: the fold's model, then one learner per budget and candidate, each taught by
    # every step its own plans ran (3 episodes of 10 steps; a skip teaches nothing).
    per_fold = 1 + len(CONFIG.budgets) * len(CANDIDATES)
    assert len(built) == tuned.folds * per_fold
    for fold in range(tuned.folds):
        first, *learners = built[fold * per_fold : (fold + 1) * per_fold]
        assert first.observed == 0
        assert all(0 < p.observed <= tuned.episodes * CONFIG.steps for p in learners)
    # Offline, nothing learns and the same build serves every candidate.
    built.clear()
    assert not tune(gsm8k, CONFIG, predictor=build).policy.online
    assert len(built) == tuned.folds
    assert not any(p.observed for p in built)


def test_a_gain_must_hold_on_every_fold():
    import numpy as np

    from roi_agents.bench.tune import _Earned, _pick

    boot = np.random.default_rng(0).normal(0.0, 0.01, size=200)
    default = _Earned(10.0, 10.0 + boot, np.array([10.0, 10.0]))
    steady = _Earned(11.0, 11.0 + boot * 2, np.array([11.0, 11.0]))
    one_fold = _Earned(11.0, 11.0 + boot * 2, np.array([12.5, 9.5]))  # the same gain, one fold
    assert _pick({"d": default, "s": steady}, "d")[0] == "s"
    chosen, gain, se = _pick({"d": default, "o": one_fold}, "d")
    assert (chosen, gain) == ("d", 1.0)
    assert se < gain
