"""Fine-tune a Hugging Face sequence-regression model into the predictor (torch, transformers).

Loss per row: the success log-loss of output 0 plus the Gaussian negative log-likelihood of
``log(tokens + 1)`` under outputs 1 (mean) and 2 (log-spread), and of ``log(usd + 1e-6)``
under outputs 3 and 4 when the data records USD (beta-NLL weighting, see `_loss`). The head
is first fitted alone on frozen features, then the whole model is fine-tuned; early stopping
keeps the weights with the lowest validation loss.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from roi_agents.errors import InvalidValueError
from roi_agents.predict.head import HEAD_LABELS, LOG_SIGMA_RANGE
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


def _targets(examples: Sequence[Example], usd: bool) -> tuple[Any, Any]:
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
    return torch.tensor(values), torch.tensor(present)


# Training floors the spread at 0.1 on the log scale (costs recorded as one token would
# otherwise drive it to zero); served outputs are read within LOG_SIGMA_RANGE.
_TRAIN_LOG_SIGMA = (math.log(0.1), LOG_SIGMA_RANGE[1])


def _loss(logits: Any, targets: Any, present: Any) -> Any:
    import torch
    from torch.nn import functional

    success = functional.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0])
    total = success
    for k in range(1, targets.shape[1]):
        mean, log_sigma = logits[:, 2 * k - 1], logits[:, 2 * k].clamp(*_TRAIN_LOG_SIGMA)
        sigma = torch.exp(log_sigma)
        # beta-NLL (beta = 1/2, Seitzer et al. 2022): weighting by the detached spread keeps a
        # shrinking spread from blowing up the gradient and drowning the success loss.
        nll = (log_sigma + 0.5 * ((targets[:, k] - mean) / sigma) ** 2) * sigma.detach()
        weight = present[:, k]
        total = total + (nll * weight).sum() / weight.sum().clamp(min=1.0)
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


def _init_head(head: Any, examples: Sequence[Example], usd: bool) -> None:
    """Start from the training set's averages: a small weight and the mean as bias."""
    import torch

    def stats(values: list[float]) -> tuple[float, float]:
        return float(np.mean(values)), math.log(max(float(np.std(values)), 1e-3))

    rate = min(max(float(np.mean([e.success for e in examples])), 1e-3), 1 - 1e-3)
    bias = [math.log(rate / (1 - rate))]
    bias.extend(stats([e.log_tokens for e in examples if e.log_tokens is not None] or [0.0]))
    if usd:
        bias.extend(stats([e.log_usd for e in examples if e.log_usd is not None] or [0.0]))
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
    model: Any, head: Any, encode: Callable[[Sequence[Example]], Any], rows: Sequence[Example]
) -> Any:
    """What the head reads for each row, from one frozen forward pass.

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
                model(**encode([rows[i] for i in order[start : start + 64]])[0])
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
    fit: tuple[Any, Any, Any],
    val: tuple[Any, Any, Any],
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
        loss = _loss(head(fit[0]), fit[1], fit[2])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 9:
            with torch.no_grad():
                current = float(_loss(head(val[0]), val[1], val[2]))
            if current < best:
                best, state = current, copy.deepcopy(head.state_dict())
    head.load_state_dict(state)
    return best


def fine_tune(
    model: Any,
    tokenizer: Any,
    fit: Sequence[Example],
    val: Sequence[Example],
    *,
    usd: bool,
    settings: FitSettings,
    on_step: Callable[[int, int, float], None] | None = None,
) -> FitHistory:
    """Train ``model`` in place on ``fit``; stop early on ``val``; keep the best weights.

    First the head alone, on features from one frozen pass (a few seconds: the new head starts
    where a linear probe ends instead of random), then the whole model end to end.

    Args:
        model: a transformers sequence-classification model with 3 (or 5 with USD) outputs.
        tokenizer: its tokenizer.
        fit: training rows (non-empty).
        val: validation rows for early stopping (non-empty).
        usd: whether outputs 3 and 4 (USD) are trained.
        settings: optimisation settings.
        on_step: called after each batch with (steps done, steps planned, running loss).

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
    outputs = 5 if usd else 3
    head = _head(model, outputs)
    _init_head(head, fit, usd)
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

    def encode(batch: Sequence[Example]) -> tuple[Any, Any, Any]:
        inputs = tokenizer(
            [e.text for e in batch],
            padding=True,
            truncation=True,
            max_length=settings.max_length,
            return_tensors="pt",
        ).to(device)
        targets, present = _targets(batch, usd)
        return inputs, targets.to(device), present.to(device)

    def validate() -> float:
        model.eval()
        losses, weights = [], []
        with torch.inference_mode():
            for batch in _batches(val, settings.batch_size * 2, random.Random(0)):
                inputs, targets, present = encode(batch)
                logits = model(**inputs).logits.float()
                losses.append(float(_loss(logits, targets, present)))
                weights.append(len(batch))
        model.train()
        return float(np.average(losses, weights=weights))

    def tensors(rows: Sequence[Example]) -> tuple[Any, Any, Any] | None:
        features = _head_inputs(model, head, encode, rows)
        if features is None:
            return None
        targets, present = _targets(rows, usd)
        return features, targets.to(device), present.to(device)

    fit_features, val_features = tensors(fit), tensors(val)
    if fit_features is not None and val_features is not None:
        _fit_head(head, fit_features, val_features)
        del fit_features, val_features

    history = FitHistory(val_losses=[validate()], best=math.inf, steps=0, stopped_early=False)
    history.best = history.val_losses[0]
    best_state = copy.deepcopy(model.state_dict())
    worse = 0
    running = 0.0
    model.train()
    for _ in range(settings.epochs):
        for batch in _batches(fit, settings.batch_size, rng):
            inputs, targets, present = encode(batch)
            loss = _loss(model(**inputs).logits.float(), targets, present)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            history.steps += 1
            value = float(loss.detach())
            running = value if history.steps == 1 else 0.98 * running + 0.02 * value
            if on_step is not None:
                on_step(history.steps, total, running)
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


def load_base(base: str | Path, outputs: int, *, seed: int = 0) -> tuple[Any, Any, bool]:
    """A base checkpoint as a sequence-regression model with ``outputs`` raw outputs.

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
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # the new head's "newly initialised" report
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                base,
                num_labels=outputs,
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
    model.config.id2label = dict(enumerate(HEAD_LABELS[:outputs]))
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    return model, tokenizer, asks_for_mean(base) and mean_pool(model)
