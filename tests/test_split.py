"""Group-aware splits never put one group on both sides."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_ml.split import group_fold, group_holdout, group_kfold

group_lists = st.lists(st.sampled_from([f"g{i}" for i in range(40)]), min_size=1, max_size=200)


@settings(max_examples=50, deadline=None)
@given(group_lists, st.integers(2, 6), st.integers(0, 3))
def test_no_group_on_both_sides_of_any_fold(groups, k, seed):
    seen = np.zeros(len(groups), dtype=int)
    for train, test in group_kfold(groups, k, seed):
        assert not {groups[i] for i in train} & {groups[i] for i in test}
        seen[test] += 1
    assert (seen == 1).all()  # every row is tested exactly once


@settings(max_examples=50, deadline=None)
@given(group_lists, st.integers(0, 3))
def test_assignment_does_not_depend_on_order_or_neighbours(groups, seed):
    folds = dict(zip(groups, group_fold(groups, 5, seed)))
    alone = {g: int(group_fold([g], 5, seed)[0]) for g in set(groups)}
    assert folds == alone


def test_holdout_fraction_is_about_right():
    groups = [f"g{i}" for i in range(5000)]
    kept, held = group_holdout(groups, 0.2, seed=1)
    assert len(kept) + len(held) == 5000 and abs(len(held) / 5000 - 0.2) < 0.02
    with pytest.raises(ValueError, match="fraction"):
        group_holdout(groups, 1.5)
