"""Bootstrap intervals (tasks.stats): coverage of the point value, width, seeding, stratification."""

import numpy as np
import pytest

from edge_runtime.tasks.stats import (BootstrapConfig, mean_ci, mean_of_means_ci, ratio_of_mean_of_means_ci,
                                      stratified_bootstrap)


def test_mean_ci_brackets_the_mean_and_shrinks_with_more_items():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 1.0, 12), rng.normal(0.3, 1.0, 400)
    lo, hi = mean_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = mean_ci(large)
    assert lo2 < large.mean() < hi2
    assert (hi2 - lo2) < 0.4 * (hi - lo)
    # the normal-theory width for n = 400 is 2 * 1.96 / 20 ~ 0.196
    assert hi2 - lo2 == pytest.approx(2 * 1.96 * large.std() / 20, rel=0.15)


def test_constant_values_give_a_zero_width_interval():
    assert mean_ci([0.5] * 7) == (0.5, 0.5)
    assert mean_of_means_ci([[1.0, 1.0], [0.0]]) == (0.5, 0.5)


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(2).uniform(-4, 1, 20)
    assert mean_ci(values) == mean_ci(values)
    assert mean_ci(values, BootstrapConfig(seed=1)) != mean_ci(values)


def test_mean_of_means_keeps_every_group_in_every_resample():
    """Stratified: a one-item group always weighs a full group, so the overall interval of
    [[0]*20, [1]] is centred on 0.5 and never reaches 0 or 1."""
    lo, hi = mean_of_means_ci([[0.0] * 20, [1.0]])
    assert (lo, hi) == (0.5, 0.5)
    lo, hi = mean_of_means_ci([[0.0, 1.0] * 10, [1.0]])
    assert 0.5 < lo < 0.75 < hi < 1.0


def test_ratio_ci_pairs_model_and_oracle_rows():
    # the model scores exactly half the oracle on every instruction: the ratio is 0.5 in every resample
    groups = [[(0.1, 0.2), (0.3, 0.6)], [(0.2, 0.4)]]
    assert ratio_of_mean_of_means_ci(groups) == pytest.approx((0.5, 0.5))
    # a non-positive oracle mean leaves the ratio undefined
    lo, hi = ratio_of_mean_of_means_ci([[(0.1, -0.2)]])
    assert np.isnan(lo) and np.isnan(hi)


def test_level_and_errors():
    values = np.random.default_rng(3).normal(size=50)
    lo90, hi90 = mean_ci(values, BootstrapConfig(level=0.9))
    lo95, hi95 = mean_ci(values)
    assert lo95 < lo90 < hi90 < hi95
    with pytest.raises(ValueError, match="resamples must be an int >= 100"):
        BootstrapConfig(resamples=10)
    with pytest.raises(ValueError, match="level"):
        BootstrapConfig(level=1.0)
    with pytest.raises(ValueError, match="at least one item"):
        stratified_bootstrap([np.array([])], lambda s: s[0].mean(axis=1))
    assert BootstrapConfig().describe() == {"method": "percentile bootstrap over evaluated items, stratified by group",
                                            "resamples": 10_000, "level": 0.95, "seed": 0}
