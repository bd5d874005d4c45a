import json

import pytest

torch = pytest.importorskip("torch")

from edge_runtime.model.build import build_model, preset_spec  # noqa: E402
from edge_runtime.model.io import load_model, save_model  # noqa: E402
from edge_runtime.model.spec import spec_from_model  # noqa: E402
from edge_runtime.model.tokenizer import train_tokenizer  # noqa: E402
from edge_runtime.tasks.answers import parse_mpc_answer  # noqa: E402
from edge_runtime.tasks.oracle_table import OracleTable  # noqa: E402
from edge_runtime.train.sft import OptimConfig, SFTTrainer, collate, encode_examples, lr_at  # noqa: E402
from edge_runtime.train.sft_data import SFTDataConfig, build_sft_examples  # noqa: E402
from edge_runtime.train.cli import DEFAULT_ORACLE_TABLE  # noqa: E402


@pytest.fixture(scope="module")
def examples():
    table = OracleTable.load(DEFAULT_ORACLE_TABLE)
    return build_sft_examples(table, SFTDataConfig(mpc_examples=40, decision_per_instruction=2, seed=0))


@pytest.fixture(scope="module")
def tokenizer(examples):
    return train_tokenizer([e.prompt + e.answer for e in examples], vocab_size=400)


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
