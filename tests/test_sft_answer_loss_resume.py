"""SFT: the loss computed at answer positions only equals the full-logits loss (value and
gradients, Qwen2 and Llama), and an interrupted run resumed from its resume state ends with the
weights of an uninterrupted one."""

import json

import pytest

torch = pytest.importorskip("torch")

from edge_runtime.model.build import build_model, preset_spec  # noqa: E402
from edge_runtime.train.sft import RESUME_FILE, OptimConfig, SFTTrainer, answer_loss, collate, encode_examples  # noqa: E402


@pytest.fixture(scope="module")
def examples(sft_examples):
    return sft_examples


@pytest.fixture(scope="module")
def tokenizer(sft_tokenizer):
    return sft_tokenizer


def full_logits_loss(model, batch):
    """The loss as computed before: LM head over every position, then the per-example mean."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                           ignore_index=-100, reduction="none").view(targets.shape)
    mask = (targets != -100).to(ce.dtype)
    return ((ce * mask).sum(1) / mask.sum(1).clamp(min=1.0)).mean()


@pytest.mark.parametrize("preset", ["qwen2-1m", "llama-4m"])
def test_answer_position_loss_equals_the_full_logits_loss(preset, examples, tokenizer):
    model = build_model(preset_spec(preset, vocab_size=tokenizer.get_vocab_size(), num_layers=2), seed=0)
    enc = encode_examples(examples[:5], tokenizer, tokenizer.token_to_id("<|endoftext|>"), 2048)
    enc[1].labels = [-100] * len(enc[1].labels)  # an example without answer tokens counts as 0, as before
    batch = collate(enc, tokenizer.token_to_id("<|pad|>"), torch.device("cpu"))
    losses, grads = [], []
    for fn in (answer_loss, full_logits_loss):
        model.zero_grad()
        loss = fn(model, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def _trainer(examples, tokenizer, out, resume=False, hooks=()):
    model = build_model(preset_spec("qwen2-1m", vocab_size=tokenizer.get_vocab_size(), num_layers=2), seed=0)
    cfg = OptimConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=0, seed=0, resume_every=3)
    return SFTTrainer(model, tokenizer, examples, cfg, out, hooks=hooks, device="cpu", resume=resume)


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(examples, tokenizer, tmp_path):
    whole = _trainer(examples, tokenizer, tmp_path / "whole")
    whole.train()

    class Stop(Exception):
        pass

    def crash(state):
        if state.step == 5:  # after the resume state of step 3, with steps 4-5 logged
            raise Stop

    with pytest.raises(Stop):
        _trainer(examples, tokenizer, tmp_path / "cut", hooks=[crash]).train()
    assert (tmp_path / "cut" / RESUME_FILE).is_file()
    assert not list((tmp_path / "cut").glob(".*tmp"))  # written atomically: no temp file left
    resumed = _trainer(examples, tokenizer, tmp_path / "cut", resume=True)
    assert resumed.start_step == 3
    history = resumed.train()
    assert history["resumed_from_step"] == 3
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # appended; the re-run steps are not logged twice
    ref = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], abs=1e-6)


def test_resume_refuses_other_training_settings(examples, tokenizer, tmp_path):
    _trainer(examples, tokenizer, tmp_path).train()
    model = build_model(preset_spec("qwen2-1m", vocab_size=tokenizer.get_vocab_size(), num_layers=2), seed=0)
    cfg = OptimConfig(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=0, seed=0, resume_every=3)
    with pytest.raises(ValueError, match="steps"):
        SFTTrainer(model, tokenizer, examples, cfg, tmp_path, device="cpu", resume=True)


@pytest.mark.slow
def test_edge_train_sft_rerun_resumes_and_records_the_chat_format(tmp_path, monkeypatch, capsys):
    import edge_runtime.train.sft as sft
    from edge_runtime.contracts.chat_format import CHAT_FORMAT_FILE, ChatFormat
    from edge_runtime.train.cli import main

    out = tmp_path / "m"
    argv = ["sft", "--out", str(out), "--preset", "qwen2-1m", "--num-layers", "2", "--steps", "4", "--batch-size", "2",
            "--mpc-examples", "4", "--decision-per-instruction", "2", "--eval-every", "0", "--threads", "1",
            "--device", "cpu", "--resume-every", "2"]
    real = sft.run_hooks

    def stop_at_3(hooks, state, cfg):
        if state.step == 3:
            raise KeyboardInterrupt  # the session ends
        return real(hooks, state, cfg)

    monkeypatch.setattr(sft, "run_hooks", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.setattr(sft, "run_hooks", real)
    assert main(argv) == 0
    assert "resuming from" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["history"]["resumed_from_step"] == 2
    assert not (tmp_path / "m.training" / RESUME_FILE).exists() and not (out / CHAT_FORMAT_FILE).exists()  # plain
    # a continued run from a directory with a chat format keeps it (here: a plain model, told chatml is
    # refused in one line because its tokenizer has no <|im_end|>)
    ChatFormat.chatml().save(out)
    assert main(["sft", "--out", str(tmp_path / "c"), "--init-from", str(out)] + argv[5:]) == 2
    err = capsys.readouterr().err
    assert "chat format's token" in err and "<|im_" in err
