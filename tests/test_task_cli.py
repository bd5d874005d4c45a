"""edge-task: the split's track and instructions reach the oracle table; tracks list their split;
every flag says its default."""

import json

import pytest

from edge_runtime.tasks import cli


def test_tracks_name_their_split(capsys):
    assert cli.main(["tracks"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert rows == {"oval": "train", "hairpin": "validation", "esses": "test"}


@pytest.mark.parametrize("split, track, n_instructions", [("test", "esses", 70), ("validation", "hairpin", 20),
                                                          ("train", "oval", 13)])
def test_oracle_table_uses_the_split_instructions_and_track(monkeypatch, tmp_path, split, track, n_instructions):
    import edge_runtime.tasks.oracle_table as oracle_table

    seen = {}

    def fake_build(eval_config, oracle_config, instructions, progress=print):
        seen.update(track=eval_config.track, n=len(instructions), workers=oracle_config.workers)
        return {"eval_config": eval_config.to_dict(), "entries": {}, "wall_time_s": 0.0}
    monkeypatch.setattr(oracle_table, "build_table", fake_build)
    out = tmp_path / "t.json"
    assert cli.main(["oracle-table", "--split", split, "--workers", "1", "--out", str(out)]) == 0
    assert seen == {"track": track, "n": n_instructions, "workers": 1}
    assert json.loads(out.read_text())["split"] == split


def test_every_flag_has_help_with_its_default():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "eval" in a.choices).choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            assert "``" not in action.help
            if not action.required:
                assert "default" in action.help, (name, action.dest)
