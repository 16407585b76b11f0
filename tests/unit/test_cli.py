import json

import pytest

from roi_agents.cli import main


def test_bench_writes_table_json_and_plot(shared_data, tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    status = main(
        [
            "bench",
            "--data",
            str(shared_data / "gsm8k.jsonl"),
            "--budgets",
            "0.1,0.25",
            "--episodes",
            "3",
            "--steps",
            "10",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "budget 0.1" in printed
    assert "ours" in printed
    assert "oracle" in printed
    # Not a terminal: progress comes as lines, the last one at the end of the stage.
    assert "replaying: 6/6 after" in printed
    payload = json.loads(out_json.read_text())
    assert [b["fraction"] for b in payload["budgets"]] == [0.1, 0.25]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_tests_on_held_out_subjects(shared_data, tmp_path):
    from roi_agents.bench.simulate import split_queries
    from roi_agents.data import load_replay

    out = tmp_path / "r.json"
    argv = ["bench", "--data", str(shared_data / "mmlu.jsonl"), "--split", "dataset"]
    argv += ["--budgets", "0.25", "--episodes", "2", "--steps", "5", "--json", str(out)]
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["split"] == "dataset"
    train, test = split_queries(load_replay(shared_data / "mmlu.jsonl"), 0.5, 0, "dataset")
    assert (payload["train_queries"], payload["test_queries"]) == (len(train), len(test))
    assert {q.dataset for q in test} < {q.dataset for q in train}  # learnt from a first half


def test_a_dataset_split_of_one_dataset_says_why_it_has_no_test(shared_data, capsys):
    argv = ["bench", "--data", str(shared_data / "gsm8k.jsonl"), "--split", "dataset"]
    assert main([*argv, "--episodes", "1", "--steps", "5"]) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert "holds out whole datasets (these files have 1)" in said
    assert "use --split query" in said


def test_demo_prints_decisions_and_the_comparison(shared_data, monkeypatch, capsys):
    monkeypatch.setenv("ROI_AGENTS_DATA", str(shared_data / "gsm8k.jsonl"))
    assert main(["demo", "--steps", "12"]) == 0
    printed = capsys.readouterr().out
    assert "decisions" in printed
    assert "never over budget: True" in printed
    assert "fixed:gpt-4-1106-preview" in printed


def test_demo_shows_option_names_with_brackets_as_they_are(tmp_path, capsys):
    import json

    rows = [
        {"query_id": f"q{q}", "option": option, "input_tokens": 20, "dataset": "d"}
        | {"output_tokens": tokens + q % 5, "cost_usd": cost, "score": float(q % every > 0)}
        for q in range(40)
        for option, tokens, cost, every in (("o3[/high]", 400, 0.04, 99), ("o3[low]", 50, 0.001, 2))
    ]
    path = tmp_path / "effort.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["demo", "--data", str(path), "--steps", "5", "--budget", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "o3[low]" in printed
    assert "o3[/high] would add" in printed  # in a reason


def test_no_data_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ROI_AGENTS_DATA", raising=False)
    monkeypatch.setenv("ROI_AGENTS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    assert "roi-agents data pull routellm" in capsys.readouterr().out


def test_data_pull_from_a_local_copy(fixtures, tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "pull",
                "routellm",
                "--from",
                str(fixtures / "routellm"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "gsm8k.jsonl").exists()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["bench", "--budgets", "0,x"], ["bench", "--budgets", "-1"]])
def test_bad_flags_exit_with_usage(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_unknown_predictor_is_a_clear_error(shared_data, capsys):
    assert (
        main(["bench", "--data", str(shared_data / "gsm8k.jsonl"), "--predictor", "vllm:http://x"])
        == 2
    )
    assert "predictor" in capsys.readouterr().out


def test_train_refuses_bad_input_with_clear_errors(shared_data, tmp_path, capsys):
    data = str(shared_data / "gsm8k.jsonl")
    assert main(["train", "--data", data, "--out", str(tmp_path / "o"), "--max-rows", "0"]) == 2
    assert "max_rows" in capsys.readouterr().out
    assert (
        main(["train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "nope.jsonl" in capsys.readouterr().out
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["train", "--data", data, "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().out
    assert list(existing.iterdir()) == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_id": "q", "option": "o", "score": 2}\n')
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "bad.jsonl" in capsys.readouterr().out
    assert not (tmp_path / "o2").exists()
    assert not (tmp_path / "o2.partial").exists()
    assert main(["train", "--data", data, "--out", str(existing), "--calibrate-only"]) == 2
    assert "no checkpoint to calibrate" in capsys.readouterr().out
