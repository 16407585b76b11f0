"""The head's success rows: regularised logistic regressions on frozen features, folded in."""

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from roi_agents.train.fit import SUCCESS_L2, _fit_success_rows


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
