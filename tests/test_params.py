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


# -- malformed parameter files (issue 15, item 6): one bounded line naming the file and field ----------


def _refused(path, pattern):
    with pytest.raises(ParameterError, match=pattern) as info:
        MPCParams.from_json_file(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 1000
    return message


def test_params_nested_100k_deep_is_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    _refused(path, "nested deeper than")


def test_params_file_that_is_a_directory_is_refused(tmp_path):
    _refused(tmp_path, "is a directory")


def test_duplicate_keys_are_refused_like_the_answer_parser(tmp_path):
    from edge_runtime.tasks.answers import ParseFailure, parse_mpc_answer

    path = tmp_path / "dup.json"
    path.write_text('{"qn": 40, "qn": 60}')
    _refused(path, "key 'qn' appears more than once")
    assert parse_mpc_answer('<answer>{"qn": 40, "qn": 60}</answer>').failure is ParseFailure.BAD_JSON


def test_many_unknown_keys_give_a_bounded_line(tmp_path):
    path = tmp_path / "many.json"
    path.write_text(json.dumps({f"k{i}": 1 for i in range(200_000)}))
    message = _refused(path, r"unknown parameter name\(s\) 'k0', 'k1', 'k2', 'k3', 'k4', \.\.\. \(200000 in all\)")
    assert "valid names: qv" in message
    with pytest.raises(ParameterError) as info:  # the library path too: 2M names, a short line
        MPCParams.from_mapping(dict.fromkeys((f"k{i}" for i in range(2_000_000)), 1))
    assert len(str(info.value)) < 1000 and "(2000000 in all)" in str(info.value)


@pytest.mark.slow
def test_a_23_mb_params_file_is_refused_by_size(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({f"key{i}": 1 for i in range(2_000_000)}))
    _refused(path, "larger than 8 MiB")


def test_non_utf8_params_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"qn": 40, "v_max": 3} # caf\xe9'.encode("latin-1"))
    _refused(path, r"not UTF-8 text \(byte 0xe9 at offset 28\)")


def test_a_5000_digit_number_names_the_file_and_field(tmp_path):
    path = tmp_path / "long.json"
    path.write_text('{"qn": 40, "v_max": ' + "9" * 5000 + "}")
    _refused(path, r"field 'v_max': the number '9999.* has 5000 characters \(at most 40\)")


def test_huge_values_from_the_library_give_a_line_not_an_overflow():
    with pytest.raises(ParameterError, match=r"qv=inf is outside its range"):
        MPCParams.from_mapping({"qv": 10 ** 400})
    assert MPCParams.from_mapping({"qv": 10 ** 400}, clamp=True) == (MPCParams(qv=20.0), ["qv"])
    with pytest.raises(ParameterError) as info:
        MPCParams.from_mapping({"qv": "x" * 100_000})
    assert len(str(info.value)) < 200
