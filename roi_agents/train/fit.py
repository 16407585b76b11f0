"""Fine-tune a Hugging Face sequence-regression model into the predictor (torch, transformers).

Loss per row: the success log-loss of output 0 plus the Gaussian negative log-likelihood of
``log(tokens + 1)`` under outputs 1 (mean) and 2 (log-spread), and of ``log(usd + 1e-6)`` under
outputs 3 and 4 when the data records USD (beta-NLL weighting, see `_outputs_loss`); plus the
same loss of each output the row's option has of its own (its success logit,
`roi_agents.predict.head`), so the shared outputs learn every option and the own ones theirs.
The head is first fitted alone on frozen features (its success rows as regularised logistic
regressions, see `_fit_success_rows`), then the whole model is fine-tuned; early stopping keeps
the weights with the lowest validation loss.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roi_agents.errors import InvalidValueError
from roi_agents.predict.head import (
    LOG_SIGMA_RANGE,
    head_labels,
    own_columns,
    own_keys,
)
from roi_agents.train.examples import Example

__all__ = ["FitHistory", "FitSettings", "fine_tune", "load_base"]


@dataclass(frozen=True, slots=True)
class FitSettings:
    """Optimisation settings (see ``roi-agents train --help``)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 2e-4
    patience: int = 1
    evals_per_epoch: int = 2
    max_length: int = 256
    freeze_embeddings: bool = True
    seed: int = 0
    device: str | None = None


@dataclass(slots=True)
class FitHistory:
    """What training did: validation loss per evaluation, the best one, and the rows seen."""

    val_losses: list[float]
    best: float
    steps: int
    stopped_early: bool


def _targets(
    examples: Sequence[Example], usd: bool, own: Mapping[str, list[int]]
) -> tuple[Any, Any, Any]:
    """Targets, which are recorded (1.0), and the columns of each row's own outputs."""
    import torch

    values, present = [], []
    for e in examples:
        row = [e.success, e.log_tokens or 0.0]
        mask = [1.0, float(e.log_tokens is not None)]
        if usd:
            row.append(e.log_usd or 0.0)
            mask.append(float(e.log_usd is not None))
        values.append(row)
        present.append(mask)
    shared = list(range(5 if usd else 3))
    columns = [own.get(e.option, shared) for e in examples]
    return torch.tensor(values), torch.tensor(present), torch.tensor(columns)


# Training floors the spread at 0.1 on the log scale (costs recorded as one token would
# otherwise drive it to zero); served outputs are read within LOG_SIGMA_RANGE.
_TRAIN_LOG_SIGMA = (math.log(0.1), LOG_SIGMA_RANGE[1])


def _loss(logits: Any, targets: Any, present: Any, own: Any) -> Any:
    """The loss of the shared outputs, plus that of each row's own outputs where it has them.

    An own output that is the shared one (an option without a row of its own, or an output no
    option has its own of) is counted once, in the shared term.
    """
    import torch

    shared = own.shape[1]
    total = _outputs_loss(logits[:, :shared], targets, present)
    # Per target (success, then each log cost), whether the row reads an output of its own.
    first = torch.tensor([0, *range(1, shared, 2)])
    mine = own[:, first] != first
    if bool(mine.any()):
        total = total + _outputs_loss(logits.gather(1, own), targets, present * mine)
    return total


def _outputs_loss(logits: Any, targets: Any, weight: Any) -> Any:
    """Success log-loss plus the Gaussian NLL of each log cost, each over its weighted rows."""
    import torch
    from torch.nn import functional

    def mean(values: Any, k: int) -> Any:
        return (values * weight[:, k]).sum() / weight[:, k].sum().clamp(min=1.0)

    success = functional.binary_cross_entropy_with_logits(
        logits[:, 0], targets[:, 0], reduction="none"
    )
    total = mean(success, 0)
    for k in range(1, targets.shape[1]):
        mean_k, log_sigma = logits[:, 2 * k - 1], logits[:, 2 * k].clamp(*_TRAIN_LOG_SIGMA)
        sigma = torch.exp(log_sigma)
        # beta-NLL (beta = 1/2, Seitzer et al. 2022): weighting by the detached spread keeps a
        # shrinking spread from blowing up the gradient and drowning the success loss.
        nll = (log_sigma + 0.5 * ((targets[:, k] - mean_k) / sigma) ** 2) * sigma.detach()
        total = total + mean(nll, k)
    return total


def _head(model: Any, outputs: int) -> Any:
    """The last linear layer producing the head's outputs."""
    import torch

    found = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == outputs:
            found = module
    if found is None:
        raise InvalidValueError("base", "no linear head with the expected outputs")
    return found


def _rate_logit(values: Sequence[float]) -> float:
    rate = min(max(float(np.mean(values)), 1e-3), 1 - 1e-3)
    return math.log(rate / (1 - rate))


def _init_head(
    head: Any, examples: Sequence[Example], usd: bool, own: Mapping[str, list[int]]
) -> None:
    """Start from small weights and the rows' averages as biases (an option's own: its rows')."""
    import torch

    def stats(values: list[float]) -> tuple[float, float]:
        return float(np.mean(values)), math.log(max(float(np.std(values)), 1e-3))

    def averages(rows: Sequence[Example]) -> list[float]:
        found = [_rate_logit([e.success for e in rows])]
        found.extend(stats([e.log_tokens for e in rows if e.log_tokens is not None] or [0.0]))
        if usd:
            found.extend(stats([e.log_usd for e in rows if e.log_usd is not None] or [0.0]))
        return found

    shared = averages(examples)
    bias = shared + [0.0] * (head.out_features - len(shared))
    for key, columns in own.items():
        mine = averages([e for e in examples if e.option == key])
        for column, value in zip(columns, mine, strict=True):
            if column >= len(shared):  # the option's own output, not a shared one it reads
                bias[column] = value
    with torch.no_grad():
        head.weight.mul_(0.1)
        if head.bias is not None:
            head.bias.copy_(torch.tensor(bias))


def _batches(examples: Sequence[Example], size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffled batches of similar lengths (less padding), in a shuffled order."""
    order = list(examples)
    rng.shuffle(order)
    batches: list[list[Example]] = []
    chunk = size * 50
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda e: len(e.text))
        batches.extend(part[i : i + size] for i in range(0, len(part), size))
    rng.shuffle(batches)
    return batches


def _head_inputs(
    model: Any,
    head: Any,
    encode: Callable[[Sequence[Example]], Any],
    rows: Sequence[Example],
    advance: Callable[[int], None],
) -> Any:
    """What the head reads for each row, from one frozen forward pass; ``advance(k)`` per batch.

    ``None`` when the head reads more than one vector per row (decoders score every position,
    then pick one).
    """
    import torch

    captured: list[Any] = []
    hook = head.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].detach().clone())
    )
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].text))
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(order), 64):
                batch = [rows[i] for i in order[start : start + 64]]
                model(**encode(batch)[0])
                advance(len(batch))
    finally:
        hook.remove()
    if any(c.dim() != 2 for c in captured):
        return None
    features = torch.cat([c.float() for c in captured])
    restored = torch.empty_like(features)
    restored[torch.tensor(order, device=features.device)] = features
    return restored


def _fit_head(
    head: Any,
    fit: tuple[Any, Any, Any, Any],
    val: tuple[Any, Any, Any, Any],
    steps: int = 400,
) -> float:
    """Train the head alone on frozen features (full batch, Adam); keep its best state.

    Returns:
        The best validation loss.
    """
    import torch

    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    best, state = math.inf, copy.deepcopy(head.state_dict())
    for step in range(steps):
        head.train()
        loss = _loss(head(fit[0]), *fit[1:])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 9:
            with torch.no_grad():
                current = float(_loss(head(val[0]), *val[1:]))
            if current < best:
                best, state = current, copy.deepcopy(head.state_dict())
    head.load_state_dict(state)
    return best


# L2 strengths tried for a success row: the penalty l2 / 2 * |w|^2 on standardised features is
# added to the mean log-loss.
SUCCESS_L2 = tuple(float(10.0**k) for k in np.arange(1.0, -3.01, -0.5))


def _logistic_path(x: Any, y: Any, val_x: Any, val_y: Any) -> list[tuple[float, Any, Any]]:
    """Per strength of `SUCCESS_L2`: the summed validation log-loss, weights and bias.

    Each fit starts from the one before (strongest first).
    """
    import torch
    from torch.nn import functional

    weight = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    bias = torch.tensor(_rate_logit(y.tolist()), device=x.device, requires_grad=True)
    path = []
    for l2 in SUCCESS_L2:

        def objective(l2: float = l2) -> Any:
            weight.grad = bias.grad = None
            loss: Any = functional.binary_cross_entropy_with_logits(x @ weight + bias, y)
            loss = loss + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimiser = torch.optim.LBFGS(
            [weight, bias], max_iter=100, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
        )
        optimiser.step(objective)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            logits = val_x @ weight + bias
            loss = functional.binary_cross_entropy_with_logits(logits, val_y, reduction="sum")
        path.append((float(loss), weight.detach().clone(), bias.detach().clone()))
    return path


def _fit_success_rows(
    head: Any,
    own: Mapping[str, int],
    fit: tuple[Any, Any, Sequence[str]],
    val: tuple[Any, Any, Sequence[str]],
) -> None:
    """Set the head's success rows to L2-regularised logistic regressions on frozen features.

    Output 0 on every row; each option's own output (``own``) on that option's rows, all at
    one strength (a few dozen validation rows per option would pick theirs by chance). Each
    strength is the one of `SUCCESS_L2` with the lowest validation log-loss. Features are
    standardised on the fitting rows and that is folded back into the weights, so the head
    stays one linear layer that any server runs. Why not the joint Adam fit: a step's text
    says little about success (GSM8K: AUC about 0.6 to 0.7 within an option) and 384 lightly
    penalised weights fit noise.
    """
    import torch

    (x, y, options), (val_x, val_y, val_options) = fit, val
    centre, scale = x.mean(0), x.std(0).clamp(min=1e-6)
    z, val_z = (x - centre) / scale, (val_x - centre) / scale

    def rows(names: Sequence[str], option: str) -> Any:
        return torch.tensor([name == option for name in names], device=x.device)

    def fold(output: int, weight: Any, bias: Any) -> None:
        with torch.no_grad():
            head.weight[output] = (weight / scale).to(head.weight.dtype)
            if head.bias is not None:
                head.bias[output] = bias - (weight * centre / scale).sum()

    _, weight, bias = min(_logistic_path(z, y, val_z, val_y), key=lambda step: step[0])
    fold(0, weight, bias)
    paths = {}
    for option in own:
        mask, val_mask = rows(options, option), rows(val_options, option)
        if bool(mask.any()) and bool(val_mask.any()):
            paths[option] = _logistic_path(z[mask], y[mask], val_z[val_mask], val_y[val_mask])
    if paths:
        best = min(range(len(SUCCESS_L2)), key=lambda k: sum(p[k][0] for p in paths.values()))
        for option, path in paths.items():
            fold(own[option], *path[best][1:])


def fine_tune(
    model: Any,
    tokenizer: Any,
    fit: Sequence[Example],
    val: Sequence[Example],
    *,
    settings: FitSettings,
    progress: Callable[[str, int, int], None] | None = None,
) -> FitHistory:
    """Train ``model`` in place on ``fit``; stop early on ``val``; keep the best weights.

    First the head alone, on features from one frozen pass (the new head starts where a linear
    probe ends instead of random; with ``settings.epochs == 0`` it is that probe), then the
    whole model end to end.

    Args:
        model: a sequence-classification model from `load_base` (its labels say which outputs
            it has: USD, the options with outputs of their own).
        tokenizer: its tokenizer.
        fit: training rows (non-empty).
        val: validation rows for early stopping (non-empty).
        settings: optimisation settings.
        progress: called with (stage, done, planned) as work advances: rows through the
            frozen pass ("reading features"), then batches ("fine-tuning").

    Raises:
        InvalidValueError: with no training or validation rows.
    """
    import torch

    if not fit or not val:
        raise InvalidValueError("data", "needs training and validation rows (more queries)")
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    usd = "log_usd_mean" in labels
    own = {key: own_columns(labels, key) for key in own_keys(labels)}
    head = _head(model, len(labels))
    _init_head(head, fit, usd, own)
    if settings.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimiser = torch.optim.AdamW(
        [
            {"params": body, "lr": settings.lr},
            {"params": list(head.parameters()), "lr": settings.head_lr},
        ],
        weight_decay=0.01,
    )
    rng = random.Random(settings.seed)
    per_epoch = math.ceil(len(fit) / settings.batch_size)
    total = per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: max(0.05, 1.0 - step / max(total, 1))
    )
    eval_every = max(1, per_epoch // max(settings.evals_per_epoch, 1))

    def encode(batch: Sequence[Example]) -> tuple[Any, Any, Any, Any]:
        inputs = tokenizer(
            [e.text for e in batch],
            padding=True,
            truncation=True,
            max_length=settings.max_length,
            return_tensors="pt",
        ).to(device)
        return inputs, *(t.to(device) for t in _targets(batch, usd, own))

    def validate() -> float:
        model.eval()
        losses, weights = [], []
        with torch.inference_mode():
            for batch in _batches(val, settings.batch_size * 2, random.Random(0)):
                inputs, *targets = encode(batch)
                losses.append(float(_loss(model(**inputs).logits.float(), *targets)))
                weights.append(len(batch))
        model.train()
        return float(np.average(losses, weights=weights))

    read = 0

    def advance(k: int) -> None:
        nonlocal read
        read += k
        if progress is not None:
            progress("reading features", read, len(fit) + len(val))

    def tensors(rows: Sequence[Example]) -> tuple[Any, Any, Any, Any] | None:
        features = _head_inputs(model, head, encode, rows, advance)
        if features is None:
            return None
        return features, *(t.to(device) for t in _targets(rows, usd, own))

    fit_features = tensors(fit)
    val_features = tensors(val) if fit_features is not None else None
    if fit_features is not None and val_features is not None:
        _fit_head(head, fit_features, val_features)
        _fit_success_rows(
            head,
            {key: columns[0] for key, columns in own.items()},
            (fit_features[0], fit_features[1][:, 0], [e.option for e in fit]),
            (val_features[0], val_features[1][:, 0], [e.option for e in val]),
        )
        del fit_features, val_features

    history = FitHistory(val_losses=[validate()], best=math.inf, steps=0, stopped_early=False)
    history.best = history.val_losses[0]
    best_state = copy.deepcopy(model.state_dict())
    worse = 0
    model.train()
    for _ in range(settings.epochs):
        for batch in _batches(fit, settings.batch_size, rng):
            inputs, *targets = encode(batch)
            loss = _loss(model(**inputs).logits.float(), *targets)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            history.steps += 1
            if progress is not None:
                progress("fine-tuning", history.steps, total)
            if history.steps % eval_every and history.steps != total:
                continue
            current = validate()
            history.val_losses.append(current)
            if current < history.best:
                history.best, worse = current, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                worse += 1
                if worse > settings.patience:
                    history.stopped_early = True
                    break
        if history.stopped_early:
            break
    model.load_state_dict(best_state)
    model.eval()
    return history


def load_base(
    base: str | Path, usd: bool, options: Sequence[str] = (), *, seed: int = 0
) -> tuple[Any, Any, bool]:
    """A base checkpoint as a sequence-regression model with the outputs of `head_labels`.

    Encoders and decoders both work (decoders get their end-of-sequence token as padding). A
    BERT-family base whose sentence-transformers files ask for mean pooling is read that way
    (`roi_agents.predict.pooling`). The new head's random start is drawn from ``seed``.

    Returns:
        The model, its tokenizer, and whether it pools by the mean.

    Raises:
        InvalidValueError: when the folder holds no loadable checkpoint.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.utils import logging as hf_logging

    from roi_agents.predict.pooling import asks_for_mean, mean_pool

    set_seed(seed)
    labels = head_labels(usd, options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # the new head's "newly initialised" report
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                base,
                num_labels=len(labels),
                problem_type="regression",
                ignore_mismatched_sizes=True,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as error:
        raise InvalidValueError("base", f"cannot load {base}: {error}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    return model, tokenizer, asks_for_mean(base) and mean_pool(model)
