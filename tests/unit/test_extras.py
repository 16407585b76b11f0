"""The core install is what a graph node needs; everything else is an extra that says so."""

import argparse
import subprocess
import sys
import textwrap

import pytest

from roi_agents import __version__
from roi_agents.cli import _parser, main
from roi_agents.telemetry import names

# What only the extras install: a node, a session and the budgeted model must not need them.
EXTRAS_ONLY = (
    "opentelemetry.sdk",
    "opentelemetry.semconv",
    "rich",
    "matplotlib",
    "highspy",
    "platformdirs",
    "click",
)

_HIDE = f"""
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {{"rich", "matplotlib", "highspy", "platformdirs", "click"}} or (
            name.startswith(("opentelemetry.sdk", "opentelemetry.semconv"))
        ):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
EXTRAS_ONLY = {EXTRAS_ONLY!r}
"""


def _run(body: str) -> subprocess.CompletedProcess[str]:
    code = _HIDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_session_and_the_graph_nodes_run_on_the_core_alone():
    done = _run(
        """
        from roi_agents import Budget, BudgetSession, Option, Step, price
        from roi_agents_langgraph import BudgetControllerNode, BudgetMiddleware, budgeted

        session = BudgetSession(budget=Budget(tokens=1_000))
        step = Step(id="s", text="hi", options=[Option(name="fast", max_tokens=64)], input_tokens=8)
        decision = session.decide([step])
        with session.call(decision, step.option(decision.option), prompt=8) as call:
            call.charge(price(None, 8, 20))
        BudgetControllerNode(), BudgetMiddleware(budget=Budget(tokens=100))
        print(session.report().spent.tokens)
        print(sorted(m for m in sys.modules if m.startswith(EXTRAS_ONLY)))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["28", "[]"]


def test_without_the_cli_extra_the_console_script_names_it():
    done = _run(
        """
        from roi_agents.__main__ import main
        sys.exit(main(["--version"]))
        """
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "roi-agents: this needs rich, from the extra [cli]: pip install 'roi-agents[cli]'"
    )


def test_without_the_sdk_configure_names_the_telemetry_extra():
    done = _run(
        """
        from roi_agents.errors import MissingExtra
        from roi_agents.telemetry import RunTrace  # the API alone: fine
        try:
            from roi_agents.telemetry import configure
        except MissingExtra as error:
            print(error.extra, error.name)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "telemetry opentelemetry.sdk"


def test_gen_ai_names_are_the_semantic_conventions():
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as attributes
    from opentelemetry.semconv._incubating.metrics import gen_ai_metrics

    assert names.GEN_AI_USAGE_INPUT_TOKENS == attributes.GEN_AI_USAGE_INPUT_TOKENS
    assert names.GEN_AI_USAGE_OUTPUT_TOKENS == attributes.GEN_AI_USAGE_OUTPUT_TOKENS
    assert names.GEN_AI_REQUEST_MODEL == attributes.GEN_AI_REQUEST_MODEL
    assert names.GEN_AI_TOKEN_TYPE == attributes.GEN_AI_TOKEN_TYPE
    assert names.GEN_AI_REQUEST_MAX_TOKENS == attributes.GEN_AI_REQUEST_MAX_TOKENS
    assert names.METRIC_TOKEN_USAGE == gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE
    assert names.GEN_AI_OPERATION_NAME == attributes.GEN_AI_OPERATION_NAME
    operations = attributes.GenAiOperationNameValues
    assert operations.INVOKE_AGENT.value == names.OPERATION_RUN
    assert operations.CHAT.value == names.OPERATION_CALL
    assert operations.EXECUTE_TOOL.value == names.OPERATION_TOOLS
    assert names.GEN_AI_TOOL_NAME == attributes.GEN_AI_TOOL_NAME


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"roi-agents {__version__}"


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_flag_has_help_and_shows_its_default():
    for parser in _parsers(_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.dest}: no help"
            shows = action.default in (None, False, [], argparse.SUPPRESS) or "default" in text
            assert shows, f"{parser.prog} {action.dest}: default not shown"


def test_every_name_of_the_langgraph_package_resolves_lazily():
    import roi_agents_langgraph as package

    assert set(package._MODULES) == set(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None
