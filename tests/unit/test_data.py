import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from roi_agents.bench.simulate import split_queries
from roi_agents.data import (
    ReplayRecord,
    convert_pricing_reversal,
    convert_routellm,
    find_data,
    load_replay,
    pull,
    read_records,
)
from roi_agents.data.replay import split_id
from roi_agents.errors import DataError
from roi_agents.train import load_examples
from roi_agents.train.pipeline import TrainConfig, split

REQUIRED = {"query_id", "option", "score"}


def _check_format(path: Path) -> list[dict]:
    """Every line is a JSON object in the documented replay format."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        assert line.keys() >= REQUIRED
        assert "cost_usd" in line or {"input_tokens", "output_tokens"} <= line.keys()
        assert 0 <= line["score"] <= 1
        ReplayRecord.model_validate(line)
    return lines


def test_routellm_converter_matches_the_documented_format(fixtures, tmp_path):
    written = pull("routellm", from_dir=fixtures / "routellm", out_dir=tmp_path)
    assert sorted(p.name for p in written) == ["gsm8k.jsonl", "mmlu.jsonl"]
    gsm8k = _check_format(tmp_path / "gsm8k.jsonl")
    assert [(r["query_id"], r["option"], r["score"]) for r in gsm8k] == [
        ("gsm8k-0", "mixtral-8x7b-instruct-v0.1", 1.0),
        ("gsm8k-0", "gpt-4-1106-preview", 1.0),
        ("gsm8k-1", "mixtral-8x7b-instruct-v0.1", 0.0),
        ("gsm8k-1", "gpt-4-1106-preview", 1.0),
    ]
    # all-MiniLM-L6-v2 WordPiece counts of the hand-written prompt and answers.
    assert [(r["input_tokens"], r["output_tokens"]) for r in gsm8k] == [
        (24, 19),
        (24, 10),
        (17, 10),
        (17, 16),
    ]
    # List prices: mixtral 0.6 / 0.6, gpt-4 10 / 30 USD per million tokens.
    assert gsm8k[0]["cost_usd"] == pytest.approx((24 + 19) * 0.6e-6)
    assert gsm8k[1]["cost_usd"] == pytest.approx(24 * 10e-6 + 10 * 30e-6)
    mmlu = _check_format(tmp_path / "mmlu.jsonl")
    assert {r["dataset"] for r in mmlu} == {"mmlu-astronomy"}
    assert all(r["output_tokens"] == 1 for r in mmlu)
    assert [r["score"] for r in mmlu] == [1.0, 1.0, 0.0, 1.0]


def test_pricing_reversal_converter_joins_models_by_prompt(fixtures, tmp_path):
    (path,) = pull("pricing-reversal", from_dir=fixtures / "pricing-reversal", out_dir=tmp_path)
    rows = _check_format(path)
    by_query: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_query.setdefault(row["query_id"], {})[row["option"]] = row
    moon = next(q for q in by_query.values() if "Moon" in next(iter(q.values()))["text"])
    assert set(moon) == {"fast-model", "deep-model"}
    assert moon["deep-model"]["thinking_tokens"] == 850
    assert moon["deep-model"]["cost_usd"] == 0.0095
    assert len(by_query) == 2  # the other query lacks the deep model: still loaded


def test_loading_accepts_missing_fields_graded_scores_and_partial_options(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        {"query_id": "a", "option": "x", "score": 0.5, "cost_usd": 0.1},
        {"query_id": "a", "option": "y", "score": 1, "input_tokens": 3, "output_tokens": 4},
        {"query_id": "b", "option": "z", "score": 0.25, "cost_usd": 0.2, "extra": "ignored"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    queries = load_replay(path)
    assert [sorted(q.outcomes) for q in queries] == [["x", "y"], ["z"]]
    assert queries[0].outcomes["x"].cost("tokens") is None
    assert queries[0].outcomes["y"].cost("tokens") == 7


def test_files_loaded_together_keep_their_queries_apart(tmp_path):
    # Both files number their queries from 0: ids are unique within a file only.
    for name, text in (("a.jsonl", "alpha"), ("b.jsonl", "beta")):
        lines = [
            {"query_id": str(q), "option": option, "score": 1, "cost_usd": 1, "text": f"{text}{q}"}
            for q in range(40)
            for option in ("x", "y")
        ]
        (tmp_path / name).write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    queries = load_replay([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert len(queries) == 80
    assert all(q.text.startswith("alpha" if "@" not in q.query_id else "beta") for q in queries)
    assert queries[40].query_id == "0 @ b.jsonl"
    assert split_id(queries[40].query_id) == "0"
    examples = load_examples([tmp_path])  # a folder: both files
    assert sorted({e.query_id for e in examples}) == sorted(q.query_id for q in queries)
    # A query's side of a split is the same whether its file is loaded alone or not.
    _, alone = split_queries(load_replay(tmp_path / "b.jsonl"), 0.5, seed=0)
    _, together = split_queries(queries, 0.5, seed=0)
    assert {q.text for q in alone} == {q.text for q in together if q.text.startswith("beta")}
    held = split(TrainConfig(data=[tmp_path], out=tmp_path / "out", eval_rows=400)).test
    assert {e.text.split("] ")[1] for e in held} == {q.text for q in together}  # "[x] alpha0"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"query_id": "a", "option": "x", "score": 1.5, "cost_usd": 1}, "score"),
        ({"query_id": "a", "option": "x", "score": 1}, "cost_usd"),
        ({"query_id": "a", "score": 1, "cost_usd": 1}, "option"),
        ({"query_id": "a", "option": "x", "score": 1, "cost_usd": -1}, "cost_usd"),
        ({"query_id": "a", "option": "x", "score": 1, "cost_usd": 1e300}, "cost_usd"),
        (
            {"query_id": "a", "option": "x", "score": 1, "cost_usd": 1, "output_tokens": 2**60},
            "output",
        ),
        ({"query_id": "a\t", "option": "x", "score": 1, "cost_usd": 1}, "query_id"),
        ({"query_id": "a", "option": "x\x1b[2J", "score": 1, "cost_usd": 1}, "option"),
        ({"query_id": "a", "option": "x", "score": 1, "cost_usd": 1, "dataset": "d\n"}, "dataset"),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"query_id": "ok", "option": "x", "score": 1, "cost_usd": 1})
        + "\n"
        + json.dumps(line)
        + "\n"
    )
    with pytest.raises(DataError, match=message) as info:
        list(read_records(path))
    assert info.value.line == 2
    assert str(path) in str(info.value)


def test_duplicate_pairs_and_empty_files_are_refused(tmp_path):
    from roi_agents.train.examples import load_examples

    path = tmp_path / "dup.jsonl"
    row = json.dumps({"query_id": "a", "option": "x", "score": 1, "cost_usd": 1})
    other = json.dumps({"query_id": "b", "option": "x", "score": 0, "cost_usd": 1})
    path.write_text(row + "\n" + other + "\n" + row + "\n")
    for load in (load_replay, lambda p: load_examples([p])):
        with pytest.raises(DataError, match=r"dup.jsonl:3: .* twice \(first on line 1\)"):
            load(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no records"):
        load_replay(empty)
    with pytest.raises(DataError, match="cannot read"):
        load_replay(tmp_path / "missing.jsonl")


def test_bad_source_folders_are_refused(tmp_path):
    with pytest.raises(DataError, match="no gsm8k"):
        convert_routellm(tmp_path)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="consolidated"):
        convert_pricing_reversal(tmp_path)


def test_find_data_order(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("ROI_AGENTS_DATA", str(shared_data / "gsm8k.jsonl"))
    assert find_data() == shared_data / "gsm8k.jsonl"
    monkeypatch.setenv("ROI_AGENTS_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="ROI_AGENTS_DATA"):
        find_data()
    monkeypatch.delenv("ROI_AGENTS_DATA")
    monkeypatch.setenv("ROI_AGENTS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert find_data() is None
    pull("routellm", from_dir=Path(__file__).parents[1] / "fixtures" / "routellm")
    assert find_data() == tmp_path / "home" / "data"


class _GitHubMirror(SimpleHTTPRequestHandler):
    """Serves a folder as GitHub's contents API (listings) and raw downloads, on loopback."""

    def do_GET(self):
        prefix = "/repos/lm-sys/RouteLLM/contents/"
        if self.path.startswith(prefix):
            folder = Path(self.directory) / self.path.removeprefix(prefix)
            host = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
            entries = (
                [
                    {
                        "type": "file",
                        "name": f.name,
                        "size": f.stat().st_size,
                        "download_url": f"{host}/{f.relative_to(self.directory)}",
                    }
                    for f in sorted(folder.iterdir())
                ]
                if folder.is_dir()
                else None
            )
            body = json.dumps(entries).encode()
            self.send_response(200 if entries is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_pull_downloads_through_the_contents_api(fixtures, tmp_path):
    handler = partial(_GitHubMirror, directory=str(fixtures / "routellm"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        fetched: list[str] = []
        written = pull("routellm", out_dir=tmp_path, api=api, progress=fetched.append)
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(fetched) == ["gsm8k_responses.csv", "mmlu_astronomy.csv"]
    assert sorted(p.name for p in written) == ["gsm8k.jsonl", "mmlu.jsonl"]
    assert len(_check_format(tmp_path / "gsm8k.jsonl")) == 4


def test_pull_offline_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--from DIR"):
        pull("routellm", out_dir=tmp_path, api="http://127.0.0.1:9")


def test_a_line_that_is_not_utf8_is_named_by_file_and_line(tmp_path, capsys):
    from roi_agents.cli import main
    from roi_agents.data.replay import jsonl_lines

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"span": 1}\n{"query_id": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="not UTF-8") as info:
        list(jsonl_lines(path))
    assert (info.value.path, info.value.line) == (str(path), 2)
    assert main(["report", str(path)]) == 2  # a one-line error, not a traceback
    assert f"{path}:" in capsys.readouterr().out


def test_mixed_cost_fields_name_the_lines_that_lack_them(tmp_path):
    from roi_agents.bench.simulate import choose_resource

    path = tmp_path / "mixed.jsonl"
    rows = [
        {"query_id": "a", "option": "x", "score": 1, "cost_usd": 0.1},
        {"query_id": "b", "option": "y", "score": 1, "input_tokens": 5, "output_tokens": 7},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="has no token counts, and line 2 of ") as info:
        choose_resource(load_replay(path))
    assert (info.value.path, info.value.line) == (str(path), 1)
    assert "(query 'b' option 'y') no cost_usd" in str(info.value)
