"""The Gymnasium environment around the track simulator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from edge_runtime.sim import TrackSimConfig, VehicleParams  # noqa: E402
from edge_runtime.sim import gym_env  # noqa: E402
from edge_runtime.sim.gym_env import ENV_ID, TrackDrivingEnv  # noqa: E402

NORMALISED_ACTION_WARNING = "we recommend using a symmetric and normalized space"


def _check_env_warnings(env) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("kwargs", [{}, {"track": "hairpin"}])
def test_check_env_physical_actions(kwargs):
    env = gymnasium.make(ENV_ID, **kwargs)
    messages = _check_env_warnings(env)
    # The only warning: the action space is in physical units (rad, m/s^2), not [-1, 1];
    # normalize_actions=True is there for libraries that want that.
    assert all(NORMALISED_ACTION_WARNING in m for m in messages), messages
    env.close()


def test_check_env_normalised_actions_has_no_warnings():
    env = gymnasium.make(ENV_ID, normalize_actions=True)
    assert _check_env_warnings(env) == []
    assert env.action_space.low.tolist() == [-1.0, -1.0] and env.action_space.high.tolist() == [1.0, 1.0]
    env.close()


def test_spaces():
    env = TrackDrivingEnv()
    p = VehicleParams()
    assert env.action_space.dtype == np.float32 and env.observation_space.dtype == np.float32
    assert env.action_space.low == pytest.approx([p.steer_min, -p.accel_max])
    assert env.action_space.high == pytest.approx([p.steer_max, p.accel_max])
    assert env.observation_space.shape == (12,) == (len(env.observation_names),)
    assert np.all(np.isfinite(env.observation_space.low)) and np.all(np.isfinite(env.observation_space.high))
    assert env.observation_names[:2] == ("d", "heading_error") and env.observation_names[-1] == "curvature_4m"


def test_zero_action_episode_runs_to_truncation():
    env = TrackDrivingEnv(max_episode_steps=40)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and not info["crashed"]
    steps, total = 0, 0.0
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        assert obs in env.observation_space and np.isfinite(reward)
        total += reward
        steps += 1
    assert steps == 40 and truncated and not terminated
    assert info["t"] == pytest.approx(40 * 0.05)
    assert total == pytest.approx(0.0, abs=1e-9)  # at rest, no progress


def test_reward_is_progress_and_crash_terminates():
    env = TrackDrivingEnv(max_episode_steps=10_000, crash_penalty=7.0, reset_noise=0.0,
                          sim_config=TrackSimConfig(start_s=6.0))
    env.reset(seed=0)
    # Full throttle, wheel straight: drives off the end of the bottom straight.
    total, last_reward, progress = 0.0, 0.0, 0.0
    for _ in range(10_000):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 3.0], dtype=np.float32))
        total += reward
        last_reward = reward
        if terminated:
            break
        progress = info["progress"]
        assert reward >= 0.0
    assert terminated and not truncated and info["crashed"]
    assert last_reward < -6.0  # the penalty on the crashing step
    assert total == pytest.approx(info["progress"] - 7.0)
    assert progress > 5.0


def test_seeding_is_deterministic():
    def rollout(seed):
        env = TrackDrivingEnv(track="hairpin")
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(123)
        out = [obs]
        for _ in range(30):
            action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
            obs, reward, *_ = env.step(action)
            out.append(np.append(obs, reward))
        return np.concatenate(out)

    assert np.array_equal(rollout(5), rollout(5))
    assert not np.array_equal(rollout(5)[:12], rollout(6)[:12])  # reset noise depends on the seed


def test_unseeded_resets_follow_the_seeded_stream():
    env = TrackDrivingEnv()
    a = [env.reset(seed=9)[0]] + [env.reset()[0] for _ in range(2)]
    b = [env.reset(seed=9)[0]] + [env.reset()[0] for _ in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])


def test_sim_config_and_overrides():
    env = TrackDrivingEnv(sim_config=TrackSimConfig(track="hairpin", physics_hz=100.0), reset_noise=0.0)
    assert env.sim.track.name == "hairpin" and env.sim.config.physics_hz == 100.0
    assert env.sim.config.reset_noise == 0.0
    assert TrackDrivingEnv().sim.config.reset_noise == gym_env.DEFAULT_RESET_NOISE > 0


def test_normalised_actions_are_scaled():
    env = TrackDrivingEnv(normalize_actions=True, reset_noise=0.0)
    env.reset(seed=0)
    env.step(np.array([1.0, 1.0], dtype=np.float32))
    p = VehicleParams()
    assert env.sim.state().v == pytest.approx(p.accel_max * 0.05, rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"control_period": 0.0}, "control_period"),
    ({"control_period": 0.001}, "shorter than the physics step"),
    ({"max_episode_steps": 0}, "max_episode_steps"),
    ({"crash_penalty": -1.0}, "crash_penalty"),
    ({"lookahead": (1.0, float("nan"))}, "lookahead"),
    ({"render_mode": "human"}, "render"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrackDrivingEnv(**kwargs)


def test_bad_actions_and_options():
    env = TrackDrivingEnv()
    with pytest.raises(ValueError, match="options"):
        env.reset(options={"start_s": 3.0})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="2 finite numbers"):
        env.step(np.zeros(3))


def test_registration_is_idempotent():
    assert ENV_ID in gymnasium.registry
    gym_env._register()  # a second registration (e.g. a module reload) must not warn or fail
    env = gymnasium.make(ENV_ID, track="hairpin", max_episode_steps=5)
    assert isinstance(env.unwrapped, TrackDrivingEnv) and env.unwrapped.sim.track.name == "hairpin"
    env.close()
