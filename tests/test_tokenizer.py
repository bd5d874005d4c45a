"""The task tokenizer: digits split, exact round trips, unseen text, save/load, HF wrapper, prompt lengths."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edge_runtime.control.params import MPCParams  # noqa: E402
from edge_runtime.model.tokenizer import (ANSWER_TOKENS, EOS_TOKEN, PAD_TOKEN, as_hf_tokenizer,  # noqa: E402
                                          load_tokenizer, save_tokenizer, token_counts, train_tokenizer)
from edge_runtime.tasks import decision, instructions  # noqa: E402
from edge_runtime.tasks.answers import format_decision_answer, format_mpc_answer  # noqa: E402
from edge_runtime.tasks.decision import generate_decision_dataset  # noqa: E402
from edge_runtime.contracts.task_enums import Category  # noqa: E402
from edge_runtime.tasks.instructions import instruction_set  # noqa: E402
from edge_runtime.tasks.prompts import PromptContext, build_decision_prompt, build_mpc_prompt  # noqa: E402
from edge_runtime.sim.tracks import TEST_TRACK, VALIDATION_TRACK  # noqa: E402
from edge_runtime.train.corpus import task_corpus  # noqa: E402

MAX_PROMPT_TOKENS = 300


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return task_corpus(seed=0, decision_per_instruction=12)  # the histories are shared with test_prompts (cached)


@pytest.fixture(scope="session")
def tok(corpus):
    return train_tokenizer(corpus, vocab_size=1024)


@pytest.fixture(scope="session")
def unseen_decision():
    return generate_decision_dataset(n_per_instruction=12, split="validation")


def _pieces(tok, text: str) -> list[str]:
    return [tok.decode([i]) for i in tok.encode(text).ids]


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------
def test_corpus_uses_train_split_only(corpus):
    """Every train phrasing is in the corpus; no validation or test phrasing of a task is an
    instruction of that task's texts in it."""
    import re

    text = "\n".join(corpus)

    def instructions_of(texts) -> set[str]:
        return {line[len("Instruction: "):] for t in texts for line in t.splitlines()
                if line.startswith("Instruction: ")}

    is_decision = [t.endswith(("<answer>True</answer>", "<answer>False</answer>")) for t in corpus]
    mpc_seen = instructions_of(t for t, d in zip(corpus, is_decision) if not d)
    decision_seen = instructions_of(t for t, d in zip(corpus, is_decision) if d)

    def used(phrasing: str, seen: set[str]) -> bool:
        pattern = re.compile(re.escape(phrasing).replace(re.escape("{v}"), r"-?[0-9.]+"))
        return any(pattern.fullmatch(s) for s in seen)

    for category in Category:
        for split in ("validation", "test"):
            for p in instructions.phrasings(category, split):
                assert not used(p, mpc_seen), (split, p)
        for p in instructions.phrasings(category, "train"):
            assert used(p, mpc_seen), p
    for ins in decision.DecisionInstruction:
        for split in ("validation", "test"):
            for p in decision.phrasings(ins, split):
                assert not used(p, decision_seen), (split, p)
        for p in decision.phrasings(ins, "train"):
            assert used(p, decision_seen), p
    assert VALIDATION_TRACK not in text and TEST_TRACK not in text  # the evaluation tracks
    assert all(d in text for d in "0123456789")
    assert "<answer>True</answer>" in text and "<answer>False</answer>" in text


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------
def test_special_and_answer_tokens(tok):
    assert tok.token_to_id(EOS_TOKEN) == 0 and tok.token_to_id(PAD_TOKEN) == 1
    for t in ANSWER_TOKENS:
        assert tok.encode(t).ids == [tok.token_to_id(t)]
    enc = tok.encode('<answer>{"qn": 5}</answer>')
    assert enc.tokens[0] == "<answer>" and enc.tokens[-1] == "</answer>"
    # the answer tags are not special: they survive skip_special_tokens
    assert tok.decode(enc.ids) == '<answer>{"qn": 5}</answer>'
    assert tok.decode(tok.encode("x<|endoftext|>").ids) == "x"
    assert 512 < tok.get_vocab_size() <= 1024
    assert not any("answer>" in t and t not in ANSWER_TOKENS for t in tok.get_vocab())  # no merges wasted on tags


def test_no_token_mixes_digits_with_anything(tok):
    for token in tok.get_vocab():
        if any(c.isdigit() for c in token):
            assert len(token) == 1, token


@pytest.mark.parametrize("number", ["-12.345", "0.01", "4.5", "100", "-0.5", "9876543210", "3.14159"])
def test_numbers_round_trip_digit_by_digit(tok, number):
    for text in (number, f" {number}", f'"v_max": {number},'):
        assert tok.decode(tok.encode(text).ids) == text
    pieces = _pieces(tok, f"x {number}")
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == [c for c in number if c.isdigit()]


def test_prompts_and_answers_round_trip(tok, unseen_decision):
    texts = [build_mpc_prompt(i.text, PromptContext(-1.3, "hairpin")) for i in instruction_set("validation")]
    texts += [build_decision_prompt(ex.history, ex.phrasing) for ex in unseen_decision[:16]]
    texts += [format_mpc_answer(MPCParams.from_unit_vector([0.123 * k % 1 for k in range(11)]), "Reason here."),
              format_decision_answer(True)]
    for text in texts:
        assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.parametrize("text", [
    "Pretend there is a full cup of coffee on the dashboard.", "Slalom across the track.",
    "Fahr bitte schön langsam 🚗 — ça va?", "\t tabs  and   spaces \n\n", "~`^|\\ odd \x00 bytes",
])
def test_unseen_text_tokenizes_without_unknowns(tok, text):
    enc = tok.encode(text)
    assert all(i is not None and 0 <= i < tok.get_vocab_size() for i in enc.ids)
    assert tok.decode(enc.ids) == text


# ---------------------------------------------------------------------------------------------
# Files and the HF wrapper
# ---------------------------------------------------------------------------------------------
def test_save_load_round_trip(tok, tmp_path):
    text = build_mpc_prompt("Drive at 2.5 m/s.")
    path = save_tokenizer(tok, tmp_path / "model")
    assert path == tmp_path / "model" / "tokenizer.json" and path.is_file()
    for where in (path, tmp_path / "model"):
        loaded = load_tokenizer(where)
        assert loaded.encode(text).ids == tok.encode(text).ids
        assert loaded.decode(loaded.encode(text).ids) == text  # answer tags kept after reload
    file = save_tokenizer(tok, tmp_path / "x" / "tok.json")
    assert file.name == "tok.json" and load_tokenizer(file).get_vocab() == tok.get_vocab()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_tokenizer(tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)
    bad.write_text('{"version": "1.0"}')
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)


def test_load_rejects_tokenizer_without_our_tokens(tmp_path):
    from tokenizers import Tokenizer, models
    plain = Tokenizer(models.BPE())
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(ValueError, match="plain.json.*<\\|endoftext\\|>"):
        load_tokenizer(tmp_path / "plain.json")


def test_hf_wrapper_same_ids(tok, tmp_path, unseen_decision):
    hf = as_hf_tokenizer(tok)
    assert hf.eos_token == EOS_TOKEN and hf.bos_token == EOS_TOKEN and hf.pad_token == PAD_TOKEN
    assert hf.eos_token_id == 0 and hf.bos_token_id == 0 and hf.pad_token_id == 1
    texts = [build_mpc_prompt("Drive at 2.5 m/s."), build_decision_prompt(unseen_decision[0].history, "Reverse."),
             format_mpc_answer(MPCParams(), "A reason .")]
    for text in texts:
        ids = hf(text)["input_ids"]
        assert ids == tok.encode(text).ids
        assert hf.decode(ids) == text
    save_tokenizer(tok, tmp_path)
    assert as_hf_tokenizer(tmp_path)(texts[0])["input_ids"] == tok.encode(texts[0]).ids
    assert as_hf_tokenizer(tmp_path / "tokenizer.json").vocab_size == tok.get_vocab_size()


def test_tokenizer_module_imports_transformers_lazily_and_no_training_data_code():
    """Loading a model's tokenizer needs neither torch nor the task / simulator code (the corpus
    that trains it is built in train/corpus.py)."""
    code = ("import sys, edge_runtime.model.tokenizer\n"
            "bad = [m for m in ('torch', 'transformers', 'edge_runtime.tasks', 'edge_runtime.sim',\n"
            "                   'edge_runtime.train') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# ---------------------------------------------------------------------------------------------
# Prompt lengths in tokens
# ---------------------------------------------------------------------------------------------
def test_prompt_token_counts(tok, unseen_decision):
    mpc = [build_mpc_prompt(i.text, ctx) for split in ("train", "validation", "test")
           for i in instruction_set(split)
           for ctx in (None, PromptContext(-1.5, "hairpin"))]
    dec = [build_decision_prompt(ex.history, ex.phrasing) for ex in unseen_decision]
    assert max(token_counts(tok, mpc)) <= MAX_PROMPT_TOKENS
    assert max(token_counts(tok, dec)) <= MAX_PROMPT_TOKENS
    answer = format_mpc_answer(MPCParams.from_unit_vector([0.123456] * 11))
    assert token_counts(tok, [answer])[0] <= 140  # every digit is a token: ~130 for a full random set
