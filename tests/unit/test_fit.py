"""The loss over shared and own outputs; the head's success rows, fitted on frozen features."""

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional

from roi_agents.train.fit import SUCCESS_L2, _fit_success_rows, _loss, _outputs_loss


def _rows(n, seed):
    # Option "a" fails where feature 0 is low, option "b" where feature 1 is; features have
    # their own scales and offsets (the fit standardises them, the head must not need to).
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator) * torch.arange(1.0, 9.0) + 5.0
    options = ["a" if i % 2 else "b" for i in range(n)]
    signal = torch.where(torch.tensor([o == "a" for o in options]), x[:, 0] - 5.0, x[:, 1] - 5.0)
    p = torch.sigmoid(2.0 * signal / torch.tensor([1.0 if o == "a" else 2.0 for o in options]))
    y = (torch.rand(n, generator=generator) < p).float()
    return x, y, options


def test_each_option_gets_its_own_ranking_and_the_head_computes_it():
    head = torch.nn.Linear(8, 5)
    own = {"a": 3, "b": 4}
    fit, val, test = _rows(4000, 0), _rows(1000, 1), _rows(2000, 2)
    _fit_success_rows(head, own, fit, val)
    x, y, options = test
    with torch.no_grad():
        out = head(x)
    for option, column, wrong in (("a", 3, 4), ("b", 4, 3)):
        mask = torch.tensor([o == option for o in options])
        own_auc = roc_auc_score(y[mask], out[mask, column])
        assert own_auc > 0.8
        assert own_auc > roc_auc_score(y[mask], out[mask, wrong]) + 0.1
        assert own_auc > roc_auc_score(y[mask], out[mask, 0]) + 0.05  # the shared row
    # An unpenalised bias: on the rows it was fitted on, the mean forecast is the rate.
    x, y, options = fit
    with torch.no_grad():
        out = head(x)
    for option, column in own.items():
        mask = torch.tensor([o == option for o in options])
        mean = float(torch.sigmoid(out[mask, column]).mean())
        assert mean == pytest.approx(float(y[mask].mean()), abs=2e-3)


def test_pure_noise_gets_the_strongest_penalty_and_a_flat_row():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(600, 50, generator=generator)
    y = (torch.rand(600, generator=generator) < 0.7).float()
    val_x = torch.randn(200, 50, generator=generator)
    val_y = (torch.rand(200, generator=generator) < 0.7).float()
    head = torch.nn.Linear(50, 3)
    _fit_success_rows(head, {}, (x, y, ["o"] * 600), (val_x, val_y, ["o"] * 200))
    with torch.no_grad():
        logits = head(val_x)[:, 0]
    # Near the rate's logit everywhere: 50 noise features do not move a forecast much.
    assert float(logits.std()) < 0.3
    assert float(logits.mean()) == pytest.approx(math.log(0.7 / 0.3), abs=0.25)
    assert SUCCESS_L2[0] > SUCCESS_L2[-1]


def test_loss_adds_only_the_outputs_a_row_has_of_its_own():
    # Outputs: success, token mean and spread, then option "a"'s own success logit (column 3).
    logits = torch.tensor([[0.2, 3.0, 0.1, -1.5], [1.0, 2.0, -0.3, 0.4]])
    targets = torch.tensor([[1.0, 2.5], [0.0, 2.2]])
    present = torch.ones(2, 2)
    shared = [0, 1, 2]
    own = torch.tensor([[3, 1, 2], shared])  # row 0 is option "a"'s, row 1 another option's
    alone = _outputs_loss(logits[:, :3], targets, present)
    assert float(_loss(logits, targets, present, torch.tensor([shared, shared]))) == float(alone)
    # Option "a"'s success logit on its one row, and nothing of the costs a second time.
    extra = functional.binary_cross_entropy_with_logits(logits[0, 3], targets[0, 0])
    assert float(_loss(logits, targets, present, own)) == pytest.approx(float(alone + extra))
