"""Constrained decoding: every answer parses (random weights, sampling), forced tokens skip the graph
without changing the text, token counts add up, the unconstrained path is unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edge_runtime.control.params import (
    PARAM_NAMES,
    PARAM_SPECS,
    SPEC_BY_NAME,
    MPCParams,
)
from edge_runtime.decoding.constrained import (
    _BUDGET_CAP,
    DECISION_MARKER,
    AnswerGrammar,
    NumberSpec,
    TokenConstraint,
    constraint_for,
    decision_grammar,
    generate_constrained,
    infer_task,
    mpc_grammar,
)
from edge_runtime.decoding.generator import OnnxGenerator, OnnxPolicy
from edge_runtime.tasks.answers import (
    format_mpc_answer,
    parse_decision_answer,
    parse_mpc_answer,
)
from edge_runtime.tasks.decision import generate_decision_dataset
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_decision_prompt, build_mpc_prompt

REPO = Path(__file__).resolve().parents[1]
DENSE_ONNX = REPO / "models" / "tiny" / "dense.onnx"


def mpc_prompts(n: int, split: str = "validation") -> list[str]:
    ins = instruction_set(split)
    return [build_mpc_prompt(ins[i % len(ins)].text) for i in range(n)]


def decision_prompts(n: int) -> list[str]:
    data = generate_decision_dataset(n_per_instruction=2, split="validation", seed=5, track="oval")
    return [build_decision_prompt(ex.history, ex.phrasing) for ex in data[:n]]


def assert_valid_mpc(text: str) -> None:
    parsed = parse_mpc_answer(text)
    assert parsed.ok, (parsed.failure, parsed.detail, text)
    for name, value in parsed.params.to_dict().items():
        spec = SPEC_BY_NAME[name]
        assert spec.low <= value <= spec.high
    assert parsed.params.v_min <= parsed.params.v_max


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from onnx_fixtures import build_tiny_onnx

    return build_tiny_onnx(tmp_path_factory.mktemp("constrained"))


@pytest.fixture(scope="module")
def gen(tiny_onnx) -> OnnxGenerator:
    return OnnxGenerator(tiny_onnx, threads=1)


# ----------------------------------------------------------------------------- the grammar alone
def accepts(grammar: AnswerGrammar, text: str, close: bool = True) -> bool:
    """Does the automaton accept ``text`` (tags written as text) followed by EOS?"""
    s = grammar.start
    for part in text.replace("<answer>", "\0<open>\0").replace("</answer>", "\0<close>\0").split("\0"):
        if part in ("<open>", "<close>"):
            s = grammar.step_symbol(s, part) if s is not None else None
        else:
            s = grammar.step_text(s, part)
    if s is not None and close:
        s = grammar.step_symbol(s, "<eos>")
    return s is not None and grammar.done(s)


def test_grammar_accepts_every_formatted_answer():
    g = mpc_grammar()
    rng = np.random.default_rng(0)
    for k in range(300):
        params = MPCParams.from_unit_vector(list(rng.random(11)))
        values = {n: round(v, 3) for n, v in params.to_dict().items()}
        values["v_min"] = min(values["v_min"], values["v_max"])
        reason = "Reason: hold 2.5 m/s." if k % 2 else None
        text = format_mpc_answer(values, reason, only_changed=bool(k % 3))
        assert accepts(g, text), text
    assert accepts(g, format_mpc_answer(MPCParams()))
    assert accepts(decision_grammar(), "<answer>True</answer>")
    assert accepts(decision_grammar(), "<answer>False</answer>")
    assert accepts(decision_grammar(), "mean v 180, needs > 300.\n<answer>False</answer>")
    assert not accepts(decision_grammar(), "<answer>Maybe</answer>")
    assert not accepts(decision_grammar(), "<answer>true</answer>")
    assert accepts(decision_grammar(), "wl mean 97, needs < 50 <answe </answer.\n<answer>True</answer>")


@pytest.mark.parametrize("text", [
    '<answer>{"qv": 21}</answer>',                       # out of range
    '<answer>{"qv": -1}</answer>',                       # no sign where the range has no negatives
    '<answer>{"qn": 1000}</answer>',                     # too many integer digits
    '<answer>{"qac": 0.0001}</answer>',                  # more than 3 decimals
    '<answer>{"qn": 05}</answer>',                       # leading zero
    '<answer>{"qn": 5.}</answer>',                       # no decimal after the point
    '<answer>{"qn": 5, "qn": 6}</answer>',               # repeated name
    '<answer>{"qn": 5, "qv": 6}</answer>',               # not in the canonical order
    '<answer>{"speed": 5}</answer>',                     # unknown name
    '<answer>{}</answer>',                               # empty object
    '<answer>{"qn":5}</answer>',                         # not the canonical spacing
    '<answer>{"v_min": 3, "v_max": 2}</answer>',         # v_min > v_max
    '<answer>{"v_max": 0.5}</answer>',                   # below v_min's default, v_min not written first
    'Reason <answer>\n<answer>{"qn": 5}</answer>',       # a tag spelled out in the reason
    'Reason </answer>\n<answer>{"qn": 5}</answer>',
    'Reason <<answer>\n<answer>{"qn": 5}</answer>',
    'two\nlines\n<answer>{"qn": 5}</answer>',            # a second reason line
    '\n<answer>{"qn": 5}</answer>',                      # empty reason line
    '<answer>{"qn": 5}',                                 # no closing tag
])
def test_grammar_rejects(text):
    assert not accepts(mpc_grammar(), text)


def test_grammar_options_and_limits():
    any_order = mpc_grammar(key_order="any")
    assert accepts(any_order, '<answer>{"v_max": 2, "qv": 3}</answer>')
    assert accepts(any_order, '<answer>{"v_max": 2, "v_min": 1.5}</answer>')
    assert not accepts(any_order, '<answer>{"v_max": 2, "v_min": 2.5}</answer>')
    assert not accepts(any_order, '<answer>{"qv": 2, "qv": 3}</answer>')
    short = mpc_grammar(max_reason_chars=5)
    assert accepts(short, "12345\n<answer>{\"qv\": 1}</answer>")
    assert not accepts(short, "123456\n<answer>{\"qv\": 1}</answer>")
    assert accepts(mpc_grammar(), '<answer>{"a_min": -20, "v_min": -2, "v_max": -1}</answer>')
    assert accepts(mpc_grammar(), '<answer>{"a_min": -0.5, "track_safety_margin": 0.999}</answer>')
    assert not accepts(mpc_grammar(), '<answer>{"a_min": -20.001}</answer>')
    long_names = AnswerGrammar("mpc", [NumberSpec.from_bounds("x" * 70, 0, 1, 0.5),
                                       NumberSpec.from_bounds("y" * 80, -500, 500, 0)])
    assert accepts(long_names, '<answer>{"' + "x" * 70 + '": 0.5, "' + "y" * 80 + '": -499.5}</answer>')
    assert long_names.cost(long_names.start) <= long_names.cost_bound
    with pytest.raises(ValueError):
        AnswerGrammar("steer")
    with pytest.raises(ValueError):
        NumberSpec.from_bounds("x", 2.0, 1.0, 1.5)


def test_random_walks_of_the_automaton_parse():
    """Random character walks through the automaton (always a viable next character) parse."""
    rng = np.random.default_rng(1)
    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    for grammar, parse in ((mpc_grammar(), parse_mpc_answer), (mpc_grammar(key_order="any"), parse_mpc_answer),
                           (decision_grammar(), parse_decision_answer)):
        for _ in range(150):
            s, text = grammar.start, ""
            while not grammar.done(s):
                moves = [(c, n) for c in alphabet if (n := grammar.step_char(s, c)) is not None]
                moves += [(t, n) for sym, t in (("<open>", "<answer>"), ("<close>", "</answer>"), ("<eos>", ""))
                          if (n := grammar.step_symbol(s, sym)) is not None]
                weights = np.array([0.02 if c not in "}\n" and not c.startswith("<") else 1.0 for c, _ in moves])
                if s[0] == "R" and s[1] > 20:
                    weights = np.array([5.0 if c == "\n" else 0.1 for c, _ in moves])
                c, s = moves[rng.choice(len(moves), p=weights / weights.sum())]
                text += c
                assert grammar.cost(s) <= grammar.cost_bound < _BUDGET_CAP
            parsed = parse(text)
            assert parsed.ok, (text, parsed.detail)


def test_infer_task():
    assert all(infer_task(p) == "mpc" for p in mpc_prompts(5))
    assert all(infer_task(p) == "decision" for p in decision_prompts(3))
    assert DECISION_MARKER in decision_prompts(1)[0]


# ------------------------------------------------------------------- random weights, with a model
@pytest.mark.slow
def test_sampling_with_random_weights_always_parses(gen):
    """Temperature 1 over a random model, many seeds and token budgets: every MPC answer parses and
    is in range, every decision answer parses; counts add up."""
    rng = np.random.default_rng(0)
    budget = int(gen.generation["max_new_tokens"]["mpc"])
    for k, prompt in enumerate(mpc_prompts(30)):
        limit = int(rng.integers(12, 90)) if k % 2 else budget
        r = gen.generate(prompt, limit, constrained=True, temperature=1.0, seed=k)
        assert_valid_mpc(r.text)
        assert r.stopped_at_eos and r.token_ids[-1] == gen.eos_id and r.emitted_tokens <= limit
        assert r.emitted_tokens == len(r.token_ids)
        assert 0 < r.forced_tokens < r.emitted_tokens
        assert len(r.decode_times_s) == r.emitted_tokens - r.forced_tokens - 1
        assert r.forward_passes == r.emitted_tokens - r.forced_tokens
        assert r.constrained == "mpc"
    for k, prompt in enumerate(decision_prompts(12)):
        r = gen.generate(prompt, 48, constrained=True, temperature=1.0, seed=k)
        assert parse_decision_answer(r.text).ok, r.text
        assert r.text.endswith(("\n<answer>True</answer>", "\n<answer>False</answer>")) or \
            r.text in ("<answer>True</answer>", "<answer>False</answer>"), r.text
        assert r.stopped_at_eos and r.emitted_tokens <= 48
        assert r.constrained == "decision" and r.forced_tokens >= 2  # </answer>, EOS


def test_greedy_constrained_parses_and_policy_flag(gen, tiny_onnx):
    for prompt in mpc_prompts(6):
        r = gen.generate(prompt, constrained=True)
        assert_valid_mpc(r.text)
    policy = OnnxPolicy(tiny_onnx, threads=1, constrained=True)
    gens = policy.generate(mpc_prompts(2) + decision_prompts(2), 48)
    assert all(parse_mpc_answer(g.text).ok for g in gens[:2])
    assert all(parse_decision_answer(g.text).ok for g in gens[2:])
    assert [r.constrained for r in policy.last_results] == ["mpc", "mpc", "decision", "decision"]


def test_budget_too_small_is_cut_not_crashed(gen):
    r = gen.generate(mpc_prompts(1)[0], 2, constrained=True)
    assert r.emitted_tokens == 2 and not r.stopped_at_eos
    names = TokenConstraint(AnswerGrammar("mpc", [NumberSpec.from_bounds("x" * 70, 0, 1, 0.5)]), gen.tokenizer,
                            gen.eos_id)  # a cost bound above the default budget cap
    r = generate_constrained(gen, mpc_prompts(1)[0], 100, names, temperature=1.0, rng=np.random.default_rng(0))
    assert r.stopped_at_eos and '<answer>{"' + "x" * 70 + '": ' in r.text and r.emitted_tokens <= 100
    tight = constraint_for(gen, "mpc").grammar.cost(constraint_for(gen, "mpc").grammar.start)
    for seed in range(5):  # the shortest possible answer still fits exactly
        r = gen.generate(mpc_prompts(1)[0], tight, constrained=True, temperature=1.0, seed=seed)
        assert_valid_mpc(r.text)


# ------------------------------------------------------------------------------- forced tokens
@pytest.mark.slow
def test_skipping_forced_tokens_gives_the_same_text(gen):
    """Feeding forced tokens lazily (together with the next token) gives the same tokens as one
    graph run per forced token, for greedy and seeded sampling, in fewer graph runs."""
    for k, prompt in enumerate(mpc_prompts(4) + decision_prompts(2)):
        constraint = constraint_for(gen, infer_task(prompt))
        for temperature in (0.0, 1.0):
            fast = generate_constrained(gen, prompt, 120, constraint, temperature=temperature,
                                        rng=np.random.default_rng(k))
            slow = generate_constrained(gen, prompt, 120, constraint, temperature=temperature,
                                        rng=np.random.default_rng(k), skip_forced=False)
            assert fast.token_ids == slow.token_ids and fast.text == slow.text
            assert fast.forced_tokens == slow.forced_tokens > 0
            assert fast.forward_passes == fast.emitted_tokens - fast.forced_tokens < slow.forward_passes


def test_forced_tokens_are_the_canonical_ones(gen):
    c = constraint_for(gen, "mpc")
    g = c.grammar
    tok = gen.tokenizer
    # after '{"qv' the rest '": ' is fixed: '":' is forced (the canonical token), then ' ' (qv has no negatives)
    s = g.step_text(g.step_symbol(g.start, "<open>"), '{"qv')
    _, forced = c.options(s, None)
    assert forced == tok.token_to_id('":')
    s = g.step_text(s, '":')
    _, forced = c.options(s, None)
    assert c.texts[forced] == " "
    # a_min may start with the ' -' token (if the vocabulary has one): then the space is not forced
    s = g.step_text(g.step_symbol(g.start, "<open>"), '{"a_min":')
    allowed, forced = c.options(s, None)
    texts = {c.texts[t] for t in allowed.tolist()}
    if " -" in c.texts:
        assert forced is None and texts >= {" ", " -"}
    else:
        assert texts == {" "} and c.texts[forced] == " "
    # '}' -> '</answer>' -> EOS, one allowed token each
    s = g.step_text(g.step_symbol(g.start, "<open>"), '{"qv": 3}')
    allowed, forced = c.options(s, None)
    assert allowed.tolist() == [tok.token_to_id("</answer>")] == [forced]


# ----------------------------------------------------------------------------- unconstrained path
def test_unconstrained_path_unchanged(gen):
    prompt = mpc_prompts(1)[0]
    default = gen.generate(prompt, 24)
    explicit = gen.generate(prompt, 24, constrained=False)
    assert default.token_ids == explicit.token_ids
    assert default.forced_tokens == 0 and default.constrained is None
    assert default.forward_passes == len(default.decode_times_s) + 1
    # a greedy loop written out with the generator's public step API
    ids = gen.encode(prompt)
    state = gen.start()
    logits = state.append_tokens(ids)
    out = [int(np.argmax(logits[-1]))]
    while len(out) < 24 and out[-1] != gen.eos_id:
        out.append(int(np.argmax(state.append_tokens([out[-1]])[-1])))
    assert list(default.token_ids) == out
    # unconstrained sampling is reproducible with a seed
    a = gen.generate(prompt, 16, temperature=1.0, seed=3)
    b = gen.generate(prompt, 16, temperature=1.0, seed=3)
    assert a.token_ids == b.token_ids and a.constrained is None
    with pytest.raises(ValueError):
        gen.generate(prompt, 8, temperature=-1.0)


@pytest.mark.skipif(not DENSE_ONNX.is_file(), reason="models/tiny/dense.onnx not present")
def test_trained_model_valid_answers_are_not_changed():
    """On the shipped model, where greedy answers already parse, the mask changes no token."""
    g = OnnxGenerator(DENSE_ONNX, threads=1)
    for prompt in mpc_prompts(6)[::2] + decision_prompts(2):
        free = g.generate(prompt, 120)
        assert g.generate(prompt, 120, constrained=True).token_ids == free.token_ids


def test_vocabulary_precomputation(gen):
    c = TokenConstraint(mpc_grammar(), gen.tokenizer, gen.eos_id)
    # the tags and EOS are symbols, pad and byte fragments are never allowed
    assert set(c.symbols.values()) == {"<open>", "<close>", "<eos>"}
    assert c.texts[gen.pad_id] is None
    assert all(t is None or "\ufffd" not in t for t in c.texts)
    assert max(mpc_grammar().cost(s) for s in [("R", 0, ""), ("R", 3, ""), ("TO",)]) < _BUDGET_CAP
    assert [p.name for p in PARAM_SPECS] == list(PARAM_NAMES) == list(c.grammar.order)


def test_constrained_module_is_torch_free():
    code = ("import sys; import edge_runtime.decoding.constrained; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
