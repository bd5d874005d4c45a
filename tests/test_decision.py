"""Tests of the DecisionxR1-style task: rule labels, scripted behaviours, balanced datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.sim.racing_line import compute_racing_line
from edge_runtime.sim.tracks import load_track
from edge_runtime.tasks.decision import (
    Behaviour,
    BehaviourSpec,
    DecisionExample,
    DecisionInstruction as I,
    HistoryConfig,
    LabelThresholds,
    StateHistory,
    decision_accuracy,
    generate_decision_dataset,
    label,
    label_all,
    phrasings,
    sample_behaviour,
    simulate_history,
)

N = 30
T = np.arange(1, N + 1) / 10.0  # 10 Hz over 3 s
W = 1.1  # half width of the oval


def make(v, d=0.0, crashed=None, race_d=None) -> StateHistory:
    """A hand-made history on a straight 1.1 m half-width track."""
    v = np.broadcast_to(np.asarray(v, dtype=float), (N,))
    d = np.broadcast_to(np.asarray(d, dtype=float), (N,))
    s = 5.0 + np.cumsum(v) / 10.0
    return StateHistory(s=s, d=d, v=v, vs=v, wall_left=W - d, wall_right=W + d, crashed=crashed,
                        race_d=race_d)


HISTORIES = {
    "still": make(0.0, d=0.2),
    "creeping": make(0.2),
    "reversing": make(-1.0),
    "reversing_slow": make(-0.15),
    "forward_centre": make(2.0, race_d=np.full(N, 0.5)),
    "forward_offset": make(2.0, d=0.3),
    "oscillating": make(2.0, d=0.5 * np.sin(2 * np.pi * T / 1.2)),
    "wobble": make(2.0, d=0.08 * np.sin(2 * np.pi * T / 1.2)),
    "single_swing": make(2.0, d=np.linspace(-0.45, 0.45, N)),
    "left_wall": make(1.5, d=0.75),
    "left_wall_parked": make(0.0, d=0.75),
    "fast": make(3.6, d=0.05),
    "almost_fast": make(2.95),
    "racing_line": make(2.5, d=0.4 + 0.05 * np.sin(T), race_d=np.full(N, 0.4)),
    "reversing_on_centre": make(-1.0, d=0.0, race_d=np.zeros(N)),
    "crashed": make(np.r_[np.full(15, 2.0), np.zeros(15)], crashed=np.r_[np.zeros(15), np.ones(15)]),
    "crashed_at_rest": make(0.0, crashed=np.ones(N)),
}

# Expected labels for every history and every instruction (True listed, everything else False).
EXPECTED_TRUE = {
    "still": {I.DONT_MOVE},
    "creeping": set(),
    "reversing": {I.REVERSE},
    "reversing_slow": set(),
    "forward_centre": {I.DRIVE_FORWARD, I.CENTRELINE},
    "forward_offset": {I.DRIVE_FORWARD},
    "oscillating": {I.DRIVE_FORWARD, I.OSCILLATE},
    "wobble": {I.DRIVE_FORWARD, I.CENTRELINE},
    "single_swing": {I.DRIVE_FORWARD},
    "left_wall": {I.DRIVE_FORWARD, I.LEFT_WALL},
    "left_wall_parked": {I.DONT_MOVE},
    "fast": {I.DRIVE_FORWARD, I.CENTRELINE, I.FASTER_THAN_3},
    "almost_fast": {I.DRIVE_FORWARD, I.CENTRELINE},
    "racing_line": {I.DRIVE_FORWARD, I.RACING_LINE},
    "reversing_on_centre": {I.REVERSE},
    "crashed": set(),
    "crashed_at_rest": set(),
}


@pytest.mark.parametrize("name", sorted(HISTORIES))
@pytest.mark.parametrize("instruction", list(I))
def test_rule_labels_on_hand_made_histories(name, instruction):
    history = HISTORIES[name]
    offsets = history.race_d if history.race_d is not None else np.full(N, 0.6)
    expected = instruction in EXPECTED_TRUE[name]
    assert label(history, instruction, offsets) is expected, (name, instruction)


def test_every_instruction_has_true_and_false_hand_made_cases():
    for instruction in I:
        assert any(instruction in t for t in EXPECTED_TRUE.values()), instruction
        assert any(instruction not in t for t in EXPECTED_TRUE.values()), instruction


def test_label_accepts_strings_and_thresholds():
    h = HISTORIES["almost_fast"]
    assert label(h, "faster_than_3", np.zeros(N)) is False
    assert label(h, I.FASTER_THAN_3, np.zeros(N), LabelThresholds(fast_speed=2.9)) is True
    with pytest.raises(ValueError, match="unknown decision instruction"):
        label(h, "fly")


def test_racing_line_offsets_from_history_argument_or_racing_line():
    h = HISTORIES["racing_line"]
    assert label(h, I.RACING_LINE) is True  # history.race_d
    assert label(h, I.RACING_LINE, np.zeros(N)) is False  # the argument overrides it
    no_race = make(2.0)
    with pytest.raises(ValueError, match="racing-line offsets"):
        label(no_race, I.RACING_LINE)
    with pytest.raises(ValueError, match="30 samples"):
        label(no_race, I.RACING_LINE, np.zeros(5))
    track = load_track("oval")
    rl = compute_racing_line(track)
    s = np.linspace(3.0, 9.0, N)
    on_line = StateHistory(s=s, d=rl.offset_at(s), v=np.full(N, 2.5), vs=np.full(N, 2.5),
                           wall_left=np.full(N, 0.5), wall_right=np.full(N, 1.7))
    assert label(on_line, I.RACING_LINE, rl) is True
    assert label_all(on_line, rl)[I.CENTRELINE] is False


def test_state_history_validation_and_reversing_flag():
    with pytest.raises(ValueError, match="samples"):
        StateHistory(s=[0, 1], d=[0], v=[0, 0], vs=[0, 0], wall_left=[1, 1], wall_right=[1, 1])
    with pytest.raises(ValueError, match="NaN"):
        StateHistory(s=[0.0], d=[math.nan], v=[0], vs=[0], wall_left=[1], wall_right=[1])
    h = make(np.linspace(-1.0, 1.0, N))
    assert h.reversing[0] and not h.reversing[-1]
    assert h.crashed == (False,) * N
    assert isinstance(h.v, tuple) and h == make(np.linspace(-1.0, 1.0, N))


def test_to_text_is_compact_and_holds_the_numbers():
    h = HISTORIES["reversing_on_centre"]
    text = h.to_text()
    lines = text.splitlines()
    assert len(lines) == N + 2
    assert lines[1].split() == ["s", "d", "v", "vs", "wl", "wr", "dr", "rev", "crash"]
    assert lines[2].split() == ["4.9", "0.00", "-1.00", "-1.00", "1.10", "1.10", "0.00", "1", "0"]
    assert all(len(line) <= 50 for line in lines[1:])
    assert len(text) < 2000
    assert "-0.00" not in text
    plain = make(2.0, d=-0.3).to_text()
    assert "dr" not in plain.splitlines()[1].split()
    assert "-0.30" in plain and "2.00" in plain


# -- simulated behaviours -----------------------------------------------------------------------
@pytest.mark.parametrize("spec, instruction", [
    (BehaviourSpec(Behaviour.STILL, 0.0, start_frac=0.1), I.DONT_MOVE),
    (BehaviourSpec(Behaviour.REVERSE, -1.0, start_frac=0.3), I.REVERSE),
    (BehaviourSpec(Behaviour.FAST, 4.0, start_frac=0.5), I.FASTER_THAN_3),
    (BehaviourSpec(Behaviour.CENTRELINE, 2.0, start_frac=0.7), I.CENTRELINE),
    (BehaviourSpec(Behaviour.LEFT_WALL, 1.5, lateral="left_wall", offset=0.35, start_frac=0.2), I.LEFT_WALL),
    (BehaviourSpec(Behaviour.RACING_LINE, 2.5, lateral="racing_line", start_frac=0.4), I.RACING_LINE),
    (BehaviourSpec(Behaviour.OSCILLATING, 2.7, lateral="sine", amplitude=0.5, wavelength=5.5, start_frac=0.6),
     I.OSCILLATE),
])
@pytest.mark.parametrize("track", ["oval", "hairpin"])
def test_simulated_behaviour_gets_the_expected_label(spec, instruction, track):
    h = simulate_history(spec, track)
    assert len(h) == 30 and h.track == track
    assert not any(h.crashed)
    labels = label_all(h)
    assert labels[instruction] is True
    if instruction is not I.DONT_MOVE:
        assert labels[I.DONT_MOVE] is False


def test_crash_behaviour_crashes_inside_the_window_and_is_false_everywhere():
    spec = BehaviourSpec(Behaviour.CRASH, 2.0, start_frac=0.1, crash_after=0.5, crash_side=-1)
    h = simulate_history(spec, "oval")
    assert not h.crashed[0] and h.crashed[-1]
    assert h.v[-1] == 0.0 and h.v[0] > 1.5
    assert not any(label_all(h).values())


def test_simulation_is_deterministic_and_history_config_is_used():
    spec = sample_behaviour(Behaviour.FORWARD, np.random.default_rng(3), load_track("oval"))
    a = simulate_history.__wrapped__(spec, "oval")
    b = simulate_history.__wrapped__(spec, "oval")
    assert a == b
    short = simulate_history(spec, "oval", HistoryConfig(warmup_s=0.5, duration_s=1.0, sample_hz=5.0))
    assert len(short) == 5 and short.sample_hz == 5.0
    with pytest.raises(ValueError, match="integer multiple"):
        HistoryConfig(sample_hz=3.0)


def test_behaviour_draws_vary():
    rng = np.random.default_rng(0)
    track = load_track("oval")
    forward = [sample_behaviour(Behaviour.FORWARD, rng, track) for _ in range(60)]
    speeds = [f.v_ref for f in forward]
    assert min(speeds) < 1.5 and max(speeds) > 3.0  # straddles the 3 m/s threshold
    offsets = [abs(f.offset) for f in forward]
    assert min(offsets) < 0.05 and max(offsets) > 0.4
    assert len({f for f in forward}) == 60


# -- phrasings ----------------------------------------------------------------------------------
def test_phrasings_are_disjoint_and_canonical_text_is_in_train():
    for ins in I:
        train, val, test = phrasings(ins, "train"), phrasings(ins, "validation"), phrasings(ins, "test")
        assert len(train) == 10 and len(val) == 2 and len(test) >= 4
        assert ins.text == train[0]
    assert I.FASTER_THAN_3.text == "Drive faster than 3 m/s."
    owner: dict[str, str] = {}
    for split in ("train", "validation", "test"):
        for ins in I:
            for p in phrasings(ins, split):
                assert owner.setdefault(" ".join(p.lower().split()), split) == split, p
    with pytest.raises(ValueError, match="unknown split 'heldout'"):
        phrasings(I.REVERSE, "heldout")


# -- datasets -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_set():
    return generate_decision_dataset(20, "train", seed=0)


def test_dataset_is_balanced_per_instruction(train_set):
    assert len(train_set) == 8 * 20
    for ins in I:
        exs = [e for e in train_set if e.instruction is ins]
        assert sum(e.label for e in exs) == 10 and len(exs) == 20
        assert len({id(e.history) for e in exs}) == 20  # no history twice for one instruction
        assert all(e.phrasing in phrasings(ins, "train") for e in exs)
    assert all(e.label is label(e.history, e.instruction) for e in train_set)
    assert {e.history.track for e in train_set} == {"oval"}
    assert len({e.behaviour for e in train_set}) >= 6


def test_dataset_deterministic_under_seed_and_different_across_seeds():
    a = generate_decision_dataset(6, "train", seed=11)
    b = generate_decision_dataset(6, "train", seed=11)
    c = generate_decision_dataset(6, "train", seed=12)
    assert a == b
    assert a != c


@pytest.mark.parametrize("split, track", [("validation", "hairpin"), ("test", "esses")])
def test_evaluation_datasets_use_their_split_phrasings_and_track(split, track):
    ds = generate_decision_dataset(4, split, seed=1)
    assert len(ds) == 32
    assert {e.history.track for e in ds} == {track}
    assert all(e.phrasing in phrasings(e.instruction, split) for e in ds)
    for ins in I:
        assert sum(e.label for e in ds if e.instruction is ins) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_per_instruction=3), "even and >= 2"),
    (dict(n_per_instruction=0), "even and >= 2"),
    (dict(n_per_instruction=1), "even and >= 2"),
    (dict(n_per_instruction=2.0), "must be an int"),
    (dict(n_per_instruction=4, split="heldout"), "unknown split"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_decision_dataset(**kwargs)


def test_simulation_budget_is_enforced():
    with pytest.raises(RuntimeError, match="still short"):
        generate_decision_dataset(20, "train", seed=5, max_simulations=3)


# -- metric -------------------------------------------------------------------------------------
def test_decision_accuracy():
    h = HISTORIES["still"]
    exs = [DecisionExample(I.DONT_MOVE, "Don't move.", h, lab, "still") for lab in (True, True, False, True)]
    assert decision_accuracy([True, False, None, True], exs) == 0.5
    assert decision_accuracy([True, True, False, True], exs) == 1.0
    assert decision_accuracy([False, True], [False, True]) == 1.0
    with pytest.raises(ValueError, match="2 predictions for 4"):
        decision_accuracy([True, True], exs)
    with pytest.raises(ValueError, match="no examples"):
        decision_accuracy([], [])
    with pytest.raises(ValueError, match="bool or None"):
        decision_accuracy(["yes"], [True])
