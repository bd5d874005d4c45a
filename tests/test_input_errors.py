"""Malformed user input through the command lines and the script loader (issue 15, items 6 and 10):
one bounded line naming the file (and field), exit 2, never a traceback; terminal output escaped."""

import json

import pytest

from edge_runtime.runtime.cli import _print_summary
from edge_runtime.runtime.cli import main as edge_run
from edge_runtime.runtime.scenario import ScriptError, load_script, parse_script
from edge_runtime.tasks.cli import main as edge_task


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and len(err) < 1000, err[:2000]
    for needle in needles:
        assert needle in err, err
    return err


def test_edge_run_params_that_is_a_directory(tmp_path, capsys):
    assert edge_run(["--params", str(tmp_path), "--duration", "1", "--fast", "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, str(tmp_path), "is a directory")


def test_edge_task_eval_params_that_is_a_directory(tmp_path, capsys):
    argv = ["eval", "--instruction", "drive on the centre line", "--params", str(tmp_path), "--duration", "1"]
    assert edge_task(argv) == 2
    _one_line_error(capsys, str(tmp_path), "is a directory")


@pytest.mark.parametrize("text,needles", [
    ("[" * 100_000 + "]" * 100_000, ["nested deeper than"]),
    ('{"qn": 1, "qn": 2}', ["'qn' appears more than once"]),
    ('{"qv": ' + "7" * 5000 + "}", ["field 'qv'", "5000 characters"]),
    (json.dumps({f"k{i}": 0 for i in range(100_000)}), ["'k0', 'k1'", "(100000 in all)"]),
])
def test_edge_run_and_edge_task_malformed_params_files(tmp_path, capsys, text, needles):
    path = tmp_path / "p.json"
    path.write_text(text)
    assert edge_run(["--params", str(path), "--duration", "1", "--fast", "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, str(path), *needles)
    assert edge_task(["eval", "--instruction", "drive at 2 m/s", "--params", str(path), "--duration", "1"]) == 2
    _one_line_error(capsys, str(path), *needles)


def test_edge_run_non_utf8_params_file(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_bytes(b'{"qn": 40, "v_max": "\xff"}')
    assert edge_run(["--params", str(path), "--duration", "1", "--fast", "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, str(path), "not UTF-8")


@pytest.mark.parametrize("text,needles", [
    ("[" * 100_000 + "]" * 100_000, ["nested deeper than"]),
    ('[{"t": 1' + "0" * 400 + ', "instruction": "Drive smoothly."}]', ["field '[0].t'", "401 characters"]),
    ('[{"t": 0, "t": 1, "instruction": "Drive smoothly."}]', ["'t' appears more than once"]),
])
def test_malformed_json_scripts(tmp_path, capsys, text, needles):
    path = tmp_path / "script.json"
    path.write_text(text)
    with pytest.raises(ScriptError) as info:
        load_script(path)
    assert str(path) in str(info.value) and len(str(info.value)) < 1000
    # edge-run reads the script before it opens the model, so a missing model is never reached
    argv = ["--model", str(tmp_path / "absent.onnx"), "--script", str(path), "--fast", "--out", str(tmp_path / "r")]
    assert edge_run(argv) == 2
    _one_line_error(capsys, str(path), *needles)


def test_script_time_too_large_for_a_float_is_a_script_error():
    with pytest.raises(ScriptError, match="must be finite"):
        parse_script('[{"t": 1e400, "instruction": "Drive smoothly."}]', "s.json")
    from edge_runtime.runtime.scenario import _entry

    with pytest.raises(ScriptError, match="time inf s must be finite"):
        _entry("lib", "lib: entry 1", 10 ** 400, "Drive smoothly.")


def test_script_directory_and_non_utf8(tmp_path):
    with pytest.raises(ScriptError, match="is a directory"):
        load_script(tmp_path)
    path = tmp_path / "s.txt"
    path.write_bytes(b"0, Drive at 2 m/s \xe9\n")
    with pytest.raises(ScriptError, match=r"s.txt: the script file is not UTF-8 text"):
        load_script(path)


def test_an_unclassifiable_huge_instruction_gives_a_bounded_line():
    with pytest.raises(ScriptError) as info:
        parse_script("0, " + "blah " * 100_000, "s.txt")
    assert len(str(info.value)) < 1000


def test_loads_bounded_accepts_ordinary_json():
    from edge_runtime.contracts.user_input import UserInputError, loads_bounded

    assert loads_bounded('{"a": [1, 2.5, -3e-2], "b": {"c": null}}') == {"a": [1, 2.5, -0.03], "b": {"c": None}}
    with pytest.raises(UserInputError, match=r"<x>: not valid JSON \(Expecting value at line 1"):
        loads_bounded("[", "<x>")


def test_escape_sequences_from_an_instruction_are_escaped_in_the_table(capsys):
    instruction = "Drive at 2 m/s.\x1b[2J\x1b]0;pwned\x07"
    stat = {"p50": 0.001, "p90": 0.001, "p99": 0.001, "max": 0.001, "warmup_excluded": 5}
    summary = {"exec_time": stat, "mpc_solve_time": stat, "realtime": False, "steps": 10, "rate_hz": 20.0,
               "sim_time": 0.5, "laps": 0.0, "crashed": False, "overruns": 0, "dropped_steps": 0, "mpc_failures": 0,
               "rss": 2**20, "peak_rss": 2**20,
               "windows": [{"window": 0, "t_start": 0.0, "category": "reference_velocity", "llm": "applied",
                            "error": 0.1, "default_error": 0.2, "improvement": 0.5, "crashed": False,
                            "stalled": False, "instruction": instruction}]}
    _print_summary(summary)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "Drive at 2 m/s.\\x1b[2J\\x1b]0;pwned\\x07" in out
    from edge_runtime.contracts.user_input import printable

    assert printable("a\nb\x9bc") == "a\\nb\\x9bc"


def test_provider_typo_is_refused_naming_the_choices(tmp_path, capsys):
    assert edge_run(["--model", str(tmp_path / "m.onnx"), "--provider", "cdua", "--out", str(tmp_path / "r")]) == 2
    err = _one_line_error(capsys, "--provider", "invalid choice: 'cdua'")
    for choice in ("cpu", "cuda", "tensorrt", "auto"):
        assert f"'{choice}'" in err


@pytest.mark.slow
@pytest.mark.parametrize("eos,needle", [('"x"', "'eos_id' must be a token id"), ("1" * 5000, "5000 characters")])
def test_model_metadata_eos_id_that_is_not_a_token_id_names_file_and_field(tmp_path, capsys, eos, needle):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from onnx_fixtures import build_tiny_onnx, with_metadata

    def bad_eos(props):
        generation = json.loads(props["edge_runtime.generation"])
        props["edge_runtime.generation"] = json.dumps(generation).replace(f'"eos_id": {generation["eos_id"]}',
                                                                          f'"eos_id": {eos}')

    path = with_metadata(build_tiny_onnx(tmp_path / "m"), tmp_path / "bad_eos.onnx", bad_eos)
    assert edge_run(["--model", str(path), "--instruction", "Drive at 2 m/s.", "--fast", "--duration", "1",
                     "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, str(path), "metadata field 'edge_runtime.generation'", needle)


def test_oracle_table_file_is_read_with_the_bounded_loader(tmp_path):
    from edge_runtime.tasks.oracle_table import OracleTable

    path = tmp_path / "table.json"
    path.write_text('{"entries": {}, "entries": {}}')
    with pytest.raises(ValueError, match=r"table.json: key 'entries' appears more than once"):
        OracleTable.load(path)
