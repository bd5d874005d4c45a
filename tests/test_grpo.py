"""Closed-loop GRPO: rewards, reward pools (in-process, process pool, Ray), advantages, the trainer."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edge_runtime.tasks as tasks_pkg
from edge_runtime.control.params import DEFAULT_PARAMS, MPCParams
from edge_runtime.model.build import build_model, preset_spec
from edge_runtime.model.io import load_model
from edge_runtime.model.tokenizer import load_tokenizer
from edge_runtime.tasks.answers import format_decision_answer, format_mpc_answer
from edge_runtime.tasks.closed_loop import EvalConfig
from edge_runtime.contracts.task_enums import Category
from edge_runtime.tasks.instructions import SPEED_RANGE, make_instruction
from edge_runtime.tasks.oracle_table import OracleTable
from edge_runtime.tasks.prompts import build_mpc_prompt
from edge_runtime.train.grpo import (
    GRPOConfig,
    GRPOTrainer,
    TaskSampler,
    completion_logprobs,
    group_advantages,
)
from edge_runtime.train.rewards import (
    LocalRewardPool,
    RewardConfig,
    RewardTask,
    format_ok,
    make_reward_pool,
    score_completion,
)

ROOT = Path(__file__).resolve().parent.parent
DENSE = ROOT / "models" / "tiny" / "dense"
ORACLE = Path(tasks_pkg.__file__).parent / "data" / "oracle_oval.json"
CFG = RewardConfig()
BONUS = CFG.format_weight + CFG.parseable_weight + CFG.valid_names_weight


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models decode far faster on one thread (and two threads crawl on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(DENSE / "tokenizer.json")


@pytest.fixture(scope="module")
def table():
    return OracleTable.load(ORACLE)


def centre_task():
    ins = make_instruction(Category.CENTRELINE, "Stay in the middle of the track.")
    return RewardTask.mpc(build_mpc_prompt(ins.text), ins)


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------
def test_mpc_reward_orders_good_default_and_broken_answers(table):
    task = centre_task()
    good = score_completion(task, format_mpc_answer(table.params_for(task.instruction), "Reason: stay centred."), CFG)
    default = score_completion(task, format_mpc_answer(DEFAULT_PARAMS), CFG)
    broken = score_completion(task, "qn is 60 I think", CFG)
    # both parsed answers were driven in the simulator
    for r in (good, default):
        assert r.rollout and r.failure is None and not r.crashed and not r.stalled
        assert r.default_error > 0 and r.error is not None and r.sim_time > 0
    assert good.control == pytest.approx((good.default_error - good.error) / good.default_error)
    assert good.control > 0.5 and good.total == pytest.approx(good.control + BONUS)
    assert default.control == pytest.approx(0.0, abs=1e-9)  # the defaults are the baseline
    assert default.total == pytest.approx(BONUS)
    assert broken.total == -CFG.clip and broken.control == -CFG.clip and not broken.rollout
    assert broken.format == broken.parseable == broken.valid_names == 0 and broken.failure == "no_answer_tag"
    assert good.total > default.total > broken.total
    # the same wording-independent baseline for a paraphrase of the same category
    other = RewardTask.mpc("p", make_instruction(Category.CENTRELINE, "Drive on the centre line."))
    assert score_completion(other, format_mpc_answer(DEFAULT_PARAMS), CFG).default_error == default.default_error


def test_mpc_reward_bonuses_and_failures():
    task = centre_task()
    unknown = score_completion(task, '<answer>{"qn": 50, "speed": 3}</answer>', CFG)
    assert unknown.failure == "unknown_name" and unknown.valid_names == 0.0
    assert unknown.format == CFG.format_weight and unknown.parseable == 0.0 and unknown.total == -CFG.clip + CFG.format_weight
    out_of_range = score_completion(task, '<answer>{"qn": 500}</answer>', CFG)
    assert out_of_range.failure == "out_of_range" and out_of_range.valid_names == CFG.valid_names_weight
    assert out_of_range.control == -CFG.clip and not out_of_range.rollout
    clamped = score_completion(task, '<answer>{"qn": 500}</answer>', RewardConfig(clamp_out_of_range=True))
    assert clamped.failure is None and clamped.rollout
    cut = score_completion(task, 'Reason: x.\n<answer>{"qn": 5', CFG)
    assert cut.failure == "unterminated" and cut.total == -CFG.clip
    trailing = score_completion(task, '<answer>{"v_max": 5}</answer> and more', CFG)
    assert trailing.format == 0.0 and trailing.parseable == CFG.parseable_weight and trailing.rollout
    # a stalled run (the defaults drive forwards, the instruction says reverse) scores the worst case
    rev = RewardTask.mpc("p", make_instruction(Category.REVERSE, "Drive backwards."))
    stall = score_completion(rev, format_mpc_answer(DEFAULT_PARAMS), CFG)
    assert stall.rollout and stall.stalled and stall.control == -CFG.clip


def test_a_rollout_that_raises_scores_the_worst_case(monkeypatch):
    from edge_runtime.train import rewards

    def boom(*args, **kwargs):
        raise FloatingPointError("solver blew up")

    monkeypatch.setattr(rewards, "evaluate", boom)
    r = score_completion(centre_task(), format_mpc_answer(MPCParams(qn=60)), CFG)
    assert r.control == -CFG.clip and r.crashed and "solver blew up" in r.detail and r.parseable == CFG.parseable_weight


def test_format_ok():
    assert format_ok('Reason.\n<answer>{"qv": 1}</answer>\n')
    assert not format_ok('<answer>{"qv": 1}</answer><answer>{}</answer>')
    assert not format_ok('</answer>{"qv": 1}<answer>')
    assert not format_ok('<answer>{"qv": 1}') and not format_ok("")


def test_decision_reward_correct_wrong_unparseable():
    task = RewardTask.decision("p", np.bool_(True))
    assert task.label is True
    right = score_completion(task, "mean v 120.\n" + format_decision_answer(True), CFG)
    wrong = score_completion(task, format_decision_answer(False), CFG)
    junk = score_completion(task, "<answer>maybe</answer>", CFG)
    assert right.correct and right.total == pytest.approx(1.0 + 0.2) and right.control == 1.0
    assert wrong.correct is False and wrong.total == pytest.approx(0.2)
    assert junk.failure == "bad_value" and junk.total == pytest.approx(CFG.format_weight) and not junk.rollout
    assert right.valid_names == wrong.valid_names == 0.0


@pytest.mark.parametrize("kwargs, field", [
    ({"clip": 0}, "clip"), ({"clip": float("inf")}, "clip"), ({"format_weight": -0.1}, "format_weight"),
    ({"parseable_weight": float("nan")}, "parseable_weight"), ({"valid_names_weight": -1}, "valid_names_weight"),
    ({"decision_correct": 0.0}, "decision_correct"), ({"eval": {"track": "oval"}}, "eval"),
])
def test_reward_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"RewardConfig\.{field}"):
        RewardConfig(**kwargs)


def test_reward_task_validation():
    ins = make_instruction(Category.SMOOTH, "Drive smoothly.")
    with pytest.raises(ValueError, match="kind"):
        RewardTask("steer", "p", instruction=ins)
    with pytest.raises(ValueError, match="instruction"):
        RewardTask("mpc", "p")
    with pytest.raises(ValueError, match="label"):
        RewardTask("decision", "p", label="yes")
    assert RewardTask.mpc("p", ins).category == "smooth" and RewardTask.decision("p", False).category == "decision"


def _pool_items(table):
    task = centre_task()
    rev = RewardTask.mpc("p", make_instruction(Category.REFERENCE_VELOCITY, "Drive at {v} m/s.", 2.3))
    return [(task, format_mpc_answer(table.params_for(task.instruction))),
            (rev, format_mpc_answer(MPCParams(v_max=2.3))),
            (task, "no answer"),
            (RewardTask.decision("p", False), format_decision_answer(False)),
            (rev, format_mpc_answer(table.params_for(rev.instruction), "Reason: hold 2.3 m/s."))]


@pytest.fixture(scope="module")
def pool_case(table):
    items = _pool_items(table)
    return items, LocalRewardPool(workers=0).score(items)


@pytest.mark.slow
def test_local_process_pool_matches_in_process_and_keeps_order(pool_case):
    items, expected = pool_case
    with make_reward_pool(None, workers=2) as pool:
        assert isinstance(pool, LocalRewardPool)
        assert pool.workers_have_torch() == [False, False]  # workers import only the task code
        got = pool.score(items)
        assert pool.score([]) == []
    assert got == expected  # bit-identical (wall_time is not compared)
    assert [r.kind for r in got] == ["mpc", "mpc", "mpc", "decision", "mpc"] and got[0].rollout
    with pytest.raises(ValueError, match="workers"):
        LocalRewardPool(workers=-1)
    with pytest.raises(ValueError, match="context"):
        LocalRewardPool(workers=1, context="fork")


@pytest.mark.slow
def test_ray_pool_matches_local_pool(pool_case):
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed (pip install 'ray>=2.9', part of the 'train' extra)")
    items, expected = pool_case
    with make_reward_pool("local", workers=0) as pool:
        got = pool.score(items)
    assert got == expected
    assert not ray.is_initialized()  # the pool started its own Ray and shut it down


# ---------------------------------------------------------------------------------------------
# Advantages, sampler, config
# ---------------------------------------------------------------------------------------------
def test_group_advantages_hand_computed():
    adv = group_advantages([1.0, 2.0, 3.0, 4.0, 0.3, 0.3, 0.3, 0.3], group_size=4)
    std = np.sqrt(1.25)  # population std of 1, 2, 3, 4
    assert adv[:4] == pytest.approx(np.array([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4))
    assert list(adv[4:]) == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages([-4.0, 1.0], 2) == pytest.approx([-1.0 / (1.0 + 2e-5), 1.0 / (1.0 + 2e-5)], rel=1e-4)
    with pytest.raises(ValueError):
        group_advantages([1.0, 2.0, 3.0], 2)


def test_sampler_is_seeded_and_draws_like_sft():
    a, b = TaskSampler(seed=3, decision_fraction=0.0), TaskSampler(seed=3, decision_fraction=0.0)
    ta, tb = a.sample(10), b.sample(10)
    assert [t.prompt for t in ta] == [t.prompt for t in tb]
    assert [t.instruction.category for t in ta] == list(Category) * 2  # categories in turn, as SFT
    for t in ta:
        assert t.kind == "mpc" and t.prompt == build_mpc_prompt(t.instruction.text)
        if t.instruction.category is Category.REFERENCE_VELOCITY:
            v = t.instruction.target_speed
            assert SPEED_RANGE[0] <= v <= SPEED_RANGE[1] and v == round(v, 1)
    assert TaskSampler(seed=4, decision_fraction=0.0).sample(10) != ta
    mixed = TaskSampler(seed=0, decision_fraction=0.3, decision_pool_per_instruction=2)
    kinds = [t.kind for _ in range(100) for t in mixed.sample(4)]
    assert 0.2 < kinds.count("decision") / len(kinds) < 0.4  # stochastic rounding of 4 * 0.3
    dec = next(t for t in mixed.sample(4) if t.kind == "decision")
    assert isinstance(dec.label, bool) and "Answer:" in dec.prompt


@pytest.mark.parametrize("kwargs, field", [
    ({"steps": 0}, "steps"), ({"prompts_per_step": 0}, "prompts_per_step"), ({"group_size": 1}, "group_size"),
    ({"lr": 0.0}, "lr"), ({"min_lr_ratio": 1.5}, "min_lr_ratio"), ({"warmup_steps": -1}, "warmup_steps"),
    ({"temperature": 0.0}, "temperature"), ({"top_k": -1}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"kl_coef": -0.1}, "kl_coef"), ({"grad_clip": 0.0}, "grad_clip"), ({"decision_fraction": 1.5}, "decision_fraction"),
    ({"decision_pool_per_instruction": 3}, "decision_pool_per_instruction"), ({"micro_batch": -2}, "micro_batch"),
    ({"weight_decay": -1.0}, "weight_decay"), ({"steps": 2.5}, "steps"),
])
def test_grpo_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"GRPOConfig\.{field}\b"):
        GRPOConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tok):
    return build_model(preset_spec("qwen2-1m", vocab_size=tok.get_vocab_size()), seed=0)


def test_logprobs_match_the_sampling_distribution(tiny, tok, tmp_path):
    """The update's log-probs (left padding, explicit positions) equal those ``generate`` sampled with."""
    cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=10, temperature=0.7)
    trainer = GRPOTrainer(tiny, tok, cfg, tmp_path, LocalRewardPool(0), device="cpu")
    prompts = [build_mpc_prompt("Drive smoothly."), build_mpc_prompt("Keep the car centered around the lap please.")]
    assert len(tok.encode(prompts[0]).ids) != len(tok.encode(prompts[1]).ids)  # left padding is exercised
    torch.manual_seed(11)
    batch = trainer.generate(prompts)
    torch.manual_seed(11)
    ids, mask = batch.input_ids[:, :batch.prompt_width], batch.attention_mask[:, :batch.prompt_width]
    ref = tiny.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                        max_new_tokens=10, eos_token_id=trainer.eos_id, pad_token_id=trainer.pad_id,
                        output_logits=True, return_dict_in_generate=True)
    assert torch.equal(ref.sequences, batch.input_ids)
    expected = torch.log_softmax(torch.stack(ref.logits, 1).float() / 0.7, -1).gather(
        -1, ref.sequences[:, batch.prompt_width:, None]).squeeze(-1)
    got = completion_logprobs(tiny, batch, temperature=0.7)
    sel = batch.completion_mask.bool()
    assert torch.allclose(got[sel], expected[sel], atol=1e-4)
    assert batch.lengths == sel.sum(1).tolist() and len(batch.texts) == 4


def test_micro_batches_give_the_same_update(tiny, tok, tmp_path):
    import copy

    cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=8, kl_coef=0.1)
    torch.manual_seed(5)
    trainer = GRPOTrainer(copy.deepcopy(tiny), tok, cfg, tmp_path / "a", LocalRewardPool(0), device="cpu")
    batch = trainer.generate([build_mpc_prompt("Drive smoothly."), build_mpc_prompt("Reverse the car.")])
    adv = np.array([1.0, -1.0, 0.5, -0.5])
    with torch.no_grad():  # move the policy off the reference so that the KL term is not zero
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other = GRPOTrainer(copy.deepcopy(trainer.model), tok, dataclasses.replace(cfg, micro_batch=3), tmp_path / "b",
                        LocalRewardPool(0), ref_model=trainer.ref_model, device="cpu")
    whole, split = trainer.update(batch, adv), other.update(batch, adv)
    assert whole["kl"] > 0
    for key in ("loss", "kl", "grad_norm", "mean_logp"):
        assert split[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key


def test_hook_that_replaces_the_optimizer_is_kept(tiny, tok, tmp_path):
    cfg = GRPOConfig(steps=1, prompts_per_step=1, group_size=2, max_new_tokens=6, decision_fraction=0.0,
                     sample_every=0)
    custom = torch.optim.SGD(tiny.parameters(), lr=0.0)

    def replace(state):
        state.optimizer = custom
        return True

    trainer = GRPOTrainer(tiny, tok, cfg, tmp_path, LocalRewardPool(0), hooks=[replace, lambda s: False], device="cpu")
    trainer.train()
    assert trainer.optimizer is custom


def _prune_mlp_half(model, layer: int = 0) -> None:
    """What a structural pruning hook does: new, smaller Linear modules holding sliced weights."""
    mlp = model.model.layers[layer].mlp
    keep = torch.arange(mlp.gate_proj.out_features // 2)
    with torch.no_grad():
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, len(keep), bias=False)
            new.weight.copy_(old.weight[keep])
            setattr(mlp, name, new)
        new = torch.nn.Linear(len(keep), mlp.down_proj.out_features, bias=False)
        new.weight.copy_(mlp.down_proj.weight[:, keep])
        mlp.down_proj = new


class RecordingPool(LocalRewardPool):
    def __init__(self):
        super().__init__(workers=0)
        self.seen = []

    def score(self, items):
        out = super().score(items)
        self.seen.append(out)
        return out


@pytest.mark.slow
def test_micro_grpo_run_learns_from_the_simulator(tok, tmp_path):
    """Two steps of the shipped dense model: rewards come from closed-loop rollouts, the policy
    moves, hooks run after every step, a pruning hook forces an optimizer rebuild, and the KL
    reference keeps its dense shape."""
    model, _ = load_model(DENSE)
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=64, lr=2e-3, warmup_steps=0,
                     decision_fraction=0.5, decision_pool_per_instruction=2, kl_coef=0.05, seed=0, sample_every=1)
    pool = RecordingPool()
    calls, optimizers = [], []

    def count(state):
        calls.append((state.step, sorted(state.metrics)))
        optimizers.append(state.optimizer)
        return False

    def prune_once(state):
        if state.step == 1:
            _prune_mlp_half(state.model)
            return True
        return False

    trainer = GRPOTrainer(model, tok, cfg, tmp_path, pool, hooks=[count, prune_once], device="cpu")
    ref_before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    watched = model.model.layers[1].self_attn.q_proj.weight
    before = watched.detach().clone()
    first_optimizer = trainer.optimizer
    history = trainer.train()

    assert [c[0] for c in calls] == [1, 2] and "reward_mean" in calls[0][1]
    assert optimizers[0] is first_optimizer and trainer.optimizer is not first_optimizer  # rebuilt after pruning
    live = {id(p) for p in model.parameters()}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == live
    assert model.model.layers[0].mlp.gate_proj.out_features == 192
    assert trainer.ref_model.model.layers[0].mlp.gate_proj.out_features == 384  # reference not pruned
    assert all(torch.equal(v, trainer.ref_model.state_dict()[k]) for k, v in ref_before.items())
    assert not torch.equal(before, watched.detach())  # the policy moved

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r, scored in zip(records, pool.seen):
        mpc = [b for b in scored if b.kind == "mpc"]
        assert len(mpc) == 4 and r["mpc_completions"] == 4 and r["decision_completions"] == 4
        assert r["reward_mean"] == pytest.approx(np.mean([b.total for b in scored]))
        assert all(b.rollout or b.failure for b in mpc)  # every parsed MPC answer was driven
        for key in ("control_mean", "parse_failure_rate", "decision_accuracy", "kl", "loss", "grad_norm", "lr",
                    "generation_s", "reward_s", "update_s", "step_s", "completion_tokens_mean"):
            assert r[key] is not None and np.isfinite(r[key]), key
    assert any(b.rollout and b.default_error > 0 and b.error is not None for b in pool.seen[0])  # the dense
    # model answers well at step 1; halving an MLP of a layer (a crude prune) may break step 2's answers
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6) and records[1]["kl"] > 0
    assert history["steps"] == 2 and len(history["reward_curve"]) == 2
    assert (tmp_path / "samples.jsonl").read_text().count("\n") == 4


def test_reward_eval_config_is_the_training_track():
    assert RewardConfig().eval == EvalConfig() and EvalConfig().track == "oval"
