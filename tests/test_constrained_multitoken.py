"""Constrained decoding with a tokenizer that spells the answer tags with several tokens (as a
pretrained one does): the tags become grammar text, every random walk still yields an answer that
parses within the token budget, added tokens other than EOS are never allowed, and a tokenizer that
has the tags as single tokens keeps the symbol grammar."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers, trainers

from edge_runtime.contracts.answer_format import ANSWER_CLOSE, ANSWER_OPEN
from edge_runtime.control.params import SPEC_BY_NAME, MPCParams
from edge_runtime.decoding.constrained import (
    TokenConstraint,
    decision_grammar,
    generate_constrained,
    mpc_grammar,
)
from edge_runtime.decoding.step_api import GenerationResult
from edge_runtime.model.tokenizer import _new_tokenizer
from edge_runtime.tasks.answers import format_mpc_answer, parse_decision_answer, parse_mpc_answer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(200):
        values = {n: float(rng.uniform(s.low, s.high)) for n, s in SPEC_BY_NAME.items()}
        values["v_min"], values["v_max"] = sorted((values["v_min"], values["v_max"]))
        p = MPCParams(**values)
        texts.append("keep it smooth, needs < 50.\n" + format_mpc_answer(p))
        texts.append(f"mean v {rng.integers(100)}\n{ANSWER_OPEN}{'True' if rng.random() < .5 else 'False'}{ANSWER_CLOSE}")
    return texts


@pytest.fixture(scope="module")
def chatml_tok() -> Tokenizer:
    """A byte-level BPE (our tokenizer's pipeline) trained on answers, tags NOT added: it learns
    merges across them, like a pretrained tokenizer; ChatML's specials are added tokens."""
    tok = _new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    assert tok.token_to_id(ANSWER_OPEN) is None and tok.token_to_id(ANSWER_CLOSE) is None
    assert len(tok.encode(ANSWER_OPEN + ANSWER_CLOSE).ids) > 2
    return tok


def _walk(c: TokenConstraint, budget: int, rng: np.random.Generator) -> tuple[list[int], bool]:
    """A random-logit constrained generation at the token level (forced tokens taken)."""
    state, out = c.grammar.start, []
    while len(out) < budget and not c.grammar.done(state):
        allowed, forced = c.options(state, budget - len(out))
        assert len(allowed), (state, out)
        tok = forced if forced is not None else int(rng.choice(allowed))
        out.append(tok)
        state = c.advance(state, tok)
        assert state is not None
    return out, c.grammar.done(state)


@pytest.mark.parametrize("task", ["mpc", "decision"])
def test_random_walks_parse_within_the_budget(chatml_tok, task):
    eos = chatml_tok.token_to_id("<|im_end|>")
    grammar = mpc_grammar() if task == "mpc" else decision_grammar()
    c = TokenConstraint(grammar, chatml_tok, eos)
    assert c.grammar.tags_as_text and not grammar.tags_as_text
    assert set(c.symbols) == {eos}
    shortest = c.grammar.cost(c.grammar.start)
    assert shortest >= len(ANSWER_OPEN) + len(ANSWER_CLOSE) + 1
    rng = np.random.default_rng(1)
    budgets = [shortest, shortest + 1, shortest + 7, 40, 64, 200]
    for i in range(120):
        budget = budgets[i % len(budgets)]
        ids, done = _walk(c, budget, rng)
        assert done and len(ids) <= budget and ids[-1] == eos and eos not in ids[:-1]
        text = chatml_tok.decode(ids[:-1], skip_special_tokens=False)
        parsed = parse_mpc_answer(text) if task == "mpc" else parse_decision_answer(text)
        assert parsed.ok, (parsed.failure, text)
        assert text.count(ANSWER_OPEN) == 1 and text.count(ANSWER_CLOSE) == 1


def test_added_tokens_are_never_allowed_as_text(chatml_tok):
    eos = chatml_tok.token_to_id("<|im_end|>")
    c = TokenConstraint(mpc_grammar(), chatml_tok, eos)
    others = {chatml_tok.token_to_id(t) for t in SPECIALS} - {eos}
    assert all(c.texts[t] is None for t in others)
    g = c.grammar
    states = [g.start, g.step_text(g.start, "ok\n"), g.step_text(g.start, "<ans"), g.step_text(g.start, '<answer>{"'),
              g.step_text(g.start, '<answer>{"qv": 1}</answer')]
    for s in states:
        assert s is not None
        allowed, _ = c.options(s, None)
        assert not others & set(allowed.tolist())
        assert (eos in allowed.tolist()) == (s[0] == "E")


def test_grammar_with_tags_as_text():
    g = decision_grammar().with_tags_as_text(True)
    s = g.step_text(g.start, "<answer>True</answer>")
    assert s == ("E",) and g.step_symbol(s, "<eos>") == ("DONE",)
    assert g.step_text(g.start, "< 50 needed\n<answer>False</answer>") == ("E",)  # a reason that starts with <
    assert g.step_text(g.start, "<ans\n<answer>True</answer>") == ("E",)
    assert g.step_text(g.start, "ok <answer>") is None  # a tag never inside the reason
    assert g.step_text(g.start, "ok\n</answer>") is None
    assert g.step_symbol(g.start, "<open>") is None  # no symbols for the tags
    assert g.cost(g.start) == len("<answer>True</answer>") + 1
    assert g.forced_text(g.step_text(g.start, "x\n")) == ANSWER_OPEN
    m = mpc_grammar().with_tags_as_text(True)
    assert m.forced_text(m.step_text(m.start, "x\n")).startswith(ANSWER_OPEN + '{"')
    assert m.cost_bound >= max(m.cost(s) for s in (m.start, m.step_text(m.start, "x")))


def test_generate_constrained_with_random_logits(chatml_tok):
    """The decoding loop (forced tokens fed with the next model token) over a random-logit decoder."""
    eos = chatml_tok.token_to_id("<|im_end|>")
    vocab = chatml_tok.get_vocab_size()

    class _Session:
        def __init__(self, rng):
            self.rng = rng

        def append_tokens(self, ids):
            return self.rng.normal(size=(len(ids), vocab)).astype(np.float32)

    class _Decoder:
        eos_id = eos

        def __init__(self):
            self.rng = np.random.default_rng(3)

        def start(self):
            return _Session(self.rng)

        def encode(self, prompt):
            return chatml_tok.encode(prompt).ids

        def decode(self, ids):
            return chatml_tok.decode([i for i in ids if i != eos])

        def check_fits(self, prompt_tokens, max_new_tokens):
            return None

    dec = _Decoder()
    for task, parse in (("mpc", parse_mpc_answer), ("decision", parse_decision_answer)):
        c = TokenConstraint(mpc_grammar() if task == "mpc" else decision_grammar(), chatml_tok, eos)
        for budget in (c.grammar.cost(c.grammar.start), 48, 96):
            for temp in (0.0, 1.0, 3.0):
                r: GenerationResult = generate_constrained(dec, "prompt", budget, c, temperature=temp,
                                                           rng=np.random.default_rng(budget))
                assert r.stopped_at_eos and r.emitted_tokens <= budget, r
                assert parse(r.text).ok, r.text


def test_single_token_tags_keep_the_symbol_grammar(chatml_tok):
    data = json.loads(chatml_tok.to_str())
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_tokens([ANSWER_OPEN, ANSWER_CLOSE])
    eos = tok.token_to_id("<|im_end|>")
    c = TokenConstraint(mpc_grammar(), tok, eos)
    assert not c.grammar.tags_as_text
    assert sorted(c.symbols.values()) == ["<close>", "<eos>", "<open>"]
    # only the opening tag is a token: both become text, and the tag token is one spelling of it
    half = Tokenizer.from_str(json.dumps(data))
    half.add_tokens([ANSWER_OPEN])
    c = TokenConstraint(mpc_grammar(), half, eos)
    tid = half.token_to_id(ANSWER_OPEN)
    assert c.grammar.tags_as_text and c.texts[tid] == ANSWER_OPEN
    assert tid in c.options(c.grammar.start, None)[0].tolist()


def test_a_tokenizer_that_cannot_spell_a_tag_is_refused():
    tok = _new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=[c for c in pre_tokenizers.ByteLevel.alphabet() if c != "<"])
    tok.train_from_iterator(["abc 123 {} True False"], trainer)
    with pytest.raises(ValueError, match="cannot spell '<answer>'"):
        TokenConstraint(mpc_grammar(), tok, tok.token_to_id("<|im_end|>"))
    with pytest.raises(ValueError, match="EOS id 9999"):
        TokenConstraint(mpc_grammar(), tok, 9999)


@pytest.fixture(scope="module")
def unconstrainable_onnx(tmp_path_factory):
    """A tiny exported model whose EOS is an answer tag's token: no answer grammar fits it."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from onnx_fixtures import build_tiny_onnx, with_metadata

    root = tmp_path_factory.mktemp("unconstrainable")
    src = build_tiny_onnx(root)

    def edit(props: dict[str, str]) -> None:
        gen = json.loads(props["edge_runtime.generation"])
        gen["eos_id"] = Tokenizer.from_str(props["edge_runtime.tokenizer"]).token_to_id(ANSWER_OPEN)
        props["edge_runtime.generation"] = json.dumps(gen)

    return with_metadata(src, root / "bad_eos.onnx", edit)


def test_edge_eval_and_edge_run_refuse_an_unconstrainable_model_in_one_line(unconstrainable_onnx, tmp_path, capsys):
    from edge_runtime.evaluation.cli import main as edge_eval
    from edge_runtime.runtime.cli import main as edge_run

    rc = edge_eval(["--model", str(unconstrainable_onnx), "--constrained", "--task", "decision",
                    "--decision-examples", "2"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("edge-eval: error:") and "Traceback" not in err, err
    assert "constrained decoding cannot be used" in err and "bad_eos.onnx" in err, err
    out = tmp_path / "run"
    rc = edge_run(["--model", str(unconstrainable_onnx), "--constrained", "--track", "oval", "--duration", "1",
                   "--fast", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("edge-run: error:") and "constrained decoding" in err, err
