"""Answer formats: formatting, round trips, every failure reason, and a parser that never raises."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.control.params import DEFAULT_PARAMS, PARAM_NAMES, PARAM_SPECS, MPCParams, ParameterError
from edge_runtime.tasks.answers import (DecisionParse, answer_choice, MPCParse, ParseFailure, count_failures, extract_answer_block,
                                        format_decision_answer, format_mpc_answer, format_number,
                                        parse_decision_answer, parse_mpc_answer)

DEFAULT_ANSWER = ('<answer>{"qv": 10, "qn": 20, "qalpha": 7, "qac": 0.01, "qddelta": 0.1, "alat_max": 10, '
                  '"a_min": -5, "a_max": 5, "v_min": 1, "v_max": 5, "track_safety_margin": 0.45}</answer>')


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, text", [
    (10.0, "10"), (20.5, "20.5"), (0.01, "0.01"), (-5.0, "-5"), (0.45, "0.45"), (1 / 3, "0.333"),
    (2 / 3, "0.667"), (1e-7, "0"), (-1e-7, "0"), (-0.0, "0"), (100, "100"), (1e-3, "0.001"), (12.3456, "12.346"),
    (99.9999, "100"), (1e20, "100000000000000000000"),
])
def test_format_number(x, text):
    assert format_number(x) == text
    assert "e" not in format_number(x).lower()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "1"])
def test_format_number_rejects(bad):
    with pytest.raises(ValueError):
        format_number(bad)


def test_format_default_answer_exact():
    assert format_mpc_answer(DEFAULT_PARAMS) == DEFAULT_ANSWER
    assert format_mpc_answer({}) == DEFAULT_ANSWER  # a mapping: defaults fill in
    assert list(json.loads(DEFAULT_ANSWER[8:-9])) == list(PARAM_NAMES)


def test_format_with_reasoning():
    text = format_mpc_answer(DEFAULT_PARAMS, "  Keep\nthe defaults. ")
    assert text == "Keep the defaults.\n" + DEFAULT_ANSWER
    assert format_mpc_answer(DEFAULT_PARAMS, "   ") == DEFAULT_ANSWER
    with pytest.raises(ValueError, match="tag"):
        format_mpc_answer(DEFAULT_PARAMS, "see <answer>")


def test_format_rejects_bad_mapping():
    with pytest.raises(ParameterError):
        format_mpc_answer({"qv": 99})
    with pytest.raises(ParameterError):
        format_mpc_answer({"speed": 1})


unit_vectors = st.lists(st.floats(0.0, 1.0), min_size=11, max_size=11)


@given(unit_vectors, st.booleans())
@settings(max_examples=200, deadline=None)
def test_round_trip(u, with_reason):
    values = {s.name: s.low + ui * (s.high - s.low) for s, ui in zip(PARAM_SPECS, u)}  # full precision
    values["v_min"] = min(values["v_min"], values["v_max"])
    params = MPCParams(**values)
    text = format_mpc_answer(params, "Because." if with_reason else None)
    result = parse_mpc_answer(text)
    assert result.failure is None, result.detail
    for name in PARAM_NAMES:
        assert getattr(result.params, name) == pytest.approx(getattr(params, name), abs=5e-4)
    assert format_mpc_answer(result.params) == format_mpc_answer(params)  # stable after one round


@given(unit_vectors)
@settings(max_examples=200, deadline=None)
def test_round_trip_from_unit_vector(u):
    params = MPCParams.from_unit_vector(u)
    result = parse_mpc_answer(format_mpc_answer(params))
    assert result.params is not None, result.detail
    np.testing.assert_allclose(result.params.to_vector(), params.to_vector(), atol=5e-4)


def test_format_decision_answer():
    assert format_decision_answer(True) == "<answer>True</answer>"
    assert format_decision_answer(False) == "<answer>False</answer>"
    assert format_decision_answer(np.bool_(True)) == "<answer>True</answer>"
    with pytest.raises(ValueError):
        format_decision_answer(1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Parsing: successes
# ---------------------------------------------------------------------------------------------
def test_parse_partial_set_takes_defaults():
    r = parse_mpc_answer('Raise qn.\n<answer>{"qn": 60, "v_max": 3.5}</answer>')
    assert r.failure is None and r.detail == "" and r.clamped == () and r.ok
    assert r.params == MPCParams(qn=60, v_max=3.5)


def test_parse_uses_last_complete_block():
    a = '<answer>{"qn": 1}</answer>'
    b = '<answer>{"qn": 2}</answer>'
    assert parse_mpc_answer(a + " then " + b).params.qn == 2
    assert parse_mpc_answer(a + " <answer>{\"qn\": 3").params.qn == 1  # trailing unterminated tag ignored
    assert parse_mpc_answer('<answer>{"qn": 4} <answer>{"qn": 5}</answer>').params.qn == 5
    assert parse_mpc_answer('<answer><answer>{"qn": 6}</answer></answer>').params.qn == 6  # nested tags
    assert parse_mpc_answer(b + "trailing text </answer>").params.qn == 2
    assert parse_mpc_answer('<answer>  \n{"qn": 7}\n </answer>').params.qn == 7


def test_parse_accepts_ints_and_negative_zero():
    r = parse_mpc_answer('<answer>{"a_min": -0, "qv": 0, "qac": 1}</answer>')
    assert r.params == MPCParams(a_min=0.0, qv=0.0, qac=1.0)
    assert isinstance(r.params.qv, float)


def test_clamp():
    r = parse_mpc_answer('<answer>{"qv": 25, "a_min": -30, "qn": 50}</answer>', clamp=True)
    assert r.failure is None
    assert r.params == MPCParams(qv=20, a_min=-20, qn=50)
    assert r.clamped == ("qv", "a_min") and "qv" in r.detail
    huge = parse_mpc_answer('<answer>{"qn": ' + "9" * 400 + "}</answer>", clamp=True)
    assert huge.params.qn == 100 and huge.clamped == ("qn",)
    # clamping cannot repair v_min > v_max
    assert parse_mpc_answer('<answer>{"v_min": 4, "v_max": 20}</answer>', clamp=True).params.v_max == 10
    r = parse_mpc_answer('<answer>{"v_min": 9, "v_max": -5}</answer>', clamp=True)
    assert r.failure is ParseFailure.INCONSISTENT


# ---------------------------------------------------------------------------------------------
# Parsing: one hand-made string per failure reason
# ---------------------------------------------------------------------------------------------
FAILURES = [
    ("", ParseFailure.NO_ANSWER_TAG),
    ('{"qn": 50}', ParseFailure.NO_ANSWER_TAG),
    ('{"qn": 50}</answer>', ParseFailure.NO_ANSWER_TAG),
    ("<ANSWER>{}</ANSWER>", ParseFailure.NO_ANSWER_TAG),  # tags are case-sensitive
    ('<answer>{"qn": 50, "qv"', ParseFailure.UNTERMINATED),
    ('</answer> <answer>{"qn": 50}', ParseFailure.UNTERMINATED),
    ("<answer></answer>", ParseFailure.EMPTY),
    ("<answer> \n\t </answer>", ParseFailure.EMPTY),
    ('<answer>{"qn": 50,}</answer>', ParseFailure.BAD_JSON),
    ("<answer>{'qn': 50}</answer>", ParseFailure.BAD_JSON),
    ('<answer>{"qn": 50} extra</answer>', ParseFailure.BAD_JSON),
    ('<answer>{"qn": 50, "qn": 60}</answer>', ParseFailure.BAD_JSON),  # duplicate name
    ("<answer>" + "[" * 100_000 + "</answer>", ParseFailure.BAD_JSON),  # recursion
    ('<answer>{"qn": ' + "1" * 5000 + "}</answer>", ParseFailure.BAD_JSON),  # beyond int digit limit
    ("<answer>[50, 7]</answer>", ParseFailure.NOT_AN_OBJECT),
    ("<answer>50</answer>", ParseFailure.NOT_AN_OBJECT),
    ('<answer>"qn"</answer>', ParseFailure.NOT_AN_OBJECT),
    ("<answer>null</answer>", ParseFailure.NOT_AN_OBJECT),
    ('<answer>{"speed": 3}</answer>', ParseFailure.UNKNOWN_NAME),
    ('<answer>{"QN": 3}</answer>', ParseFailure.UNKNOWN_NAME),
    ('<answer>{"qn": 3, "qv": "x", "foo": 1}</answer>', ParseFailure.UNKNOWN_NAME),  # names checked first
    ('<answer>{"qn": "50"}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": true}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": null}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": NaN}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": Infinity}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": -Infinity}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": 1e999}</answer>', ParseFailure.BAD_VALUE),  # overflows to inf
    ('<answer>{"qn": {"value": 5}}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": [5]}</answer>', ParseFailure.BAD_VALUE),
    ('<answer>{"qn": 101}</answer>', ParseFailure.OUT_OF_RANGE),
    ('<answer>{"qv": -0.001}</answer>', ParseFailure.OUT_OF_RANGE),
    ('<answer>{"qn": ' + "9" * 400 + "}</answer>", ParseFailure.OUT_OF_RANGE),  # huge int, no float overflow
    ('<answer>{"qn": 1e300}</answer>', ParseFailure.OUT_OF_RANGE),
    ('<answer>{"v_min": 4, "v_max": 3}</answer>', ParseFailure.INCONSISTENT),
    ('<answer>{"v_max": 0.5}</answer>', ParseFailure.INCONSISTENT),  # default v_min = 1 > 0.5
]


@pytest.mark.parametrize("text, reason", FAILURES)
def test_each_failure_reason(text, reason):
    r = parse_mpc_answer(text)
    assert r.failure is reason, r.detail
    assert r.params is None and r.detail and not r.ok
    assert len(r.detail) < 400


def test_failure_details_are_helpful():
    assert "v_min=1 > v_max=0.5" in parse_mpc_answer('<answer>{"v_max": 0.5}</answer>').detail
    assert "defaults" in parse_mpc_answer('<answer>{"v_max": 0.5}</answer>').detail
    assert "'speed'" in parse_mpc_answer('<answer>{"speed": 3}</answer>').detail
    assert "[0, 100]" in parse_mpc_answer('<answer>{"qn": 101}</answer>').detail
    assert "more than once" in parse_mpc_answer('<answer>{"qn": 1, "qn": 1}</answer>').detail


def test_every_reason_is_covered():
    assert {reason for _, reason in FAILURES} == set(ParseFailure)
    assert all(isinstance(r.value, str) and r == r.value for r in ParseFailure)


def test_non_string_input_does_not_raise():
    for bad in (None, 42, b"<answer>True</answer>"):
        assert parse_mpc_answer(bad).failure is ParseFailure.EMPTY  # type: ignore[arg-type]
        assert parse_decision_answer(bad).failure is ParseFailure.EMPTY  # type: ignore[arg-type]


def test_extract_answer_block():
    assert extract_answer_block("a <answer>x</answer> b") == ("x", None, "")
    assert extract_answer_block("no tags")[1] is ParseFailure.NO_ANSWER_TAG


# ---------------------------------------------------------------------------------------------
# Property-based fuzzing: the parser never raises and returns exactly one of value / failure
# ---------------------------------------------------------------------------------------------
def _check_mpc(text: str, clamp: bool = False) -> MPCParse:
    r = parse_mpc_answer(text, clamp=clamp)
    assert isinstance(r, MPCParse)
    assert (r.params is None) != (r.failure is None)
    assert r.failure is None or isinstance(r.failure, ParseFailure)
    assert isinstance(r.detail, str) and isinstance(r.clamped, tuple)
    if r.params is not None:
        assert isinstance(r.params, MPCParams)
        assert all(math.isfinite(x) for x in r.params.to_vector())
    return r


def _check_decision(text: str) -> DecisionParse:
    r = parse_decision_answer(text)
    assert (r.value is None) != (r.failure is None)
    assert r.value is None or isinstance(r.value, bool)
    return r


tag_soup = st.lists(st.sampled_from(["<answer>", "</answer>", "{", "}", '"qn"', ":", ",", "1", "-", ".", "e9",
                                     "NaN", "true", "[", "]", " ", "\n", '"v_min"', '"v_max"', "True", "x"]),
                    max_size=40).map("".join)


@pytest.mark.slow
@given(st.one_of(st.text(), tag_soup), st.booleans())
@settings(max_examples=500, deadline=None)
def test_fuzz_arbitrary_text(text, clamp):
    _check_mpc(text, clamp)
    _check_decision(text)
    _check_mpc(f"<answer>{text}</answer>", clamp)
    _check_decision(f"<answer>{text}</answer>")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@given(st.dictionaries(st.sampled_from(PARAM_NAMES + ("speed", "QV", "")), json_values, max_size=12), st.booleans())
@settings(max_examples=200, deadline=None)
def test_fuzz_json_objects(obj, clamp):
    r = _check_mpc("<answer>" + json.dumps(obj) + "</answer>", clamp)
    if r.params is not None:  # accepted: every value a finite number of a known name
        assert all(k in PARAM_NAMES and isinstance(v, (int, float)) and not isinstance(v, bool)
                   for k, v in obj.items())


def _mutate(data: st.DataObject, text: str) -> str:
    op = data.draw(st.sampled_from(["truncate", "delete", "insert", "swap_names", "huge", "nan", "nested",
                                    "duplicate_tags", "duplicate_key", "replace_number"]))
    if not text:  # an earlier truncation left nothing to mutate
        return text
    if op == "truncate":
        return text[:data.draw(st.integers(0, len(text)))]
    if op == "delete":
        i = data.draw(st.integers(0, len(text) - 1))
        return text[:i] + text[i + 1:]
    if op == "insert":
        i = data.draw(st.integers(0, len(text)))
        return text[:i] + data.draw(st.text(min_size=1, max_size=5)) + text[i:]
    if op == "swap_names":
        a, b = data.draw(st.lists(st.sampled_from(PARAM_NAMES), min_size=2, max_size=2, unique=True))
        return text.replace(f'"{a}"', "\0").replace(f'"{b}"', f'"{a}"').replace("\0", f'"{b}"')
    if op == "huge":
        name = data.draw(st.sampled_from(PARAM_NAMES))
        big = data.draw(st.sampled_from(["1e308", "-1e400", "9" * 50, "-" + "9" * 5000, "1" + "0" * 4000]))
        return text.replace(f'"{name}": ', f'"{name}": {big}, "_":', 1) if data.draw(st.booleans()) \
            else _set_value(text, name, big)
    if op == "nan":
        return _set_value(text, data.draw(st.sampled_from(PARAM_NAMES)), data.draw(
            st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "null", "true", '"5"'])))
    if op == "nested":
        return _set_value(text, data.draw(st.sampled_from(PARAM_NAMES)), '{"x": [1, {"y": 2}]}')
    if op == "duplicate_tags":
        return data.draw(st.sampled_from([text + text, "<answer>" + text, text + "</answer>",
                                          text.replace("<answer>", "<answer><answer>"), text + "<answer>"]))
    if op == "duplicate_key":
        name = data.draw(st.sampled_from(PARAM_NAMES))
        return text.replace("{", '{"' + name + '": 1, ', 1)
    return _set_value(text, data.draw(st.sampled_from(PARAM_NAMES)),
                      repr(data.draw(st.floats(allow_nan=False, allow_infinity=False))))


def _set_value(text: str, name: str, value: str) -> str:
    head, sep, tail = text.partition(f'"{name}": ')
    if not sep:
        return text
    ends = [i for i in (tail.find(","), tail.find("}")) if i >= 0]
    if not ends:  # a truncated answer: the value runs to the end of the text
        return head + sep + value
    return head + sep + value + tail[min(ends):]


@given(unit_vectors, st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_valid_answers(u, data):
    text = format_mpc_answer(MPCParams.from_unit_vector(u), data.draw(st.sampled_from([None, "Reason."])))
    for _ in range(data.draw(st.integers(1, 3))):
        text = _mutate(data, text)
    _check_mpc(text, data.draw(st.booleans()))
    _check_decision(text)


# ---------------------------------------------------------------------------------------------
# Decision answers and failure counts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("<answer>True</answer>", True), ("<answer>False</answer>", False), ("<answer> true \n</answer>", True),
    ("<answer>FALSE</answer>", False), ("The car weaves.\n<answer>tRuE</answer>", True),
    ("<answer>True</answer><answer>False</answer>", False),
])
def test_parse_decision_ok(text, value):
    r = parse_decision_answer(text)
    assert r.value is value and r.failure is None and r.ok


@pytest.mark.parametrize("text, reason", [
    ("True", ParseFailure.NO_ANSWER_TAG), ("<answer>True", ParseFailure.UNTERMINATED),
    ("<answer> </answer>", ParseFailure.EMPTY), ("<answer>yes</answer>", ParseFailure.BAD_VALUE),
    ("<answer>1</answer>", ParseFailure.BAD_VALUE), ("<answer>True False</answer>", ParseFailure.BAD_VALUE),
    ("<answer>Truee</answer>", ParseFailure.BAD_VALUE),
])
def test_parse_decision_failures(text, reason):
    r = parse_decision_answer(text)
    assert r.value is None and r.failure is reason and r.detail


def test_decision_round_trip():
    for label in (True, False):
        assert parse_decision_answer(format_decision_answer(label)).value is label


def test_count_failures():
    parses = [parse_mpc_answer(t) for t in ("", "x", DEFAULT_ANSWER, "<answer>{}</answer>", "<answer>[]</answer>")]
    parses += [parse_decision_answer(t) for t in ("<answer>maybe</answer>", "<answer>True</answer>")]
    assert count_failures(parses) == {"no_answer_tag": 2, "not_an_object": 1, "bad_value": 1}
    assert list(count_failures(parses)) == ["no_answer_tag", "not_an_object", "bad_value"]  # enum order
    assert count_failures([parse_mpc_answer(DEFAULT_ANSWER)]) == {}
    assert count_failures(iter([])) == {}


def test_answer_choice_is_what_an_answer_decides_without_its_numbers():
    reverse = 'Reason: drive backwards.\n<answer>{"v_max": -1, "a_min": -16.3, "v_min": -1}</answer>'
    assert answer_choice(reverse) == ("a_min", "v_max", "v_min")  # sorted names, numbers dropped
    assert answer_choice('<answer>{"a_min": -2, "v_min": -3, "v_max": -0.5}</answer>') == answer_choice(reverse)
    assert answer_choice('<answer>{"a_max": 10.7, "v_max": 2.31}</answer>') != answer_choice(reverse)
    assert answer_choice("<answer>{\"v_max\": 99}</answer>") == ("v_max",)  # out of range: still that choice
    assert answer_choice("<answer>True</answer>") is True and answer_choice("<answer> false </answer>") is False
    for unparsed in ("no tags", "<answer>{\"v_max\": 2", "<answer>{\"speed\": 2}</answer>", "<answer>maybe</answer>",
                     '<answer>{"v_min": 3, "v_max": 1}</answer>'):
        assert answer_choice(unparsed) is None, unparsed
