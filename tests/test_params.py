import json

import pytest

from edge_runtime.control.params import (DEFAULT_PARAMS, PARAM_NAMES, PARAM_SPECS, MPCParams, ParameterError,
                                         parameter_table_markdown)


def test_defaults_match_the_table_and_lie_in_range():
    assert len(PARAM_SPECS) == 11
    for spec in PARAM_SPECS:
        assert getattr(DEFAULT_PARAMS, spec.name) == spec.default
        assert spec.low <= spec.default <= spec.high


@pytest.mark.parametrize("name,value", [("qn", 101.0), ("qv", -0.1), ("a_min", 0.5), ("v_max", 10.5),
                                        ("track_safety_margin", 1.2)])
def test_out_of_range_is_rejected_with_name_and_range(name, value):
    with pytest.raises(ParameterError, match=rf"{name}=.*outside its range \["):
        MPCParams(**{name: value})


def test_clamp_policy_reports_clamped_names():
    params, clamped = MPCParams.from_mapping({"qn": 500, "v_max": 3.0}, clamp=True)
    assert params.qn == 100.0 and params.v_max == 3.0 and clamped == ["qn"]


@pytest.mark.parametrize("bad", [{"speed": 3}, {"qn": "fast"}, {"qn": float("nan")}, {"qn": True},
                                 {"v_min": 4.0, "v_max": 2.0}])
def test_bad_sets_are_errors(bad):
    with pytest.raises(ParameterError):
        MPCParams.from_mapping(bad)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ParameterError, match="unknown parameter name.*'speed'.*valid names: qv"):
        MPCParams.from_mapping({"speed": 3})


def test_partial_mapping_takes_defaults():
    params, _ = MPCParams.from_mapping({"qn": 50})
    assert params.qn == 50 and params.qalpha == DEFAULT_PARAMS.qalpha


def test_unit_vector_round_trip_and_repair():
    u = DEFAULT_PARAMS.to_unit_vector()
    assert MPCParams.from_unit_vector(u) == DEFAULT_PARAMS
    weird = MPCParams.from_unit_vector([1.0] * 8 + [1.0, 0.0, 0.5])  # v_min above v_max -> repaired
    assert weird.v_min <= weird.v_max


def test_json_file_errors_name_the_file(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"qn": 40}))
    assert MPCParams.from_json_file(good).qn == 40
    broken = tmp_path / "broken.json"
    broken.write_text("{qn: 40")
    with pytest.raises(ParameterError, match="broken.json: not valid JSON"):
        MPCParams.from_json_file(broken)
    with pytest.raises(ParameterError, match="missing.json: parameter file not found"):
        MPCParams.from_json_file(tmp_path / "missing.json")
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"qn": 400}))
    with pytest.raises(ParameterError, match="out.json: parameter qn=400"):
        MPCParams.from_json_file(out)


def test_table_lists_every_parameter():
    table = parameter_table_markdown()
    for name in PARAM_NAMES:
        assert f"`{name}`" in table
