"""BPF schedules: where the shares fall, what each schedule prunes in which phase, bad configs."""

from __future__ import annotations

import pytest

from edge_runtime.train.bpf import RecipeConfig, share_steps


def test_share_steps_are_even_and_leave_recovery():
    assert share_steps(100, 4) == [20, 40, 60, 80]
    assert share_steps(10, 2) == [3, 7]
    assert share_steps(50, 0) == []
    steps = share_steps(5, 5)
    assert steps == sorted(set(steps)) and steps[-1] <= 5 and len(steps) == 5
    with pytest.raises(ValueError):
        share_steps(3, 4)


@pytest.mark.parametrize("schedule, sft, rl", [
    ("rl", [], [0.125, 0.25, 0.375, 0.5]),
    ("sft-rl", [0.125, 0.25], [0.375, 0.5]),
    ("sft", [0.125, 0.25, 0.375, 0.5], []),
    ("ptp", [], []),
    ("ptp-rl", [], []),
])
def test_phase_targets_are_cumulative_equal_shares(schedule, sft, rl):
    cfg = RecipeConfig(schedule=schedule, ratio=0.5, shares=4, sft_shares=2, sft_steps=20, rl_steps=10)
    assert cfg.phase_targets() == (sft, rl)


def test_post_training_schedules_skip_sft():
    assert RecipeConfig(schedule="ptp", ratio=0.25, sft_steps=300, rl_steps=100).sft_steps == 0
    assert RecipeConfig(schedule="ptp", ratio=0.25, rl_steps=100).rl_steps == 0
    assert RecipeConfig(schedule="ptp-rl", ratio=0.25, rl_steps=100).rl_steps == 100


@pytest.mark.parametrize("kwargs, field", [
    ({"schedule": "bogus"}, "schedule"),
    ({"schedule": "rl", "ratio": 1.0}, "ratio"),
    ({"schedule": "none", "ratio": 0.5}, "ratio"),
    ({"schedule": "rl", "shares": 0}, "shares"),
    ({"schedule": "sft-rl", "shares": 4, "sft_shares": 4}, "sft_shares"),
    ({"schedule": "sft", "sft_steps": 2, "shares": 4}, "sft_steps"),
    ({"schedule": "rl", "rl_steps": 0}, "rl_steps"),
])
def test_bad_recipe_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RecipeConfig(**kwargs)


@pytest.mark.slow
def test_sft_rl_recipe_prunes_in_both_phases_and_keeps_training(tmp_path):
    """BPF-SFT/RL end to end on the shipped dense model, a few steps per phase: one share pruned
    during SFT, one during GRPO (rewards from simulator rollouts), the model physically smaller,
    GQA intact, every phase logged."""
    import dataclasses
    from pathlib import Path

    import torch

    from edge_runtime.model.io import load_model
    from edge_runtime.model.spec import spec_from_model
    from edge_runtime.model.tokenizer import load_tokenizer
    from edge_runtime.prune import PruneConfig, prunable_parameters
    from edge_runtime.tasks.oracle_table import OracleTable
    from edge_runtime.train.bpf import run_recipe
    from edge_runtime.train.cli import DEFAULT_ORACLE_TABLE
    from edge_runtime.train.grpo import GRPOConfig
    from edge_runtime.train.rewards import LocalRewardPool
    from edge_runtime.train.sft import OptimConfig
    from edge_runtime.train.sft_data import SFTDataConfig

    torch.set_num_threads(1)
    dense = Path(__file__).resolve().parent.parent / "models" / "tiny" / "dense"
    model, spec = load_model(dense)
    tok = load_tokenizer(dense / "tokenizer.json")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.0." in n}
    recipe = RecipeConfig(schedule="sft-rl", ratio=0.5, shares=2, sft_shares=1, sft_steps=3, rl_steps=2, seed=0)
    cfg = PruneConfig()
    result = run_recipe(model, tok, spec, recipe, tmp_path, table=OracleTable.load(DEFAULT_ORACLE_TABLE),
                        sft_optim=OptimConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=0),
                        sft_data=SFTDataConfig(mpc_examples=16, decision_per_instruction=2),
                        grpo_config=GRPOConfig(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=64,
                                               decision_fraction=0.0, decision_pool_per_instruction=2),
                        reward_pool=LocalRewardPool(0), prune_config=cfg, log=lambda _: None,
                        calibration_batch_count=1, device="cpu")
    assert [(r["phase"], r["step"]) for r in result.reports] == [("sft", 2), ("rl", 1)]
    assert result.device == "cpu"
    after = spec_from_model(result.model)
    assert after.layers[0] == spec.layers[0] and after.layers[-1] == spec.layers[-1]  # kept dense
    achieved = 1 - prunable_parameters(after, cfg) / prunable_parameters(spec, cfg)
    assert abs(achieved - 0.5) < 0.02
    assert all(layer.num_q_heads % layer.num_kv_heads == 0 for layer in after.layers)
    assert result.sft_history["steps"] == 3 and result.rl_history is not None
    assert (tmp_path / "sft" / "metrics.jsonl").exists() and (tmp_path / "rl" / "metrics.jsonl").exists()
    changed = any(not torch.equal(before[n], p) for n, p in result.model.named_parameters() if n in before)
    assert changed, "training did not continue after the prunes"
    assert dataclasses.asdict(recipe)["sft_steps"] == 3


class _ReachedTheLoss(Exception):
    pass


@pytest.mark.slow
def test_prune_hook_hands_the_cpu_calibration_batches_to_the_loss_on_the_models_device():
    """The BPF path on a GPU: calibration batches are built on the CPU, the trainer has moved the
    model to its device, the hook prunes mid-run. A model on the meta device stands in for the GPU
    (any machine can run this); the loss records where each batch arrives, then stops the prune."""
    from pathlib import Path

    from edge_runtime.model.io import load_model
    from edge_runtime.model.tokenizer import load_tokenizer
    from edge_runtime.prune import PruneConfig
    from edge_runtime.tasks.oracle_table import OracleTable
    from edge_runtime.train.bpf import PruneHook, calibration_batches
    from edge_runtime.train.cli import DEFAULT_ORACLE_TABLE
    from edge_runtime.train.optim import TrainState

    dense = Path(__file__).resolve().parent.parent / "models" / "tiny" / "dense"
    model, spec = load_model(dense)
    batches = calibration_batches(load_tokenizer(dense / "tokenizer.json"), OracleTable.load(DEFAULT_ORACLE_TABLE),
                                  n_batches=2, batch_size=2)
    assert {v.device.type for b in batches for v in b.values()} == {"cpu"}
    seen = []

    def loss_fn(m, batch):
        seen.append({v.device.type for v in batch.values()})
        raise _ReachedTheLoss

    hook = PruneHook([1], [0.25], spec, PruneConfig(), batches, "rl", log=lambda _: None, loss_fn=loss_fn)
    with pytest.raises(_ReachedTheLoss):
        hook(TrainState(1, model.to("meta"), optimizer=None))
    assert seen == [{"meta"}]

def test_model_card_lists_every_stage_and_prune(tmp_path):
    """The card of a pruned model: the SFT stage it came from, the BPF stage with every prune, the
    held-out scores and the person-written notes."""
    import json

    from edge_runtime.train.model_card import write_model_card

    optim = {"steps": 10, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "grad_clip": 1.0}
    sft = {"command": "edge-train sft --out d", "seed": 0, "preset": "qwen2-1m", "init_from": None,
           "data": {"mpc_examples": 8, "jitter": 0.03, "decision_per_instruction": 2}, "oracle_table": "o.json",
           "history": {"optim": optim, "first_loss": 6.0, "last_loss": 0.2, "eval_loss": 0.3}, "wall_time_s": 60.0,
           "parameters": 100, "device": "cuda:0", "gpu": "NVIDIA H200", "threads": 1, "torch": "2.x"}
    report = {"phase": "rl", "step": 5, "target": 0.5, "achieved_ratio": 0.49, "params_before": 100, "params_after": 80}
    bpf = {"kind": "bpf", "command": "edge-train bpf --schedule sft-rl", "seed": 0, "init_from": "d",
           "recipe": RecipeConfig(schedule="sft-rl", ratio=0.5, sft_steps=10, rl_steps=6).__dict__,
           "grpo": {"prompts_per_step": 2, "group_size": 4, "lr": 1e-4, "temperature": 1.0, "kl_coef": 0.0},
           "sft_optim": optim, "prune": {"importance": "taylor", "scope": "local", "head_mode": "query",
                                          "keep_first": 1, "keep_last": 1, "round_to": 8},
           "prune_reports": [report], "rl_history": {"mean_reward": 0.25}, "parameters": 80,
           "reference_parameters": 100, "reference_prunable": 40, "whole_model_reduction": 0.2,
           "wall_time_s": 30.0, "device": "cpu", "threads": 1, "torch": "2.x", "init_summary": sft}
    (tmp_path / "train_summary.json").write_text(json.dumps(bpf))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2048)
    notes = tmp_path / "notes.md"
    notes.write_text("Pruned on a tiny budget.")
    text = write_model_card(tmp_path, notes=notes).read_text()
    assert "Stage 1: `edge-train sft --out d`" in text and "Stage 2: `edge-train bpf --schedule sft-rl`" in text
    assert "rl step 5: target 0.500, achieved 0.490; 100 -> 80 parameters" in text
    assert "20.0% fewer than the dense reference" in text and "1.5 min" in text
    # each stage names the machine it ran on: the SFT stage a GPU, the BPF stage the CPU
    assert "wall time 1.0 min on NVIDIA H200 (torch 2.x)" in text
    assert "wall time 0.5 min on cpu (1 thread, torch 2.x)" in text
    assert text.rstrip().endswith("Pruned on a tiny budget.")


def test_bpf_cli_keeps_a_chat_models_format_and_trains_on_its_prompts(tmp_path, monkeypatch):
    """``edge-train bpf`` from a ChatML model directory (as a pretrained SmolLM2 import is): the SFT
    phase and the importance batches see the prompts rendered as the runtime renders them, the
    pruned directory keeps the format, and the augmentation flags reach the SFT data."""
    import json

    import torch

    from edge_runtime.contracts.chat_format import CHAT_FORMAT_FILE, ChatFormat, read_chat_format
    from edge_runtime.model.build import build_model, preset_spec
    from edge_runtime.model.io import save_model
    from edge_runtime.train import cli
    from test_chat_format import chatml_tokenizer

    torch.set_num_threads(1)
    tok = chatml_tokenizer()
    tok.save(str(tmp_path / "tok.json"))
    fmt = ChatFormat.chatml(system="Drive.")
    init = save_model(build_model(preset_spec("qwen2-1m", vocab_size=tok.get_vocab_size()), seed=0), tmp_path / "m",
                      tokenizer_json=tmp_path / "tok.json", extra_files={CHAT_FORMAT_FILE: fmt.to_json()})
    seen: list = []
    from edge_runtime.train import sft

    original = sft.encode_examples

    def spy(examples, tokenizer, eos_id, max_length, chat_format=None):
        seen.append(chat_format)
        return original(examples, tokenizer, eos_id, max_length, chat_format)

    monkeypatch.setattr(sft, "encode_examples", spy)
    out = tmp_path / "pruned"
    rc = cli.main(["bpf", "--init-from", str(init), "--out", str(out), "--schedule", "sft", "--ratio", "0.25",
                   "--shares", "1", "--sft-steps", "3", "--rl-steps", "0", "--batch-size", "2",
                   "--mpc-examples", "8", "--decision-per-instruction", "2", "--synonym-rate", "0.3",
                   "--distractor-fraction", "0.2", "--threads", "1"])
    assert rc == 0
    assert seen and all(f == fmt for f in seen)  # importance batches, training and held-out data alike
    assert read_chat_format(out) == fmt
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["sft_data"]["synonym_rate"] == 0.3 and summary["sft_data"]["distractor_fraction"] == 0.2
    assert summary["recipe"]["schedule"] == "sft" and summary["prune_reports"][0]["phase"] == "sft"
