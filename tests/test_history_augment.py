"""Label-preserving edits of decision state histories (edge_runtime.train.history_augment)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.tasks.decision import generate_decision_dataset, label
from edge_runtime.tasks.prompts import history_stats
from edge_runtime.train.history_augment import HistoryAugmentConfig, augment_example, perturb_history
from edge_runtime.train.sft_data import SFTDataConfig, decision_examples


@pytest.fixture(scope="module")
def dataset():
    return generate_decision_dataset(n_per_instruction=20, split="train", seed=5)


def test_perturbed_history_stays_physical(dataset):
    """Walls move with the car (width unchanged), no wall gap below the limit, s and the racing
    line untouched, and the statistics really change."""
    cfg = HistoryAugmentConfig()
    rng = np.random.default_rng(0)
    changed = 0
    for ex in dataset:
        h = ex.history
        if any(h.crashed):
            assert perturb_history(h, rng, cfg) is h
            continue
        p = perturb_history(h, rng, cfg)
        np.testing.assert_allclose(p.arr("wall_left") + p.arr("wall_right"), h.arr("wall_left") + h.arr("wall_right"),
                                   atol=1e-9)
        floor = min(cfg.min_wall_gap, h.arr("wall_left").min(), h.arr("wall_right").min()) - 1e-9
        assert p.arr("wall_left").min() >= floor and p.arr("wall_right").min() >= floor
        assert p.s == h.s and p.race_d == h.race_d and p.crashed == h.crashed
        np.testing.assert_allclose(p.arr("v") * h.arr("vs"), h.arr("v") * p.arr("vs"), atol=1e-9)  # one speed factor
        changed += history_stats(p) != history_stats(h)
    assert changed > 0.9 * sum(not any(e.history.crashed) for e in dataset)


def test_augmented_examples_keep_their_labels_and_spread_the_numbers(dataset):
    rng = np.random.default_rng(1)
    edited = [augment_example(ex, rng) for ex in dataset]
    assert all(label(e.history, e.instruction) == e.label == o.label for e, o in zip(edited, dataset))
    assert all(e.instruction == o.instruction and e.phrasing == o.phrasing for e, o in zip(edited, dataset))
    for key in ("d_rms", "v_mean", "wl_mean"):
        before = {history_stats(e.history)[key] for e in dataset}
        after = {history_stats(e.history)[key] for e in edited}
        assert len(after) > len(before), key  # more distinct values of every statistic the reason line copies


def test_augment_example_returns_the_original_when_no_draw_keeps_the_label(dataset):
    """A zero-width speed range that makes a stopped car fast cannot keep a "don't move" True label."""
    ex = next(e for e in dataset if e.instruction.value == "dont_move" and e.label)
    cfg = HistoryAugmentConfig(speed_scale=(1.0, 1.0), max_shift=0.0, swing_scale=(1.0, 1.0), tries=2)
    assert augment_example(ex, np.random.default_rng(0), cfg).label is True
    moving = [e for e in dataset if e.instruction.value == "drive_forward" and e.label][0]
    stop = HistoryAugmentConfig(speed_scale=(1e-6, 1e-6), tries=3)  # every draw stops the car
    assert augment_example(moving, np.random.default_rng(0), stop) is moving


@pytest.mark.parametrize("kwargs, field", [
    ({"max_shift": -0.1}, "max_shift"), ({"swing_scale": (2.0, 1.0)}, "swing_scale"),
    ({"speed_scale": (0.0, 1.0)}, "speed_scale"), ({"min_wall_gap": -1.0}, "min_wall_gap"), ({"tries": 0}, "tries"),
])
def test_config_is_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        HistoryAugmentConfig(**kwargs)


def test_sft_decision_examples_with_history_edits():
    """Edits change prompts but not phrasings, labels or the balance; the share is validated."""
    plain = decision_examples(10, seed=3)
    edited = decision_examples(10, seed=3, history_augment=1.0)
    assert [e.instruction for e in plain] == [e.instruction for e in edited]
    assert [e.answer.splitlines()[-1] for e in plain] == [e.answer.splitlines()[-1] for e in edited]
    assert sum(a.prompt != b.prompt for a, b in zip(plain, edited)) > len(plain) // 2
    assert decision_examples(10, seed=3, history_augment=0.0) == plain
    with pytest.raises(ValueError, match="history_augment"):
        SFTDataConfig(history_augment=1.5)
