"""Held-out metrics: AUC, Brier, ECE, and the quality summary."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roi_agents.errors import InvalidValueError
from roi_agents.train.metrics import auc, brier, expected_calibration_error, quality


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 1.0]), st.sampled_from([0.1, 0.3, 0.5, 0.9])),
        min_size=2,
        max_size=30,
    )
)
def test_auc_equals_the_pairwise_definition(rows):
    y, p = [r[0] for r in rows], [r[1] for r in rows]
    pos = [b for a, b in rows if a == 1.0]
    neg = [b for a, b in rows if a == 0.0]
    if not pos or not neg:
        assert auc(y, p) is None
        return
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    assert auc(y, p) == pytest.approx(wins / (len(pos) * len(neg)))


def test_brier_and_ece_by_hand():
    y = [1, 0, 1, 1]
    p = [0.9, 0.2, 0.6, 0.8]
    assert brier(y, p) == pytest.approx((0.01 + 0.04 + 0.16 + 0.04) / 4)
    # Bins: 0.2 (0 of 1), 0.6 (1 of 1), 0.8 (1 of 1), 0.9 (1 of 1).
    assert expected_calibration_error(y, p) == pytest.approx((0.2 + 0.4 + 0.2 + 0.1) / 4)


def test_quality_summary_and_bad_input():
    q = quality(
        [1, 0, 1, 0],
        [0.8, 0.3, 0.7, 0.2],
        [0.9, 0.1, 0.9, 0.1],
        [0.5] * 4,
        log_tokens_error=[0.5, -0.5],
        tokens_inside=[True, False],
    )
    assert q.auc == 1.0
    assert q.brier_base == pytest.approx(0.25)
    assert q.brier_skill == pytest.approx(1 - q.brier / 0.25)
    assert q.log_tokens_mae == pytest.approx(0.5)
    assert q.coverage90 == 0.5
    assert q.usd_coverage90 is None
    with pytest.raises(InvalidValueError):
        quality([1], [0.5, 0.5], [0.5], [0.5])
