import numpy as np
import pytest

from edge_runtime.control import DEFAULT_PARAMS, FrenetMPC, MPCConfig, MPCParams
from edge_runtime.sim.track_sim import TrackSimConfig, TrackSimulator


def drive(track: str, params: MPCParams, seconds: float, config: MPCConfig | None = None):
    sim = TrackSimulator(TrackSimConfig(track=track))
    mpc = FrenetMPC(sim.track, params, config)
    state = sim.state()
    states, results = [], []
    for _ in range(int(seconds * 20)):
        res = mpc.step(state)
        state = sim.step(res.command, 0.05)
        states.append(state)
        results.append(res)
        if state.crashed:
            break
    return sim, mpc, states, results


@pytest.mark.slow
@pytest.mark.parametrize("track", ["oval", "hairpin"])
def test_default_parameters_lap_without_crash(track):
    sim, mpc, states, results = drive(track, DEFAULT_PARAMS, 60.0)
    assert not states[-1].crashed
    assert states[-1].progress > 2 * sim.track.length  # at least two full laps in 60 s
    assert mpc.failures == 0
    assert all(r.ok and r.status.startswith("solved") for r in results)
    assert all(r.solve_time > 0 for r in results)
    assert max(abs(s.d) for s in states) < min(sim.track.w_left.min(), sim.track.w_right.min())


def test_reverses_when_speed_bounds_are_negative():
    params = MPCParams(v_min=-2.0, v_max=-1.0)
    sim, mpc, states, _ = drive("hairpin", params, 20.0)
    assert not states[-1].crashed
    v = np.array([s.v for s in states[40:]])
    assert np.all(v < 0) and abs(v.mean() + 1.0) < 0.1
    assert states[-1].progress < -15.0  # drove backwards along the track


def test_reference_speed_is_tracked():
    sim, mpc, states, _ = drive("oval", MPCParams(v_max=2.9, v_min=0.0), 20.0)
    v = np.array([s.v for s in states[60:]])
    assert abs(v.mean() - 2.9) < 0.1


def test_parameter_swap_takes_effect():
    sim = TrackSimulator(TrackSimConfig(track="oval"))
    mpc = FrenetMPC(sim.track, DEFAULT_PARAMS)
    state = sim.state()
    for _ in range(100):
        state = sim.step(mpc.step(state).command, 0.05)
    assert state.v > 4.0
    mpc.set_params(MPCParams(v_max=1.5, v_min=0.0))
    for _ in range(100):
        state = sim.step(mpc.step(state).command, 0.05)
    assert abs(state.v - 1.5) < 0.15


def test_failed_solve_brakes_and_is_counted():
    sim = TrackSimulator(TrackSimConfig(track="oval", start_speed=3.0))
    # An iteration cap too small to converge on the first solve: OSQP reports max-iterations.
    mpc = FrenetMPC(sim.track, DEFAULT_PARAMS, MPCConfig(max_iter=10, eps=1e-9))
    res = mpc.step(sim.state())
    assert not res.ok and mpc.failures == 1
    assert res.command.accel < 0  # brake
    assert res.command.steer == pytest.approx(sim.state().steer)
    # The fallback command at standstill does not start moving backwards.
    assert mpc.fallback_command(TrackSimulator(TrackSimConfig(track="oval")).state()).accel == 0.0


def test_config_validation():
    with pytest.raises(ValueError, match="horizon"):
        MPCConfig(horizon=1)
    with pytest.raises(ValueError, match="rate_hz"):
        MPCConfig(rate_hz=0.0)
