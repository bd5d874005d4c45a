import re

import pytest

from edge_runtime.contracts.task_enums import Category
from edge_runtime.sim.tracks import SPLIT_TRACKS
from edge_runtime.tasks import instructions as instructions_module
from edge_runtime.tasks.decision import DecisionInstruction
from edge_runtime.tasks.decision import phrasings as decision_phrasings
from edge_runtime.tasks.instructions import (SPLITS, Instruction, classify_instruction, instruction_set,
                                             keyword_hits, phrasings, training_phrasings)

EVAL_SPLITS = ("validation", "test")
WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_three_splits_disjoint_and_rich():
    assert SPLITS == ("train", "validation", "test") == tuple(SPLIT_TRACKS)
    everything: dict[str, str] = {}
    for category in Category:
        train, val, test = (phrasings(category, s) for s in SPLITS)
        assert len(train) >= 6 and len(val) >= 4 and len(test) >= 12
        for split, texts in zip(SPLITS, (train, val, test)):
            assert len(set(map(_norm, texts))) == len(texts), (category, split)
            for text in texts:
                assert everything.setdefault(_norm(text), split) == split, text
        if category is Category.REFERENCE_VELOCITY:
            assert all("{v}" in p for p in test)


def test_validation_kept_the_old_heldout_phrasings_and_speeds():
    """The validation oracle table (built for the former held-out set) must still match."""
    val = instruction_set("validation")
    assert [i.text for i in val if i.category is Category.REVERSE][0] == "Travel rearwards around the course."
    speeds = [i.target_speed for i in val if i.target_speed is not None]
    assert len(speeds) == 4
    from edge_runtime.tasks.oracle_table import OracleTable, default_table_path

    table = OracleTable.load(default_table_path("validation", "hairpin"))
    assert table.eval_config.track == "hairpin"
    assert all(table.score_for(i) is not None for i in val)


def test_test_oracle_table_covers_the_test_instructions_on_the_test_track():
    from edge_runtime.tasks.oracle_table import OracleTable, default_table_path

    table = OracleTable.load(default_table_path("test", "esses"))
    assert table.eval_config.track == "esses"
    assert all(table.score_for(i) is not None for i in instruction_set("test"))


def test_test_phrasings_vary_in_register():
    """Terse commands, polite requests, indirect wishes and typos in every category."""
    vocabulary = {w for c in Category for p in training_phrasings(c) for w in WORD.findall(p.lower())}
    for category in Category:
        test = phrasings(category, "test")
        assert any(len(WORD.findall(p.replace("{v}", ""))) <= 3 for p in test), category  # terse
        assert any(re.search(r"\b(please|could you|would you|can we|thanks)\b", p.lower()) for p in test), category
        assert any(re.search(r"\b(i'd|i want|let's|it would|imagine)\b", p.lower()) for p in test), category
        typo_words = {w for p in test for w in WORD.findall(p.lower()) if w not in vocabulary}
        assert typo_words, category


def test_seeded_speeds_differ_per_split_and_repeat_per_seed():
    for split in SPLITS:
        a = [i.target_speed for i in instruction_set(split, seed=1) if i.target_speed]
        assert a == [i.target_speed for i in instruction_set(split, seed=1) if i.target_speed]
    val = [i.target_speed for i in instruction_set("validation") if i.target_speed]
    test = [i.target_speed for i in instruction_set("test") if i.target_speed]
    assert val != test[: len(val)]


def test_training_instructions_classify_back():
    for ins in instruction_set("train", speeds_per_phrasing=2, seed=3):
        back = classify_instruction(ins.text)
        assert back.category is ins.category and back.target_speed == ins.target_speed


def test_free_text_classification():
    assert classify_instruction("please go 2.9 m/s").target_speed == pytest.approx(2.9)
    assert classify_instruction("drive on the centre line").category is Category.CENTRELINE
    assert classify_instruction("back up slowly at 1 m/s").category is Category.REVERSE
    with pytest.raises(ValueError, match="cannot tell the category"):
        classify_instruction("make me a sandwich")


@pytest.mark.parametrize("text, category", [
    ("Trace the centre line.", Category.CENTRELINE),        # "race" inside "trace"
    ("Embrace the middle of the track.", Category.CENTRELINE),
    ("Drive on the center line, no racing.", Category.CENTRELINE),
    ("Stay in the middle, no backwards drift.", Category.CENTRELINE),
    ("Don't reverse, drive smoothly.", Category.SMOOTH),
    ("Never go backwards; keep the ride comfortable.", Category.SMOOTH),
    ("Drive at 2 m/s without reversing.", Category.REFERENCE_VELOCITY),
    ("No sudden moves.", Category.SMOOTH),                 # negated harshness asks for smoothness
    ("Don't drift sideways, keep it centred.", Category.CENTRELINE),  # the negation ends at the comma
    ("Reverse, do not race.", Category.REVERSE),
])
def test_word_boundaries_and_negation(text, category):
    assert classify_instruction(text).category is category


@pytest.mark.parametrize("text", ["Don't reverse.", "Do not drive backwards.", "Never back up."])
def test_negated_only_instruction_is_not_classified(text):
    assert keyword_hits(text) == {}
    with pytest.raises(ValueError, match="cannot tell the category"):
        classify_instruction(text)


def test_harsh_words_alone_do_not_mean_smooth():
    assert Category.SMOOTH not in keyword_hits("Drive with harsh, sudden braking.")


def _eval_only_words() -> set[str]:
    """Words of validation/test phrasings (MPC and decision) that no training phrasing uses."""
    train = {w for c in Category for p in training_phrasings(c) for w in WORD.findall(p.lower())}
    train |= {w for d in DecisionInstruction for p in decision_phrasings(d, "train") for w in WORD.findall(p.lower())}
    unseen = {w for c in Category for s in EVAL_SPLITS for p in phrasings(c, s) for w in WORD.findall(p.lower())}
    unseen |= {w for d in DecisionInstruction for s in EVAL_SPLITS for p in decision_phrasings(d, s)
               for w in WORD.findall(p.lower())}
    return unseen - train


def test_classifier_words_never_come_only_from_validation_or_test():
    """Every literal keyword word is either a training word or absent from validation/test; every
    stem ("revers*") starts a training word or matches no validation/test word. So the classifier
    is not tuned to unseen text."""
    train = {w for c in Category for p in training_phrasings(c) for w in WORD.findall(p.lower())}
    eval_only = _eval_only_words()
    tables = [instructions_module._KEYWORDS, instructions_module._NEGATED_KEYWORDS]
    for table in tables:
        for keywords in table.values():
            for keyword in keywords:
                for term in keyword.split():
                    if term == "*":
                        continue
                    if term.endswith("*"):  # a general-knowledge stem may match no unseen-only word
                        stem = term[:-1]
                        assert any(w.startswith(stem) for w in train) or not any(
                            w.startswith(stem) for w in eval_only), term
                    else:
                        assert term not in eval_only, term
    source = " ".join(k for table in tables for ks in table.values() for k in ks)
    for word in ("rearward", "roll backward", "fastest line", "minimum-curvature", "g-force", "coffee",
                 "car-sick", "easy", "midline", "halfway"):
        assert word not in source


def test_classifier_matches_only_training_phrasings_verbatim(monkeypatch):
    """The exact-match stage knows training phrasings only: with no keywords, a validation
    phrasing is not recognised."""
    monkeypatch.setattr(instructions_module, "_COMPILED", {})
    monkeypatch.setattr(instructions_module, "_SPEED_RE", re.compile(r"(?!x)x"))
    assert classify_instruction("Drive on the centre line.").category is Category.CENTRELINE
    for category in Category:
        for text in phrasings(category, "validation"):
            with pytest.raises(ValueError):
                classify_instruction(text.format(v="2.0"))


# The classifier's measured accuracy on the validation phrasings (iterating on validation is
# allowed; the test split is never used to tune or to test it). These are the misses today; a
# change of the classifier that changes them must update this list and docs/evaluation.md.
VALIDATION_MISSES = {
    "Please keep to the midline of the course.",
    "Stay halfway between the left and right boundaries.",
    "Travel rearwards around the course.",
    "Head the opposite way without turning around.",
    "Can you back the vehicle down the track?",
    "Pretend there is a full cup of coffee on the dashboard.",
    "Keep the g-forces low.",
    "I get car-sick easily, take it easy.",
    "Take the fastest line around the circuit.",
    "Drive the minimum-curvature line.",
}


def test_classifier_accuracy_on_validation_is_measured_honestly():
    items = instruction_set("validation")
    misses = set()
    for ins in items:
        try:
            got = classify_instruction(ins.text)
            ok = got.category is ins.category and got.target_speed == ins.target_speed
        except ValueError:
            ok = False
        if not ok:
            misses.add(ins.text)
    assert misses == VALIDATION_MISSES
    assert 1 - len(misses) / len(items) == pytest.approx(0.5)


def test_instruction_validation():
    with pytest.raises(ValueError, match="needs a target speed"):
        Instruction("go", Category.REFERENCE_VELOCITY)
    with pytest.raises(ValueError, match="only reference-velocity"):
        Instruction("go", Category.SMOOTH, 2.0)
    with pytest.raises(ValueError, match="unknown split 'heldout'"):
        phrasings(Category.SMOOTH, "heldout")
    with pytest.raises(ValueError, match="unknown split"):
        instruction_set("heldout")


def test_training_phrasings_extend_the_curated_set_and_stay_disjoint():
    for category in Category:
        train = training_phrasings(category)
        assert len(train) >= 60 and set(phrasings(category, "train")) <= set(train)
        unseen = {_norm(p) for s in EVAL_SPLITS for p in phrasings(category, s)}
        assert not unseen & {_norm(p) for p in train}
        for p in train:  # every training phrasing is recognised as its own category
            text = p.format(v="2.5") if "{v}" in p else p
            assert classify_instruction(text).category is category, p


def test_split_disjointness_check_catches_a_shared_phrasing():
    from edge_runtime.tasks.instructions import check_splits_disjoint

    table = {Category.SMOOTH: {"train": ("Drive smoothly.",), "validation": ("Be gentle.",),
                               "test": ("drive   SMOOTHLY.",)}}
    with pytest.raises(AssertionError, match="in both the train and the test split"):
        check_splits_disjoint(table)
    with pytest.raises(AssertionError, match="expected"):
        check_splits_disjoint({Category.SMOOTH: {"train": ("a",)}})
