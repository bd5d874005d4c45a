import pytest

from edge_runtime.contracts.task_enums import Category
from edge_runtime.tasks.instructions import (SPLITS, Instruction, classify_instruction, instruction_set,
                                             phrasings)


def test_splits_are_disjoint_and_rich():
    for category in Category:
        train, held = set(phrasings(category, "train")), set(phrasings(category, "heldout"))
        assert len(train) >= 6 and len(held) >= 3
        assert not train & held


def test_instruction_sets_carry_targets_and_classify_back():
    for split in SPLITS:
        items = instruction_set(split, speeds_per_phrasing=2, seed=3)
        assert {i.category for i in items} == set(Category)
        for ins in items:
            back = classify_instruction(ins.text)
            assert back.category is ins.category and back.target_speed == ins.target_speed
    speeds = [i.target_speed for i in instruction_set("train", seed=1) if i.target_speed]
    assert speeds == [i.target_speed for i in instruction_set("train", seed=1) if i.target_speed]


def test_free_text_classification():
    assert classify_instruction("please go 2.9 m/s").target_speed == pytest.approx(2.9)
    assert classify_instruction("drive on the centre line").category is Category.CENTRELINE
    assert classify_instruction("back up slowly at 1 m/s").category is Category.REVERSE
    with pytest.raises(ValueError, match="cannot tell the category"):
        classify_instruction("make me a sandwich")


def test_instruction_validation():
    with pytest.raises(ValueError, match="needs a target speed"):
        Instruction("go", Category.REFERENCE_VELOCITY)
    with pytest.raises(ValueError, match="only reference-velocity"):
        Instruction("go", Category.SMOOTH, 2.0)
    with pytest.raises(ValueError, match="unknown split"):
        phrasings(Category.SMOOTH, "test")


def test_training_phrasings_extend_the_curated_set_and_stay_disjoint():
    from edge_runtime.tasks.instructions import training_phrasings

    for category in Category:
        train = training_phrasings(category)
        assert len(train) >= 60 and set(phrasings(category, "train")) <= set(train)
        held = {" ".join(p.lower().split()) for p in phrasings(category, "heldout")}
        assert not held & {" ".join(p.lower().split()) for p in train}
        for p in train:  # every training phrasing is recognised as its own category
            text = p.format(v="2.5") if "{v}" in p else p
            assert classify_instruction(text).category is category, p
