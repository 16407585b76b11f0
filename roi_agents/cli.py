"""The ``roi-agents`` command line.

Commands: ``demo``, ``bench``, ``train``, ``serve``, ``data pull``, ``report``, ``ledger``.

Run ``roi-agents COMMAND --help`` for each command's flags.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from roi_agents import __version__
from roi_agents._text import shown
from roi_agents.errors import MissingExtra, RoiAgentsError, first_problem

try:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table
except ModuleNotFoundError as error:
    raise MissingExtra("cli", error.name) from error

__all__ = ["main"]

_NO_DATA = (
    "no replay data found. Name a file with --data or ROI_AGENTS_DATA, or fetch public data "
    "once with `roi-agents data pull routellm` (offline: `roi-agents data pull routellm --from "
    "DIR` with a local copy of lm-sys/RouteLLM)."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roi-agents`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    # Piped output (CI logs) gets a wide fixed width rather than rich's 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 180)
    try:
        status: int = args.run(args, console)
    except RoiAgentsError as error:
        console.print(f"[bold red]error:[/] {shown(error, 2_000)}", highlight=False)
        return 2
    except ValidationError as error:  # a flag's value out of range: name it, in one line
        console.print(
            f"[bold red]error:[/] {shown(first_problem(error, 'value'), 2_000)}", highlight=False
        )
        return 2
    return status


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roi-agents", description="Budget-aware planning for LangGraph agents.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    bench = commands.add_parser(
        "bench", help="replay benchmark: every policy on recorded real outcomes"
    )
    _replay_arguments(bench)
    bench.add_argument(
        "--quantile",
        choices=["mean", "p50", "p90", "p99"],
        default="p90",
        help="cost quantile ours budgets each step at",
    )
    bench.add_argument(
        "--risk",
        choices=["step", "run"],
        default="step",
        help="budget each step at the quantile, or the plan's total (the sum of the means plus "
        "the pooled margin of independent costs)",
    )
    bench.add_argument(
        "--policy",
        type=Path,
        help="a policy.json from roi-agents tune: ours takes its quantile and risk per budget "
        "level from it (overrides --quantile and --risk)",
    )
    bench.add_argument("--json", type=Path, help="write the result as JSON here")
    bench.add_argument("--plot", type=Path, help="write a PNG of value against budget here")
    bench.set_defaults(run=_bench)

    tune = commands.add_parser(
        "tune",
        help="choose ours' risk settings per budget on replayed episodes of the training part",
    )
    _replay_arguments(tune)
    tune.add_argument(
        "--folds", type=int, default=2, help="cross-validation folds of the training part"
    )
    tune.add_argument("--out", type=Path, required=True, help="the policy.json to write")
    tune.set_defaults(run=_tune)

    demo = commands.add_parser("demo", help="plan one episode of recorded outcomes, step by step")
    demo.add_argument("--data", type=Path, help="a replay file (default: gsm8k of the found data)")
    demo.add_argument(
        "--budget", type=float, default=0.25, help="fraction of always the most expensive option"
    )
    demo.add_argument("--steps", type=int, default=30, help="steps in the episode")
    demo.add_argument("--seed", type=int, default=0, help="which episode")
    demo.set_defaults(run=_demo)

    data = commands.add_parser("data", help="public replay data")
    data_commands = data.add_subparsers(required=True, metavar="ACTION")
    pull = data_commands.add_parser("pull", help="download and convert a public source")
    pull.add_argument("source", choices=["routellm", "pricing-reversal"], help="which source")
    pull.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        help="convert a local copy of the source repository instead of downloading",
    )
    pull.add_argument("--out", type=Path, help="output folder (default: the user cache)")
    pull.set_defaults(run=_pull)

    train = commands.add_parser(
        "train", help="fine-tune, calibrate and evaluate the learned predictor"
    )
    train.add_argument(
        "--data", type=Path, nargs="+", required=True, help="replay or JSONL trace file(s)"
    )
    train.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write")
    train.add_argument("--base", type=Path, help="a local Hugging Face checkpoint (MiniLM-L6)")
    train.add_argument("--seed", type=int, default=0, help="the split's seed, as the bench's")
    train.add_argument(
        "--test", type=Path, nargs="+", default=[], help="evaluate on these files instead"
    )
    train.add_argument(
        "--split",
        choices=["query", "dataset"],
        default="query",
        help="hold out queries, or whole datasets/subjects",
    )
    train.add_argument(
        "--train-fraction", type=float, default=0.5, help="as the bench's: the rest is the test"
    )
    train.add_argument("--max-rows", type=int, default=8000, help="rows to fine-tune on")
    train.add_argument("--eval-rows", type=int, default=6000, help="test rows to evaluate")
    train.add_argument(
        "--epochs", type=int, default=3, help="0: fit the head alone on the frozen base (a probe)"
    )
    train.add_argument("--batch-size", type=int, default=32, help="rows per fine-tuning step")
    train.add_argument("--lr", type=float, default=5e-5, help="fine-tuning learning rate")
    train.add_argument("--max-length", type=int, default=256, help="tokens per input")
    train.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.add_argument(
        "--calibrate-only",
        action="store_true",
        help="fit the maps of the checkpoint --out again, on this data, without fine-tuning",
    )
    train.add_argument("--json", type=Path, help="also write the report here")
    train.set_defaults(run=_train)

    serve = commands.add_parser("serve", help="serve a predictor checkpoint with vLLM")
    serve.add_argument("checkpoint", type=Path, help="a Hugging Face checkpoint folder")
    serve.add_argument("--name", default="predictor", help="the served model name")
    serve.add_argument(
        "--runner",
        choices=["pooling", "generate"],
        default="pooling",
        help="pooling serves a predictor; generate, a chat model",
    )
    serve.set_defaults(run=_serve)

    report = commands.add_parser("report", help="summarise a JSONL trace of budgeted runs")
    report.add_argument("traces", type=Path, help="a JSONL file written by the jsonl exporter")
    report.add_argument("--json", type=Path, help="write the report as JSON here")
    report.add_argument("--plot", type=Path, help="write a PNG here")
    report.add_argument(
        "--html", type=Path, help="write the report as one HTML page here (opens offline)"
    )
    report.set_defaults(run=_report)

    ledger = commands.add_parser("ledger", help="shared budgets (SQLite or PostgreSQL)")
    ledger_commands = ledger.add_subparsers(required=True, metavar="ACTION")
    url_help = "memory:, sqlite:///PATH or postgresql://..."
    init = ledger_commands.add_parser(
        "init",
        aliases=["migrate"],
        help="create the ledger's tables, or bring an earlier release's up to date (safe to rerun)",
    )
    budget = ledger_commands.add_parser("budget", help="set a scope's limits")
    balance = ledger_commands.add_parser("balance", help="show where a scope stands")
    for sub in (init, budget, balance):
        sub.add_argument("--url", required=True, help=url_help)
        sub.add_argument("--schema", default="roi_agents", help="PostgreSQL schema")
    for sub in (budget, balance):
        sub.add_argument("--scope", required=True, help="e.g. acme/bob/thread-42")
    budget.add_argument("--tokens", type=int, help="token limit (default: none)")
    budget.add_argument("--usd", type=float, help="USD limit (default: none)")
    budget.add_argument("--tool-calls", type=int, help="tool-call limit (default: none)")
    budget.add_argument(
        "--period", choices=["daily", "monthly"], help="the limits renew (default: never)"
    )
    init.set_defaults(run=_ledger_init)
    budget.set_defaults(run=_ledger_budget)
    balance.set_defaults(run=_ledger_balance)
    return parser


class _Help(argparse.HelpFormatter):
    """Help that shows each flag's default (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and not any(default is v for v in (None, False, argparse.SUPPRESS))
            and default != []
            and "default" not in text
        ):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else "%(default)s"
            text += f" (default: {shown})"
        return text


class _Parser(argparse.ArgumentParser):
    """An argument parser (and its subcommands' parsers) whose help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `bench` and `tune` share: the data, its split, the episodes, the predictor."""
    parser.add_argument("--data", type=Path, nargs="+", help="replay file(s) or folder(s)")
    parser.add_argument(
        "--budgets",
        type=_fractions,
        default=(0.1, 0.25, 0.5),
        help="budget fractions of always the most expensive option, comma-separated",
    )
    parser.add_argument("--episodes", type=int, default=100, help="episodes per budget")
    parser.add_argument("--steps", type=int, default=30, help="steps per episode")
    parser.add_argument("--seed", type=int, default=0, help="the split's and episodes' seed")
    parser.add_argument(
        "--predictor",
        default="prior",
        help="prior, local:DIR (a trained checkpoint in-process) or vllm:URL[@DIR] (a vLLM "
        "pooling server; DIR: the checkpoint whose calibration.json applies and names its "
        "outputs)",
    )
    parser.add_argument(
        "--resource",
        choices=["usd", "tokens"],
        default=None,
        help="what the budget counts (default: usd when every line has cost_usd)",
    )
    parser.add_argument(
        "--resolution",
        type=float,
        default=0.01,
        help="DP budget unit as a fraction of what is left",
    )
    parser.add_argument(
        "--group-by",
        choices=["dataset", "none"],
        default="dataset",
        help="prior predictor history groups",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="share of the queries predictors and tuned baselines learn from",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="feed ours each step's outcome: the prior (and a composed predictor's weights) "
        "learn; a learned predictor alone is guarded by the prior (GuardedPredictor)",
    )
    parser.add_argument(
        "--learned",
        choices=["composed", "alone"],
        default="composed",
        help="how a local: or vllm: predictor forecasts: composed, the prior's level (fitted on "
        "the training part) moved per step by the checkpoint (ComposedPredictor; in groups the "
        "checkpoint never saw, the training part also teaches how far to follow it); alone, "
        "the checkpoint's own forecasts",
    )
    parser.add_argument(
        "--split",
        choices=["query", "dataset"],
        default="query",
        help="test on held-out queries, or on datasets (subjects) that train --split dataset "
        "held out, the prior learning them from the first part of their queries",
    )


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        msg = f"budget fractions must be finite and > 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"a budget fraction is given twice in {text!r}")
    return values


def _resolve_data(given: Sequence[Path] | None, prefer: str | None = None) -> list[Path]:
    from roi_agents.data import find_data
    from roi_agents.errors import DataError

    if given:
        return list(given)
    found = find_data()
    if found is None:
        raise DataError("data", None, _NO_DATA)
    if found.is_dir() and prefer is not None and (found / prefer).exists():
        return [found / prefer]
    return [found]


def _bench(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.allocate import Policy
    from roi_agents.bench.report import plot_result, print_result, write_json
    from roi_agents.bench.simulate import run_bench

    _writable(args.json, "json")
    _writable(args.plot, "plot")

    queries, label, factory, config = _replay(
        args,
        quantile=args.quantile,
        risk=args.risk,
        policy=None if args.policy is None else Policy.load(args.policy),
    )
    if config.policy is not None:
        for line in _unlike(config.policy, config, label):
            console.print(f"[yellow]warning:[/] {shown(line, 400)}")
    total, done = config.episodes * len(config.budgets), 0
    with _Stages(console) as stages:

        def advance(k: int) -> None:
            nonlocal done
            done += k
            stages.update("replaying", done, total)

        result = run_bench(queries, config, data=label, predictor=factory, progress=advance)
    print_result(result, console)
    if args.json:
        console.print(f"wrote {write_json(result, args.json)}")
    if args.plot:
        console.print(f"wrote {plot_result(result, args.plot)}")
    return 0


def _tune(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.bench.report import print_tuned
    from roi_agents.bench.tune import tune

    _writable(args.out, "out")
    queries, label, factory, config = _replay(args, cross_fit=True)
    total, done = max(1, config.episodes // max(args.folds, 1)) * max(args.folds, 1), 0
    with _Stages(console) as stages:

        def advance(k: int) -> None:
            nonlocal done
            done += k
            stages.update("replaying the training part", done, total)

        tuned = tune(
            queries,
            config,
            data=label,
            predictor=factory,
            folds=args.folds,
            replay=None if args.predictor == "prior" else _not_fine_tuned(config),
            progress=advance,
        )
    print_tuned(tuned, console)
    if tuned.steps < config.steps:
        console.print(
            f"[yellow]warning:[/] a fold holds {tuned.steps} queries to replay: its episodes had "
            f"{tuned.steps} steps, not --steps {config.steps}"
        )
    tuned.policy.save(args.out)
    console.print(f"wrote {args.out}")
    return 0


def _unlike(policy: Any, config: Any, data: str) -> list[str]:
    """How a bench differs from what its policy was tuned on, one line each."""
    lines = []
    tuned = (policy.seed, policy.train_fraction, policy.split)
    if policy.data and policy.data != data:
        lines.append(f"the policy was tuned on {policy.data}, not {data}")
    elif policy.seed is not None and tuned != (config.seed, config.train_fraction, config.split):
        lines.append(
            f"the policy was tuned with seed {policy.seed}, train fraction "
            f"{policy.train_fraction}, split {policy.split}: its training part may hold this "
            "bench's test queries (run tune and bench with the same three)"
        )
    if policy.online != config.online:
        tuned_as, run_as = ("online", "offline") if policy.online else ("offline", "online")
        lines.append(f"the policy was tuned {tuned_as}; this bench runs {run_as}")
    return lines


def _writable(path: Path | None, flag: str) -> None:
    """Fail now, before the work, where ``path`` (if given) cannot be written.

    Raises:
        InvalidValueError: naming ``flag``.
    """
    from roi_agents.errors import InvalidValueError

    if path is None:
        return
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as the writers do
        with path.open("ab"):
            pass
    except OSError as error:
        raise InvalidValueError(flag, f"cannot write {path}: {error.strerror}") from None
    if not existed:
        path.unlink()


def _replay(
    args: argparse.Namespace, *, cross_fit: bool = False, **settings: Any
) -> tuple[Any, str, Any, Any]:
    """What `bench` and `tune` read from `_replay_arguments`.

    The queries, their files' names, the predictor factory and the `BenchConfig` (with
    ``settings`` of their own). ``cross_fit``: a composed predictor's weights are fitted afresh
    on the queries the checkpoint was not fine-tuned on, among those the factory is given
    (`fit_composed`'s ``held``).
    """
    from roi_agents.bench.simulate import BenchConfig
    from roi_agents.data import load_replay

    paths = _resolve_data(args.data)
    config = BenchConfig(
        budgets=args.budgets,
        episodes=args.episodes,
        steps=args.steps,
        seed=args.seed,
        train_fraction=args.train_fraction,
        resource=args.resource,
        resolution=args.resolution,
        group_by=args.group_by == "dataset",
        split=args.split,
        online=args.online,
        **settings,
    )
    factory = _predictor_factory(
        args.predictor,
        composed=args.learned == "composed",
        group_by=args.group_by == "dataset",
        held=_not_fine_tuned(config) if cross_fit else None,
    )
    return load_replay(paths), ", ".join(p.name for p in paths), factory, config


def _not_fine_tuned(config: Any) -> Any:
    """Whether a query is outside the fit part of a checkpoint trained with the bench's seed."""
    from roi_agents.data.replay import split_id
    from roi_agents.data.split import fine_tuned_on

    def replay(query: Any) -> bool:
        key = (query.dataset or "") if config.split == "dataset" else split_id(query.query_id)
        return not fine_tuned_on(key, config.seed, config.train_fraction, config.split)

    return replay


def _predictor_factory(
    spec: str, *, composed: bool = True, group_by: bool = True, held: Any = None
) -> Any:
    """``prior`` -> None (the bench fits one); ``local:DIR`` / ``vllm:URL[@DIR]`` -> a factory.

    The learned predictors are wrapped in a `CachedPredictor`: re-planning asks again for the
    same pending steps, and a checkpoint answers them the same way. ``composed``: each call
    of the factory composes it with a prior fitted on the training queries it is given
    (`fit_composed`, with ``held``).
    """
    learned = _learned(spec)
    if learned is None or not composed:
        return None if learned is None else lambda train: learned
    from roi_agents.bench.simulate import fit_composed

    return fit_composed(learned, group_by, held)


def _learned(spec: str) -> Any:
    """The cached learned predictor ``spec`` names; None for ``prior``."""
    from roi_agents.errors import InvalidValueError

    if spec == "prior":
        return None
    kind, _, target = spec.partition(":")
    if kind == "local" and target:
        from roi_agents.predict.cache import CachedPredictor
        from roi_agents.predict.local import LocalPredictor

        return CachedPredictor(LocalPredictor(target))
    if kind == "vllm" and target:
        import httpx

        from roi_agents.predict.cache import CachedPredictor
        from roi_agents.predict.vllm import VLLMPredictor

        url, _, checkpoint = target.partition("@")
        root = url.rstrip("/").removesuffix("/v1")
        try:
            served = httpx.get(f"{root}/v1/models", timeout=10).json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
            msg = f"no model served at {root}: {error}"
            raise InvalidValueError("predictor", msg) from None
        # Offline replay, not a live turn: a CPU server's batch of long texts may take more
        # than a live deadline, and a fallback would measure the prior instead.
        return CachedPredictor(
            VLLMPredictor(root, served, calibration=checkpoint or None, timeout=60.0)
        )
    msg = f"expected prior, local:DIR or vllm:URL[@DIR], got {spec!r}"
    raise InvalidValueError("predictor", msg)


def _train(args: argparse.Namespace, console: Console) -> int:
    from pydantic import ValidationError

    from roi_agents.errors import InvalidValueError
    from roi_agents.train import TrainConfig, train
    from roi_agents.train.report import print_train_report

    _writable(args.json, "json")

    try:
        config = TrainConfig(
            data=args.data,
            out=args.out,
            base=args.base,
            test=args.test,
            seed=args.seed,
            train_fraction=args.train_fraction,
            split=args.split,
            max_rows=args.max_rows,
            eval_rows=args.eval_rows,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            max_length=args.max_length,
            device=args.device,
            overwrite=args.overwrite,
            calibrate_only=args.calibrate_only,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidValueError(field, first["msg"]) from None
    with _Stages(console) as stages:
        report = train(config, progress=stages.update)
    print_train_report(report, console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


def _demo(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.bench.report import print_result
    from roi_agents.bench.simulate import BenchConfig, play_episode, prepare, run_bench
    from roi_agents.data import load_replay

    paths = _resolve_data([args.data] if args.data else None, prefer="gsm8k.jsonl")
    queries = load_replay(paths)
    config = BenchConfig(budgets=(args.budget,), episodes=1, steps=args.steps, seed=args.seed)
    setup = prepare(queries, config)
    budget = args.budget * setup.full[0]
    unit = "USD" if setup.resource == "usd" else "tokens"
    console.print(
        f"[bold]roi-agents demo[/]: {args.steps} recorded queries from "
        f"{shown(', '.join(p.name for p in paths), 400)}; options "
        f"{shown(', '.join(sorted(setup.means)), 400)}; budget {_amount(budget, unit)} = "
        f"{args.budget:g} x always {shown(setup.dearest)}. Forecasts from the "
        f"prior predictor fitted on {len(setup.train)} other queries; the controller re-plans "
        "after every step."
    )
    decisions, outcomes = play_episode(
        setup.episodes[0], budget, setup.controller, setup.resource, prices=setup.prices
    )
    table = Table(title="decisions", title_justify="left")
    for column in (
        "#",
        "query",
        "option",
        "p",
        f"planned {unit}",
        "cap",
        "spent",
        "result",
        "left",
        "reason",
    ):
        table.add_column(
            column, justify="left" if column in ("query", "option", "reason", "result") else "right"
        )
    left = budget
    for i, (query, decision, outcome) in enumerate(
        zip(setup.episodes[0], decisions, outcomes, strict=True), start=1
    ):
        left -= outcome.spend
        result = (
            "skipped"
            if outcome.option == "skip"
            else "cut off at cap"
            if outcome.cut_off
            else "correct"
            if outcome.value >= 1
            else f"score {outcome.value:g}"
        )
        planned = decision.expected_cost.get(setup.resource, 0.0)
        table.add_row(
            str(i),
            shown(query.query_id),
            shown(decision.option),
            f"{decision.p_success:.2f}",
            _amount(planned, unit),
            _amount(outcome.cap, unit),
            _amount(outcome.spend, unit),
            result,
            _amount(left, unit),
            shown(decision.reason.split(": ", 1)[-1], 400),
        )
    console.print(table)
    spent = budget - left
    value = sum(o.value for o in outcomes)
    console.print(
        f"spent {_amount(spent, unit)} of {_amount(budget, unit)} ({100 * spent / budget:.0f}%), "
        f"value {value:g} of {len(outcomes)} steps; never over budget: {spent <= budget}"
    )
    console.print("\n[bold]Against the other policies[/] on 20 episodes of the same data:")
    comparison = BenchConfig(budgets=(args.budget,), episodes=20, steps=args.steps, seed=args.seed)
    print_result(run_bench(queries, comparison, data=", ".join(p.name for p in paths)), console)
    return 0


def _amount(x: float, unit: str) -> str:
    return f"${x:.5f}" if unit == "USD" else f"{x:,.0f}"


def _pull(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.data import pull

    with console.status(f"pulling {args.source}") as status:
        written = pull(
            args.source,
            from_dir=args.from_dir,
            out_dir=args.out,
            progress=lambda name: status.update(f"fetching {name}"),
        )
    for path in written:
        console.print(f"wrote {path}")
    return 0


def _serve(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.errors import InvalidValueError

    try:
        from roi_agents_vllm import VLLMServer
    except ImportError as error:
        msg = "serving needs roi-agents-vllm: pip install -e integrations/vllm"
        raise InvalidValueError("serve", msg) from error
    server = VLLMServer(args.checkpoint, served_model_name=args.name, runner=args.runner)
    # A process manager stops with SIGTERM: exit through `finally`, so the server (in a
    # session of its own) stops too instead of outliving us, even while it starts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with console.status(f"starting vLLM for {args.checkpoint} (log: {server.log_path})"):
            server.start()
        console.print(
            f"serving {args.name!r} at {server.url} (POST {server.url}/classify); Ctrl-C stops it"
        )
        while server.running:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.telemetry.report import build_report, plot_report, print_report

    for path, flag in ((args.json, "json"), (args.plot, "plot"), (args.html, "html")):
        _writable(path, flag)
    report = build_report(args.traces)
    print_report(report, console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    if args.plot:
        console.print(f"wrote {plot_report(report, args.plot)}")
    if args.html:
        from roi_agents.telemetry.report_html import write_html

        console.print(f"wrote {write_html(report, args.html, source=str(args.traces))}")
    return 0


# Seconds a ledger command waits for its database before it says it cannot reach it.
_LEDGER_TIMEOUT = 8.0


def _ledger_init(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.ledger import open_ledger

    ledger = open_ledger(args.url, schema=args.schema, timeout=_LEDGER_TIMEOUT)
    try:
        ledger.init_schema()
    finally:
        ledger.close()
    console.print(f"ledger tables ready at {_redact(args.url)}")
    return 0


def _ledger_budget(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.ledger import ScopeBudget, open_ledger

    budget = ScopeBudget(
        scope=args.scope,
        tokens=args.tokens,
        usd=args.usd,
        tool_calls=args.tool_calls,
        period=args.period,
    )
    ledger = open_ledger(args.url, schema=args.schema, timeout=_LEDGER_TIMEOUT)
    try:
        ledger.set_budget(budget)
    finally:
        ledger.close()
    console.print(f"{budget.scope}: {budget.model_dump(exclude={'scope'})}")
    return 0


def _ledger_balance(args: argparse.Namespace, console: Console) -> int:
    from roi_agents.ledger import open_ledger

    ledger = open_ledger(args.url, schema=args.schema, timeout=_LEDGER_TIMEOUT)
    try:
        balance = ledger.balance(args.scope)
    finally:
        ledger.close()
    console.print_json(balance.model_dump_json())
    return 0


def _redact(url: str) -> str:
    """The URL without a password."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//")[-1]:
        return url
    scheme, _, credentials = head.partition("//")
    return f"{scheme}//{credentials.split(':')[0]}:***@{tail}"


class _Stages:
    """Progress of long work: live bars on a terminal, lines in a log.

    Off a terminal (a log file, CI) each stage prints a line at its first update and at every
    tenth done, with the time spent and an estimate of the time left.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bars = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if console.is_terminal
            else None
        )
        self._tasks: dict[str, Any] = {}
        self._tenths: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def __enter__(self) -> _Stages:
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bars is not None:
            self._bars.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        """``done`` of ``total`` of ``stage`` are done."""
        if self._bars is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._bars.add_task(stage, total=total)
            self._bars.update(self._tasks[stage], completed=done, total=total)
            return
        started = self._started.setdefault(stage, time.monotonic())
        tenth = 10 * done // max(total, 1)
        if stage in self._tenths and tenth <= self._tenths[stage]:
            return
        self._tenths[stage] = tenth
        spent = time.monotonic() - started
        left = f", about {spent * (total - done) / done:.0f} s left" if 0 < done < total else ""
        self._console.print(f"{stage}: {done}/{total} after {spent:.0f} s{left}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
