"""Structural pruning: importance scores, exact surgery, GQA integrity, ratio planning, and a
pruned model that saves, loads, generates and keeps training."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.model.build import build_model, preset_spec
from edge_runtime.model.io import load_model, save_model
from edge_runtime.contracts.arch_spec import LayerSpec
from edge_runtime.model.spec import spec_from_model
from edge_runtime.prune import (
    PruneConfig,
    compute_importance,
    prunable_layer_indices,
    prunable_parameters,
    prune_layer,
    prune_to_ratio,
)
from edge_runtime.train.sft import OptimConfig, answer_loss, make_optimizer

VOCAB = 64


def qwen_spec(**kw):
    return preset_spec("qwen2-1m", vocab_size=VOCAB, num_layers=4, **kw)


def llama_spec(**kw):
    return preset_spec("llama-4m", vocab_size=VOCAB, num_layers=4, **kw)


SPECS = {"qwen2": qwen_spec, "llama": llama_spec}


def make_batch(seed: int = 0, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    """A collate()-style batch: the first half of each row is prompt (label -100)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=gen)
    labels = ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def projections(layer):
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]


def check_gqa(model):
    spec = spec_from_model(model)  # raises on inconsistent shapes / num_key_value_groups
    for layer, ls in zip(model.model.layers, spec.layers):
        assert ls.num_q_heads % ls.num_kv_heads == 0
        assert layer.self_attn.num_key_value_groups == ls.num_q_heads // ls.num_kv_heads
    return spec


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, field", [
    ({"importance": "fisher"}, "importance"), ({"scope": "everywhere"}, "scope"),
    ({"head_mode": "kv"}, "head_mode"), ({"keep_first": -1}, "keep_first"), ({"keep_last": 1.5}, "keep_last"),
    ({"round_to": 0}, "round_to"), ({"round_to": True}, "round_to"), ({"prune_attention": "yes"}, "prune_attention"),
    ({"prune_mlp": 1}, "prune_mlp"), ({"seed": 1.0}, "seed"),
    ({"prune_attention": False, "prune_mlp": False}, "prune_attention"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"PruneConfig.{field}"):
        PruneConfig(**kwargs)


def test_prunable_parameters_count_the_projections_of_the_prunable_layers():
    spec = qwen_spec()
    # hand count, qwen2-1m: q 4*32*128 + 128 bias, k/v 2*(2*32*128 + 64), o 128*128, MLP 3*128*384
    per_layer = (16384 + 128) + 2 * (8192 + 64) + 16384 + 3 * 128 * 384
    assert prunable_parameters(spec, PruneConfig()) == 2 * per_layer
    assert prunable_parameters(spec, PruneConfig(keep_first=0, keep_last=0)) == 4 * per_layer
    assert prunable_parameters(spec, PruneConfig(prune_attention=False)) == 2 * 3 * 128 * 384
    assert prunable_layer_indices(4, PruneConfig(keep_first=2, keep_last=2)) == ()
    for spec in (qwen_spec(), llama_spec(attention_bias=True)):  # llama with bias: o_proj bias counted too
        model = build_model(spec)
        counted = sum(p.numel() for i in (1, 2) for lin in projections(model.model.layers[i])
                      for p in lin.parameters())
        assert prunable_parameters(spec, PruneConfig()) == counted


# ------------------------------------------------------------------------- importance
def hand_unit_scores(layer, grads, d):
    """|W * grad| summed per unit, written out with explicit slices (independent of the code)."""
    a, m = layer.self_attn, layer.mlp
    e = {name: (p.detach() * grads[name]).abs() for name, p in layer.named_parameters() if name in grads}
    nq, nkv = a.q_proj.out_features // d, a.k_proj.out_features // d
    g = nq // nkv
    heads = []
    for h in range(nq):
        rows = slice(h * d, (h + 1) * d)
        heads.append(float(e["self_attn.q_proj.weight"][rows].sum() + e["self_attn.q_proj.bias"][rows].sum()
                           + e["self_attn.o_proj.weight"][:, rows].sum()))
    groups = []
    for k in range(nkv):
        rows = slice(k * d, (k + 1) * d)
        kv = sum(float(e[f"self_attn.{p}_proj.{w}"][rows].sum()) for p in "kv" for w in ("weight", "bias"))
        groups.append(kv + sum(heads[k * g:(k + 1) * g]))
    channels = [float(e["mlp.gate_proj.weight"][c].sum() + e["mlp.up_proj.weight"][c].sum()
                      + e["mlp.down_proj.weight"][:, c].sum()) for c in range(m.gate_proj.out_features)]
    return torch.tensor(heads), torch.tensor(groups), torch.tensor(channels)


def test_taylor_importance_matches_a_hand_computation_and_leaves_training_state_alone():
    spec = qwen_spec()
    model = build_model(spec, seed=3).train()
    batches = [make_batch(0), make_batch(1)]
    layer = model.model.layers[1]
    names = [n for n, _ in layer.named_parameters() if "proj" in n]
    params = [dict(layer.named_parameters())[n] for n in names]
    model.eval()
    mean_loss = sum(answer_loss(model, b) for b in batches) / len(batches)
    grads = dict(zip(names, torch.autograd.grad(mean_loss, params)))
    model.train()
    # pretend we are mid-training: existing grads and a frozen embedding must survive
    sentinel = {id(p): torch.full_like(p, 7.0) for p in model.parameters()}
    for p in model.parameters():
        p.grad = sentinel[id(p)]
    model.model.embed_tokens.weight.requires_grad_(False)

    imp = compute_importance(model, batches, answer_loss, cfg=PruneConfig(importance="taylor"))

    heads, groups, channels = hand_unit_scores(layer, grads, spec.head_dim)
    li = imp.layers[1]
    assert imp.kind == "taylor" and imp.num_batches == 2 and len(imp.layers) == 4
    assert li.heads.shape == (4,) and li.kv_groups.shape == (2,) and li.channels.shape == (384,)
    torch.testing.assert_close(li.heads, heads, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(li.kv_groups, groups, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(li.channels, channels, rtol=1e-4, atol=1e-9)
    assert model.training
    assert not model.model.embed_tokens.weight.requires_grad
    for p in model.parameters():
        assert p.grad is sentinel[id(p)] and bool((p.grad == 7.0).all())


def test_magnitude_and_random_importance():
    model = build_model(llama_spec(), seed=1)
    imp = compute_importance(model, cfg=PruneConfig(importance="magnitude"))
    mlp = model.model.layers[2].mlp
    c = 5
    expected = (mlp.gate_proj.weight[c].detach().abs().sum() + mlp.up_proj.weight[c].detach().abs().sum()
                + mlp.down_proj.weight[:, c].detach().abs().sum())
    assert float(imp.layers[2].channels[c]) == pytest.approx(float(expected), rel=1e-5)
    r1 = compute_importance(model, cfg=PruneConfig(importance="random", seed=4))
    r2 = compute_importance(model, cfg=PruneConfig(importance="random", seed=4))
    r3 = compute_importance(model, cfg=PruneConfig(importance="random", seed=5))
    assert torch.equal(r1.layers[1].channels, r2.layers[1].channels)
    assert not torch.equal(r1.layers[1].channels, r3.layers[1].channels)
    with pytest.raises(ValueError, match="calibration batches"):
        compute_importance(model, loss_fn=answer_loss, cfg=PruneConfig(importance="taylor"))
    with pytest.raises(ValueError, match="needs a loss function: pass loss_fn"):
        compute_importance(model, [make_batch()], cfg=PruneConfig(importance="taylor"))



class _ReachedTheLoss(Exception):
    pass


def test_taylor_scores_move_every_batch_to_the_models_device():
    """A trainer may have moved the model to CUDA while the calibration batches were built on the
    CPU (train.bpf.calibration_batches): the Taylor path must hand the loss each batch on the
    model's device. A model on the meta device stands in for the GPU, so this runs on any
    machine; the loss stops the scoring once it has seen where the batches are."""
    model = build_model(qwen_spec(), seed=0).to("meta")
    seen = []

    def loss_fn(m, batch):
        assert m is model
        seen.append({k: v.device.type for k, v in batch.items()})
        raise _ReachedTheLoss

    with pytest.raises(_ReachedTheLoss):
        compute_importance(model, [make_batch()], loss_fn, PruneConfig(importance="taylor"))
    assert seen == [{"input_ids": "meta", "labels": "meta", "attention_mask": "meta"}]
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # restored after the error


def test_prune_imports_nothing_from_train():
    """prune/ sits below train/: the loss of the Taylor scores comes in as an argument."""
    import ast
    from pathlib import Path

    import edge_runtime.prune as prune_pkg

    offenders = []
    for path in Path(prune_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                if name.startswith("..train") or name.startswith("edge_runtime.train"):
                    offenders.append(f"{path.name}: {name}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("edge_runtime.train")]
    assert not offenders, offenders

# ---------------------------------------------------------------------------- surgery
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_removing_zeroed_units_leaves_logits_unchanged(family):
    spec = SPECS[family](attention_bias=True)  # llama: o_proj bias is copied as is
    model = build_model(spec, seed=2)
    d, g = spec.head_dim, spec.layers[0].gqa_ratio
    nq, nkv, inter = spec.layers[0].num_q_heads, spec.layers[0].num_kv_heads, spec.layers[0].intermediate_size
    gen = torch.Generator().manual_seed(0)
    dead_channels = {1: torch.randperm(inter, generator=gen)[:40].tolist(),
                     2: torch.randperm(inter, generator=gen)[:24].tolist()}
    # layer 1, query mode: the second head of every KV group; layer 2, group mode: the last KV group
    dead_heads = {1: [k * g + 1 for k in range(nkv)], 2: list(range((nkv - 1) * g, nq))}
    with torch.no_grad():
        for i in (1, 2):
            a, m = model.model.layers[i].self_attn, model.model.layers[i].mlp
            for h in dead_heads[i]:
                a.o_proj.weight[:, h * d:(h + 1) * d] = 0
            m.down_proj.weight[:, dead_channels[i]] = 0
    ids = torch.randint(0, VOCAB, (2, 10), generator=gen)
    before = logits(model, ids)
    keep_first_layer = model.model.layers[0].self_attn.q_proj
    for i, kv in ((1, range(nkv)), (2, range(nkv - 1))):
        q = [h for h in range(nq) if h not in dead_heads[i] and h // g in kv]
        ch = [c for c in range(inter) if c not in dead_channels[i]]
        new = prune_layer(model, i, q, list(kv), ch)
        assert new == LayerSpec(len(q), len(kv), len(ch))
    spec_after = check_gqa(model)
    assert spec_after.layers[1] == LayerSpec(nkv, nkv, inter - 40)
    assert spec_after.layers[2] == LayerSpec(nq - g, nkv - 1, inter - 24)
    assert model.model.layers[0].self_attn.q_proj is keep_first_layer
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=0)


def test_prune_layer_rejects_gqa_violations_and_bad_indices():
    model = build_model(qwen_spec())  # 4 q heads, 2 KV heads: heads 0,1 -> KV 0; heads 2,3 -> KV 1
    ch = list(range(384))
    cases = [
        ((1, [0, 1, 2], [0, 1], ch), "same number"),
        ((1, [0, 1], [1], ch), "belong to KV heads that are removed"),
        ((1, [0, 2], [0], ch), "belong to KV heads that are removed"),
        ((1, [0, 0, 2], [0, 1], ch), "repeats"),
        ((1, [0, 9], [0, 1], ch), "out of range"),
        ((1, [0, 2], [0, 1], []), "empty"),
        ((7, [0, 2], [0, 1], ch), "layer index"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            prune_layer(model, *args)
    q_proj = model.model.layers[1].self_attn.q_proj
    prune_layer(model, 1, [3, 2, 1, 0], [1, 0], ch)  # everything kept, any order: a no-op
    assert model.model.layers[1].self_attn.q_proj is q_proj


# ---------------------------------------------------------------------------- planner
@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("mode", ["query", "group"])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_prune_to_ratio_shapes_spec_and_achieved_ratio(family, scope, mode, ratio):
    spec = SPECS[family]()
    model = build_model(spec, seed=0)
    cfg = PruneConfig(scope=scope, head_mode=mode, importance="taylor" if family == "qwen2" else "magnitude")
    first, last = model.model.layers[0].mlp.up_proj, model.model.layers[3].self_attn.k_proj
    report = prune_to_ratio(model, ratio, spec, cfg, batches=[make_batch()], loss_fn=answer_loss)
    after = check_gqa(model)
    assert report.spec_after == after.to_dict() and report.spec_before == spec.to_dict()
    assert after.layers[0] == spec.layers[0] and after.layers[3] == spec.layers[3]
    assert model.model.layers[0].mlp.up_proj is first and model.model.layers[3].self_attn.k_proj is last
    assert report.prunable_after == prunable_parameters(after, cfg)
    assert report.params_after == after.num_parameters() == sum(
        p.numel() for p in model.parameters()) < report.params_before
    assert report.achieved_ratio == pytest.approx(ratio, abs=0.02)
    assert 0 < report.whole_model_reduction < report.achieved_ratio
    for i in (1, 2):
        layer = after.layers[i]
        assert layer.intermediate_size % cfg.round_to == 0
        if mode == "group":
            assert layer.gqa_ratio == spec.layers[i].gqa_ratio  # whole groups removed only
        else:
            assert layer.num_kv_heads == spec.layers[i].num_kv_heads  # KV heads stay
        assert set(report.removed.get(i, {"channels": 0}).keys()) >= {"channels"}
    json.dumps(report.to_dict())
    assert logits(model, make_batch()["input_ids"]).shape == (2, 12, VOCAB)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_cumulative_targets(scope):
    spec = qwen_spec()
    model = build_model(spec, seed=0)
    cfg = PruneConfig(scope=scope, importance="taylor")
    batches = [make_batch()]
    first = prune_to_ratio(model, 0.25, spec, cfg, batches=batches, loss_fn=answer_loss)
    assert first.changed and first.achieved_ratio == pytest.approx(0.25, abs=0.02)
    modules = [lin for layer in model.model.layers for lin in projections(layer)]
    again = prune_to_ratio(model, 0.25, spec, cfg, batches=batches, loss_fn=answer_loss)
    assert not again.changed and again.spec_after == first.spec_after
    assert all(a is b for a, b in zip(modules, [lin for layer in model.model.layers for lin in projections(layer)]))
    further = prune_to_ratio(model, 0.5, spec, cfg, batches=batches, loss_fn=answer_loss)
    assert further.changed and further.achieved_ratio == pytest.approx(0.5, abs=0.02)
    assert further.prunable_before == first.prunable_after
    zero = prune_to_ratio(model, 0.0, spec, cfg, batches=batches, loss_fn=answer_loss)
    assert not zero.changed and zero.achieved_ratio == further.achieved_ratio


@pytest.mark.parametrize("scope", ["local", "global"])
def test_round_to_and_floors_are_respected(scope):
    spec = qwen_spec()
    for ratio, round_to in ((0.3, 64), (0.95, 16)):
        model = build_model(spec, seed=0)
        cfg = PruneConfig(scope=scope, importance="magnitude", round_to=round_to)
        report = prune_to_ratio(model, ratio, spec, cfg)
        after = check_gqa(model)
        for i in (1, 2):
            inter = after.layers[i].intermediate_size
            assert inter % round_to == 0 and inter >= round_to
            assert after.layers[i].num_q_heads >= after.layers[i].num_kv_heads >= 1
        if ratio > 0.9:  # unreachable: stops at the floors instead of breaking the model
            assert report.achieved_ratio < ratio
            assert all(after.layers[i].intermediate_size == round_to for i in (1, 2)) or scope == "global"


def test_prune_to_ratio_rejects_bad_arguments():
    spec = qwen_spec()
    model = build_model(spec)
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="target_ratio"):
            prune_to_ratio(model, bad, spec, PruneConfig(importance="magnitude"))
    with pytest.raises(ValueError, match="calibration batches"):
        prune_to_ratio(model, 0.5, spec, PruneConfig(), loss_fn=answer_loss)
    with pytest.raises(ValueError, match="loss_fn="):
        prune_to_ratio(model, 0.5, spec, PruneConfig(), batches=[make_batch()])
    with pytest.raises(ValueError, match="reference_spec.hidden_size"):
        prune_to_ratio(model, 0.5, preset_spec("qwen2-4m", vocab_size=VOCAB, num_layers=4),
                       PruneConfig(importance="magnitude"))
    with pytest.raises(ValueError, match="no layer is prunable"):
        prune_to_ratio(model, 0.5, spec, PruneConfig(importance="magnitude", keep_first=2, keep_last=2))
    smaller = dataclasses.replace(spec, layers=tuple(LayerSpec(4, 2, 128) for _ in range(4)))
    with pytest.raises(ValueError, match="wider than reference_spec"):
        prune_to_ratio(model, 0.5, smaller, PruneConfig(importance="magnitude"))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratio=st.floats(0.0, 0.9), heads=st.sampled_from([(4, 2), (8, 2), (6, 3), (4, 1), (4, 4)]),
       mode=st.sampled_from(["query", "group"]), scope=st.sampled_from(["local", "global"]),
       round_to=st.sampled_from([8, 16, 32]), seed=st.integers(0, 3))
def test_gqa_integrity_for_any_ratio(ratio, heads, mode, scope, round_to, seed):
    spec = preset_spec("qwen2-1m", vocab_size=32, num_layers=3, num_q_heads=heads[0], num_kv_heads=heads[1])
    model = build_model(spec, seed=seed)
    cfg = PruneConfig(importance="random", seed=seed, scope=scope, head_mode=mode, round_to=round_to)
    report = prune_to_ratio(model, ratio, spec, cfg)
    after = check_gqa(model)
    assert after.layers[0] == spec.layers[0] and after.layers[2] == spec.layers[2]
    if mode == "query":
        assert after.layers[1].num_kv_heads == heads[1]
    else:
        assert after.layers[1].gqa_ratio == heads[0] // heads[1]
    if after.layers[1].intermediate_size != spec.layers[1].intermediate_size:
        assert after.layers[1].intermediate_size % round_to == 0
    assert report.achieved_ratio <= ratio + 0.1  # never prunes far past the target
    ids = torch.randint(0, 32, (1, 5))
    assert logits(model, ids).shape == (1, 5, 32)


# ------------------------------------------------------------------ pruned model lifecycle
def greedy_no_cache(model, ids, steps):
    for _ in range(steps):
        nxt = logits(model, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_pruned_model_saves_loads_and_generates(family, tmp_path):
    spec = SPECS[family]()
    model = build_model(spec, seed=0)
    with torch.no_grad():  # sharper distributions: greedy decoding emits varied tokens
        model.model.embed_tokens.weight.mul_(20)
    prune_to_ratio(model, 0.5, spec, PruneConfig(scope="global", head_mode="group", keep_first=0),
                   batches=[make_batch()], loss_fn=answer_loss)
    prune_to_ratio(model, 0.6, spec, PruneConfig(keep_first=0), batches=[make_batch()], loss_fn=answer_loss)
    pruned = check_gqa(model)
    assert not pruned.is_uniform and pruned.layers[0] != spec.layers[0]
    prompt = make_batch(seed=3)["input_ids"][:, :6]
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                         pad_token_id=0)
    assert torch.equal(out, greedy_no_cache(model, prompt, 4))
    save_model(model, tmp_path / "pruned")
    loaded, loaded_spec = load_model(tmp_path / "pruned")
    assert loaded_spec == pruned
    torch.testing.assert_close(logits(loaded, prompt), logits(model, prompt), atol=1e-5, rtol=0)
    out2 = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                           pad_token_id=0)
    assert torch.equal(out2, out)


def test_training_continues_after_a_prune():
    spec = qwen_spec()
    model = build_model(spec, seed=0).train()
    cfg = OptimConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=0)
    batch = make_batch()
    optimizer = make_optimizer(model, cfg)
    answer_loss(model, batch).backward()  # a trainer mid-step: grads exist when pruning happens
    report = prune_to_ratio(model, 0.5, spec, PruneConfig(), batches=[batch], loss_fn=answer_loss)
    assert report.changed
    optimizer = make_optimizer(model, cfg)  # the pruned layers hold new Parameters
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(3):
        loss = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, snapshot[n])}
    assert "model.layers.1.mlp.down_proj.weight" in changed and "model.layers.2.self_attn.q_proj.weight" in changed
