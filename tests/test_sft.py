import json

import pytest

torch = pytest.importorskip("torch")

from edge_runtime.model.build import build_model, preset_spec  # noqa: E402
from edge_runtime.model.io import load_model, save_model  # noqa: E402
from edge_runtime.model.spec import spec_from_model  # noqa: E402
from edge_runtime.tasks.answers import parse_mpc_answer  # noqa: E402
from edge_runtime.train.sft import OptimConfig, SFTTrainer, collate, encode_examples, lr_at  # noqa: E402


@pytest.fixture(scope="module")
def examples(sft_examples):
    return sft_examples


@pytest.fixture(scope="module")
def tokenizer(sft_tokenizer):
    return sft_tokenizer


def test_sft_examples_are_valid_answers(examples):
    mpc = [e for e in examples if e.task == "mpc"]
    assert len(mpc) == 40 and len(examples) == 40 + 16
    for e in mpc:
        parse = parse_mpc_answer(e.answer)
        assert parse.failure is None, (e.answer, parse.detail)
    assert {e.category for e in mpc} == {"centreline", "reference_velocity", "reverse", "smooth", "racing_line"}


def test_schedule_warms_up_then_decays():
    cfg = OptimConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=0.05)
    assert lr_at(55, cfg) < lr_at(20, cfg)


def test_loss_only_on_answer_tokens(examples, tokenizer):
    eos = tokenizer.token_to_id("<|endoftext|>")
    enc = encode_examples(examples[:3], tokenizer, eos, 2048)
    for e, ex in zip(enc, examples[:3]):
        n_prompt = len(tokenizer.encode(ex.prompt).ids)
        assert all(label == -100 for label in e.labels[:n_prompt])
        assert e.labels[n_prompt:] == e.input_ids[n_prompt:] and e.labels[-1] == eos
    batch = collate(enc, tokenizer.token_to_id("<|pad|>"), torch.device("cpu"))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


@pytest.mark.slow
def test_micro_sft_lowers_the_loss_and_saves(examples, tokenizer, tmp_path):
    spec = preset_spec("qwen2-1m", vocab_size=tokenizer.get_vocab_size())
    model = build_model(spec, seed=0)
    cfg = OptimConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=0, seed=0)
    calls = []

    def hook(state):
        calls.append(state.step)
        return state.step == 10  # pretend the structure changed: the optimizer must be rebuilt

    trainer = SFTTrainer(model, tokenizer, examples, cfg, tmp_path, eval_examples=examples[:16], hooks=[hook])
    first_optimizer = trainer.optimizer
    before = trainer.evaluate_loss()
    history = trainer.train()
    after = trainer.evaluate_loss()
    assert after < 0.8 * before, (before, after)
    assert calls == list(range(1, 31)) and trainer.optimizer is not first_optimizer
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and rows[0]["step"] == 1 and history["last_loss"] == rows[-1]["loss"]
    save_model(trainer.model, tmp_path / "m", spec_from_model(trainer.model))
    reloaded, _ = load_model(tmp_path / "m")
    ids = torch.tensor([tokenizer.encode(examples[0].prompt).ids])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trainer.model.cpu().eval()(ids).logits, atol=1e-5)  # CUDA-trained too


def test_decision_reasoning_states_the_rule_that_decides_the_label():
    import re

    from edge_runtime.tasks.answers import parse_decision_answer
    from edge_runtime.train.sft_data import decision_examples

    examples = decision_examples(10, seed=3)
    agree = 0
    for ex in examples:
        reason, _, answer = ex.answer.partition("\n")
        label = parse_decision_answer(answer).value
        if reason.startswith("Crashed"):
            assert label is False
            agree += 1
            continue
        checks = re.findall(r"(-?\d+), needs (<|>|>=) (-?\d+)", reason)
        assert checks, reason
        ok = all({"<": int(a) < int(b), ">": int(a) > int(b), ">=": int(a) >= int(b)}[op] for a, op, b in checks)
        agree += ok == label
    assert agree >= 0.97 * len(examples)  # cm rounding may flip a label that sits on a threshold


# ---------------------------------------------------------------------------------------------
# Shared loop config, the optimiser rebuild, the device
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    ({"steps": 1.5}, "steps"),
    ({"steps": "100"}, "steps"),
    ({"steps": True}, "steps"),
    ({"steps": 0}, "steps"),
    ({"batch_size": 2.0}, "batch_size"),
    ({"warmup_steps": 1.0}, "warmup_steps"),
    ({"eval_every": -1}, "eval_every"),
    ({"lr": "1e-3"}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"betas": (0.9,)}, "betas"),
    ({"grad_clip": 0}, "grad_clip"),
    ({"seed": None}, "seed"),
    ({"max_length": 0}, "max_length"),
])
def test_optim_config_rejects_wrong_types_and_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"OptimConfig\.{field} must be .*, got"):
        OptimConfig(**kwargs)


def test_sft_and_grpo_configs_share_one_declaration_of_the_loop_fields():
    from dataclasses import fields

    from edge_runtime.train.grpo import GRPOConfig
    from edge_runtime.train.optim import LoopConfig

    shared = {f.name for f in fields(LoopConfig)}
    assert issubclass(OptimConfig, LoopConfig) and issubclass(GRPOConfig, LoopConfig)
    assert shared <= {f.name for f in fields(OptimConfig)} and shared <= {f.name for f in fields(GRPOConfig)}
    with pytest.raises(ValueError, match=r"GRPOConfig\.steps must be an int >= 1, got 2\.5"):
        GRPOConfig(steps=2.5)
    assert GRPOConfig().lr == 1e-4 and OptimConfig().lr == 2e-3  # each loop keeps its own defaults


def test_run_hooks_rebuilds_the_optimizer_after_a_structural_change():
    from edge_runtime.train.optim import TrainState, make_optimizer, run_hooks

    cfg = OptimConfig(steps=2, lr=1e-3)
    model = torch.nn.Linear(3, 2)
    first = make_optimizer(model, cfg)
    mine = make_optimizer(model, cfg)
    seen = []

    def no_change(state):
        seen.append(("no_change", state.optimizer))
        return False

    def changed(state):
        seen.append(("changed", state.optimizer))
        return True

    def replaces(state):
        state.optimizer = mine
        return True

    state = TrainState(1, model, first)
    assert run_hooks([no_change], state, cfg) is first
    rebuilt = run_hooks([changed, no_change], state, cfg)
    assert rebuilt is not first and seen[-1] == ("no_change", rebuilt)  # the next hook sees the new one
    assert run_hooks([replaces], state, cfg) is mine  # a hook's own optimizer is kept


def test_device_auto_cpu_and_cuda_without_a_gpu(monkeypatch):
    from edge_runtime.train.device import describe_device, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device cuda: CUDA is not available.*use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="--device"):
        resolve_device("meta")
    assert describe_device("cpu") == {"device": "cpu", "gpu": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_edge_train_device_cuda_without_a_gpu_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    from edge_runtime.train.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["sft", "--out", str(tmp_path / "m")],
                    ["bpf", "--init-from", str(tmp_path / "none"), "--out", str(tmp_path / "p"), "--schedule", "rl"]):
        assert main(command + ["--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--device cuda" in err and "--device cpu" in err
    assert not (tmp_path / "m.training").exists()  # it fails before any work


def test_edge_train_help_names_every_default_and_choice():
    """Every flag has help text and shows its default; fixed value sets are choices; no
    reStructuredText markup reaches --help."""
    import argparse

    from edge_runtime.train.cli import build_parser

    ap = build_parser()
    subparsers = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subparsers) >= {"sft", "bpf", "card"}
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            assert "(default:" in action.help or action.required, (name, action.dest)
        text = sub.format_help()
        assert "``" not in text, name
        if name in ("sft", "bpf"):
            device = next(a for a in sub._actions if a.dest == "device")
            assert list(device.choices) == ["auto", "cpu", "cuda"] and device.default == "auto"
    assert "``" not in ap.format_help()
    bpf = subparsers["bpf"]
    assert all(next(a for a in bpf._actions if a.dest == d).choices for d in ("schedule", "importance", "scope",
                                                                              "head_mode"))


@pytest.mark.slow
def test_edge_train_sft_records_the_device_it_ran_on(tmp_path):
    from edge_runtime.train.cli import main

    out = tmp_path / "m"
    assert main(["sft", "--out", str(out), "--preset", "qwen2-1m", "--steps", "1", "--batch-size", "2",
                 "--mpc-examples", "4", "--decision-per-instruction", "2", "--eval-every", "0", "--threads", "1",
                 "--device", "cpu"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["device"] == "cpu" and summary["gpu"] is None
