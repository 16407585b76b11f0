"""The adherence harness itself, with roi-agents alone (the peers install other projects)."""

import json

import pytest
from live import load_example

pytestmark = pytest.mark.integration


def test_the_harness_measures_every_roi_agents_entry_point(tiny_chat_server, tmp_path, capsys):
    harness = load_example("run", "benchmarks/adherence")
    status = harness.main(
        [
            "--base-url",
            tiny_chat_server.base_url,
            "--only",
            "roi-agents",
            "--scenarios",
            "tools,concurrency",
            "--out",
            str(tmp_path),
        ]
    )
    rows = json.loads((tmp_path / "adherence.json").read_text())
    assert status == 0, capsys.readouterr().out
    assert [(r["entry"], r["scenario"]) for r in rows] == [
        (entry, scenario)
        for entry in ("budgeted", "middleware", "nodes", "agent")
        for scenario in ("tools", "concurrency")
    ]
    for row in rows:
        assert "error" not in row
        assert row["server"] <= row["budget"]  # by the server's own count
        assert row["reported"] == row["server"]
        if row["scenario"] == "tools":  # the schemas alone do not fit: nothing is sent
            assert row["server"] == row["sent"] == 0
        else:
            assert row["sent"] > 0
    table = (tmp_path / "adherence.md").read_text()
    assert "| roi-agents" in table
    assert (tmp_path / "adherence.png").read_bytes()[:4] == b"\x89PNG"
