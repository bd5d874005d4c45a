"""The SFT augmentation lexicon: loading, synonym substitution, distractor instructions, the
builder tool on a small WordNet-format directory, and the augmented SFT data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.control.params import DEFAULT_PARAMS
from edge_runtime.tasks.answers import parse_mpc_answer
from edge_runtime.contracts.task_enums import Category
from edge_runtime.tasks.instructions import phrasings, training_phrasings
from edge_runtime.tasks.oracle_table import OracleTable
from edge_runtime.train.cli import DEFAULT_ORACLE_TABLE
from edge_runtime.train.lexicon import (
    Lexicon, category_bearing_words, check_no_unseen_words, content_words, distractor_phrasing, load_lexicon,
    source_words, insert_words, substitute_synonyms, unseen_words, words_of,
)
from edge_runtime.train.sft_data import UNKNOWN_CATEGORY, SFTDataConfig, build_sft_examples

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return load_lexicon()


def test_shipped_lexicon_loads_and_covers_the_training_words(lexicon):
    assert len(lexicon.distractors) > 1000
    covered = set(lexicon.synonyms) & set(source_words())
    assert len(covered) > 0.8 * len(source_words())
    assert "backward" in lexicon.synonyms["backwards"]  # WordNet: backward(s), rearward(s)
    assert "rearwards" not in lexicon.synonyms["backwards"]  # a validation-only word
    assert "WordNet 3.0" in lexicon.source


def test_shipped_lexicon_holds_no_validation_or_test_only_word(lexicon):
    check_no_unseen_words(lexicon.synonyms, lexicon.distractors)
    unseen = unseen_words()
    assert {"rearwards", "midline", "coffee"} <= unseen  # validation-only words
    assert not {"reverse", "backwards", "the", "please"} & unseen  # training words and function words
    with pytest.raises(ValueError, match="occur only in validation/test phrasings.*rearwards"):
        check_no_unseen_words({"backwards": ("rearwards",)}, ("banana",))
    with pytest.raises(ValueError, match="midline"):
        check_no_unseen_words({}, ("banana", "midline"))


def test_source_words_come_from_training_phrasings_only():
    train_words = {w for c in Category for p in training_phrasings(c) for w in content_words(p)}
    from edge_runtime.tasks.decision import DecisionInstruction
    from edge_runtime.tasks.decision import phrasings as decision_phrasings
    train_words |= {w for d in DecisionInstruction for p in decision_phrasings(d, "train") for w in content_words(p)}
    assert set(source_words()) <= train_words


def test_category_bearing_words():
    bearing = category_bearing_words()
    assert bearing["centre"] is Category.CENTRELINE
    assert bearing["smoothly"] is Category.SMOOTH
    assert bearing["racing"] is Category.RACING_LINE
    assert "drive" not in bearing and "track" not in bearing  # shared by several categories


@pytest.mark.parametrize("bad, message", [
    ("{", "not valid JSON"),
    ('{"version": 99}', "version"),
    ('{"version": 1, "synonyms": []}', "synonyms"),
])
def test_bad_lexicon_file_is_refused_naming_it(tmp_path, bad, message):
    path = tmp_path / "lex.json"
    path.write_text(bad)
    with pytest.raises(ValueError, match=message) as info:
        load_lexicon(path)
    assert str(path) in str(info.value)


def test_missing_lexicon_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_lexicon"):
        load_lexicon(tmp_path / "nope.json")


def test_lexicon_refuses_distractors_that_are_lexicon_words():
    with pytest.raises(ValueError, match="distractor"):
        Lexicon({"centre": ("middle",)}, ("middle", "apple"))


def test_synonym_substitution(lexicon):
    rng = np.random.default_rng(0)
    text = "Drive backwards slowly at 2.5 m/s."
    assert substitute_synonyms(text, lexicon, rng, 0.0) == text
    out = substitute_synonyms(text, lexicon, rng, 1.0)
    assert out != text and out.endswith("at 2.5 m/s.") and out[0].isupper()
    for _ in range(50):  # number words and units are never replaced
        assert "three meters per second" in substitute_synonyms("Go faster than three meters per second.",
                                                                lexicon, rng, 1.0)


def test_distractor_phrasing_removes_every_category_word(lexicon):
    rng = np.random.default_rng(1)
    bearing = category_bearing_words()
    for category in (Category.CENTRELINE, Category.REVERSE, Category.SMOOTH, Category.RACING_LINE):
        for phrase in training_phrasings(category)[:20]:
            if not any(w in bearing for w in content_words(phrase)):
                continue
            out = distractor_phrasing(phrase, lexicon, rng)
            assert not any(w in bearing for w in content_words(out)), (phrase, out)
    with pytest.raises(ValueError, match="no category-bearing word"):
        distractor_phrasing("Drive the car.", lexicon, rng)


def test_insert_words_keeps_the_instruction(lexicon):
    """Inserted words are distractors; the original words stay in order, the end mark stays last,
    and numbers, units and the {v} slot get no neighbour inserted."""
    rng = np.random.default_rng(2)
    for text in ("Drive at {v} m/s around the track.", "Clip the apex.", "Reverse",
                 "Go faster than three meters per second, please."):
        for _ in range(30):
            out = insert_words(text, lexicon, rng)
            tokens, original = out.split(), text.split()
            it = iter(tokens)
            assert all(any(t == o or t == o.rstrip(".") for t in it) for o in original), (text, out)
            added = len(tokens) - len(original)
            assert 1 <= added <= 3
            if text[-1:] in ".!?":
                assert out[-1:] == text[-1:]
            if "{v}" in text:
                assert "{v} m/s" in out
            if "three" in text:
                assert "than three meters per second" in out
            assert tokens[0] == original[0]
    with pytest.raises(ValueError, match="max_words"):
        insert_words("Clip the apex.", lexicon, rng, max_words=0)


def test_sft_data_with_word_insertion_keeps_categories_and_answers():
    table = OracleTable.load(DEFAULT_ORACLE_TABLE)
    base = SFTDataConfig(mpc_examples=200, decision_per_instruction=0, synonym_rate=0.0, distractor_fraction=0.0,
                         seed=4)
    plain = build_sft_examples(table, base)
    assert not any(e.category == UNKNOWN_CATEGORY for e in plain)
    inserted = build_sft_examples(table, SFTDataConfig(**{**base.__dict__, "insertion_rate": 1.0}))
    distractors = set(load_lexicon().distractors)
    # every phrasing gets words, except one with no gap away from its number ("Hold {v} m/s.")
    missed = [e.instruction for e in inserted if not any(w in distractors for w in words_of(e.instruction))]
    assert len(missed) < 0.05 * len(inserted) and all("m/s" in t for t in missed)
    assert sorted(e.category for e in inserted) == sorted(e.category for e in plain)
    assert all(parse_mpc_answer(e.answer).ok for e in inserted)


def test_augmented_sft_data():
    table = OracleTable.load(DEFAULT_ORACLE_TABLE)
    cfg = SFTDataConfig(mpc_examples=400, decision_per_instruction=4, synonym_rate=0.3, distractor_fraction=0.2, seed=3)
    examples = build_sft_examples(table, cfg)
    unknown = [e for e in examples if e.category == UNKNOWN_CATEGORY]
    assert 40 < len(unknown) < 130  # ~20 % of 400
    for e in unknown:
        parsed = parse_mpc_answer(e.answer)
        assert parsed.ok and parsed.params == DEFAULT_PARAMS
        assert e.instruction in e.prompt
    mpc = [e for e in examples if e.task == "mpc" and e.category != UNKNOWN_CATEGORY]
    exact = {p for c in Category for p in training_phrasings(c)}
    assert any(e.instruction not in exact for e in mpc)  # some were reworded
    unseen = {p for c in Category for split in ("validation", "test") for p in phrasings(c, split)}
    assert not unseen & {e.instruction for e in examples}
    # reproducible from the seed
    again = build_sft_examples(table, cfg)
    assert [e.prompt for e in again] == [e.prompt for e in examples]


def test_no_augmentation_means_no_distractors_and_training_wordings():
    table = OracleTable.load(DEFAULT_ORACLE_TABLE)
    examples = build_sft_examples(table, SFTDataConfig(mpc_examples=100, decision_per_instruction=0, seed=0))
    assert all(e.category != UNKNOWN_CATEGORY for e in examples)
    assert not SFTDataConfig().augmented


@pytest.mark.parametrize("field, value", [("synonym_rate", 1.5), ("distractor_fraction", 1.0),
                                          ("insertion_rate", -0.1)])
def test_sft_data_config_validates_augmentation(field, value):
    with pytest.raises(ValueError, match=field):
        SFTDataConfig(**{field: value})


def _write_wordnet(root: Path) -> None:
    """A five-synset WordNet in the database format (CRLF line ends, as some copies have)."""
    synsets = {
        "adv": [(100, ["backward", "backwards", "rearward", "rearwards"])],
        "adj": [(200, ["smooth", "silky"])],
        "noun": [(300, ["centre", "center", "middle"]), (400, ["banana"]), (500, ["piano"])],
        "verb": [(600, ["centre", "center"])],
    }
    tagged = {"banana": 9, "piano": 5}
    for pos, entries in synsets.items():
        letter = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}[pos]
        data, index = ["  1 header line"], {}
        for offset, words in entries:
            body = " ".join(f"{w} 0" for w in words)
            data.append(f"{offset:08d} 00 {letter} {len(words):02x} {body} 000 | gloss")
            for w in words:
                index.setdefault(w, []).append(offset)
        (root / f"data.{pos}").write_bytes("\r\n".join(data).encode() + b"\r\n")
        lines = [f"{w} {letter} {len(o)} 0 {len(o)} {tagged.get(w, 0)} " + " ".join(f"{x:08d}" for x in o)
                 for w, o in sorted(index.items())]
        (root / f"index.{pos}").write_text("  1 header\n" + "\n".join(lines) + "\n")
    (root / "verb.exc").write_text("centred centre\n")
    (root / "LICENSE").write_text("WordNet Release 3.0 licence text\n")


def test_build_lexicon_tool_on_a_small_wordnet(tmp_path):
    wordnet = tmp_path / "dict"
    wordnet.mkdir()
    _write_wordnet(wordnet)
    out = tmp_path / "lexicon.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_lexicon.py"), "--wordnet", str(wordnet),
                    "--out", str(out), "--min-tagged", "1"], check=True, capture_output=True, text=True)
    lex = load_lexicon(out)
    assert set(lex.synonyms["backwards"]) == {"backward", "rearward"}  # "rearwards": validation only
    assert "middle" in lex.synonyms["centre"] and "center" in lex.synonyms["centred"]  # via verb.exc
    assert lex.distractors == ("banana", "piano")  # most tagged first
    assert "licence" in json.loads(out.read_text())["wordnet_license"]


def test_build_lexicon_tool_refuses_a_directory_that_is_not_wordnet(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_lexicon.py"), "--wordnet", str(tmp_path),
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert proc.returncode != 0 and "not a WordNet dict directory" in proc.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_augmented_sft_run_records_the_lexicon_and_the_card_says_so(tmp_path):
    """`edge-train sft` with augmentation: a tiny run trains, its summary names the lexicon by
    sha256, and the model card lists the augmentation."""
    from edge_runtime.model.io import sha256_file
    from edge_runtime.train.cli import main
    from edge_runtime.train.lexicon import DEFAULT_LEXICON

    out = tmp_path / "m"
    assert main(["sft", "--out", str(out), "--preset", "qwen2-1m", "--steps", "2", "--batch-size", "2",
                 "--mpc-examples", "12", "--decision-per-instruction", "2", "--synonym-rate", "0.5",
                 "--distractor-fraction", "0.3", "--insertion-rate", "0.2", "--history-augment", "0.5", "--eval-every", "0",
                 "--threads", "1"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["data"]["history_augment"] == 0.5
    assert summary["lexicon_sha256"] == sha256_file(DEFAULT_LEXICON)
    assert summary["data"]["synonym_rate"] == 0.5 and summary["data"]["distractor_fraction"] == 0.3
    assert main(["card", "--model", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "lexical augmentation" in card and summary["lexicon_sha256"][:12] in card
    assert "history augmentation: 50% of decision histories" in card
    assert "20% of phrasings with 1-3 random words inserted" in card
