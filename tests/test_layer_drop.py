"""Depth pruning (the BPF comparison's smaller dense model): which layers are kept, the parameter budget,
and a layer-dropped model that equals the same layers run by hand, generates with its KV cache, saves,
loads and comes out of ``edge-train drop-layers``."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edge_runtime.model.build import build_model, preset_spec
from edge_runtime.model.io import load_model, save_model
from edge_runtime.model.spec import spec_from_model
from edge_runtime.prune import PruneConfig, PruneError, prunable_parameters
from edge_runtime.prune.layer_drop import drop_layers, evenly_spaced_layers, layers_for_parameter_budget
from edge_runtime.train.cli import main as train_main

VOCAB = 64


def spec(n_layers: int = 6, family: str = "llama-4m"):
    return preset_spec(family, vocab_size=VOCAB, num_layers=n_layers)


@pytest.mark.parametrize("n, keep, expected", [(30, 16, [0, 2, 4, 6, 8, 10, 12, 14, 15, 17, 19, 21, 23, 25, 27, 29]),
                                               (6, 3, [0, 2, 5]), (6, 6, [0, 1, 2, 3, 4, 5]), (6, 1, [0]),
                                               (6, 2, [0, 5])])
def test_kept_layers_are_first_last_and_evenly_spaced(n, keep, expected):
    assert evenly_spaced_layers(n, keep) == expected


@pytest.mark.parametrize("keep", [0, 7, -1])
def test_impossible_layer_counts_are_refused(keep):
    with pytest.raises(PruneError, match="cannot keep"):
        evenly_spaced_layers(6, keep)


def test_parameter_budget_picks_the_closest_depth():
    s = spec(8)
    one = layers_for_parameter_budget(s, 0)
    assert one == 1
    assert layers_for_parameter_budget(s, s.num_parameters()) == 8
    # the pruned-to-50 % count of this model: half the prunable parameters of the 6 middle layers removed
    target = s.num_parameters() - 0.5 * prunable_parameters(s, PruneConfig())
    k = layers_for_parameter_budget(s, target)
    model = build_model(s, seed=0)
    drop_layers(model, evenly_spaced_layers(8, k))
    got = spec_from_model(model).num_parameters()
    for other in (k - 1, k + 1):  # no other depth is closer
        m = build_model(s, seed=0)
        drop_layers(m, evenly_spaced_layers(8, other))
        assert abs(got - target) <= abs(spec_from_model(m).num_parameters() - target)


@pytest.mark.parametrize("family", ["llama-4m", "qwen2-1m"])
def test_dropped_model_is_the_kept_layers_run_in_order(family):
    torch.manual_seed(0)
    model = build_model(spec(6, family), seed=0).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    keep = [0, 2, 5]
    with torch.no_grad():  # the reference: the full model with the dropped layers skipped by hand
        layers = model.model.layers
        model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = i
        model.config.num_hidden_layers = 3
        expected = model(input_ids=ids).logits.clone()
    fresh = build_model(spec(6, family), seed=0).eval()
    drop_layers(fresh, keep)
    with torch.no_grad():
        got = fresh(input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    assert [layer.self_attn.layer_idx for layer in fresh.model.layers] == [0, 1, 2]
    assert spec_from_model(fresh).num_layers == 3


def test_generation_with_the_kv_cache_matches_the_full_forward():
    model = build_model(spec(6), seed=1).eval()
    drop_layers(model, [0, 3, 5])
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)
        seq = out[0].tolist()
        # greedy without the cache: each new token is the argmax of a full forward over the prefix
        for t in range(5, len(seq)):
            prefix = torch.tensor([seq[:t]])
            assert int(model(input_ids=prefix).logits[0, -1].argmax()) == seq[t]


@pytest.mark.parametrize("keep", [[], [0, 0], [2, 1], [0, 6], [-1, 2]])
def test_bad_layer_lists_are_refused(keep):
    with pytest.raises(PruneError, match="strictly increasing"):
        drop_layers(build_model(spec(6), seed=0), keep)


def test_cli_writes_a_loadable_smaller_model_with_its_record(tmp_path, capsys):
    src = tmp_path / "src"
    save_model(build_model(spec(6), seed=0), src)
    out = tmp_path / "small"
    assert train_main(["drop-layers", "--init-from", str(src), "--out", str(out), "--keep-layers", "3"]) == 0
    model, s = load_model(out)
    assert s.num_layers == 3
    meta = json.loads((out / "edge_runtime_meta.json").read_text())["metadata"]["layer_drop"]
    assert meta["kept_layers"] == [0, 2, 5] and meta["source_layers"] == 6
    assert meta["parameters"] == s.num_parameters()
    # --match-params with an arch spec: the closest depth to that spec's parameter count
    out2 = tmp_path / "small2"
    assert train_main(["drop-layers", "--init-from", str(src), "--out", str(out2), "--match-params",
                       str(out / "arch_spec.json")]) == 0
    assert load_model(out2)[1].num_layers == 3


@pytest.mark.parametrize("args, needle", [(["--keep-layers", "9"], "cannot keep 9 of 6"),
                                          (["--match-params", "nope.json"], "--match-params nope.json")])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    src = tmp_path / "src"
    save_model(build_model(spec(6), seed=0), src)
    assert train_main(["drop-layers", "--init-from", str(src), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
