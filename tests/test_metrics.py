import math

import numpy as np
import pytest

from edge_runtime.contracts.task_enums import Category
from edge_runtime.tasks.instructions import Instruction
from edge_runtime.tasks.metrics import (WORST_ADAPTABILITY, Trajectory, adaptability, category_error, stalled,
                                        summarise_adaptability)


def traj(n=100, d=0.0, v=2.0, ax=0.0, ay=0.0, racing_d=0.0, progress=None, crashed=False, duration=10.0):
    full = lambda x: np.broadcast_to(np.asarray(x, dtype=float), (n,)).copy()
    return Trajectory(t=np.linspace(0.1, duration, n), s=np.linspace(0, 20, n), d=full(d), v=full(v), ax=full(ax),
                      ay=full(ay), racing_d=full(racing_d),
                      progress=progress if progress is not None else 2.0 * duration, crashed=crashed,
                      duration=duration)


CENTRE = Instruction("Drive on the centre line.", Category.CENTRELINE)
SPEED = Instruction("Drive at 2.5 m/s.", Category.REFERENCE_VELOCITY, 2.5)
REVERSE = Instruction("Reverse.", Category.REVERSE)
SMOOTH = Instruction("Drive smoothly.", Category.SMOOTH)
RACING = Instruction("Follow the racing line.", Category.RACING_LINE)


def test_centreline_error_is_rms_offset():
    d = np.array([0.3, -0.4] * 50)
    assert category_error(CENTRE, traj(d=d)) == pytest.approx(math.sqrt((0.09 + 0.16) / 2))


def test_reference_velocity_error_against_target():
    assert category_error(SPEED, traj(v=3.0)) == pytest.approx(0.5)
    assert category_error(SPEED, traj(v=2.5)) == pytest.approx(0.0)


def test_reverse_error_against_minus_one():
    assert category_error(REVERSE, traj(v=-1.0)) == pytest.approx(0.0)
    assert category_error(REVERSE, traj(v=1.0)) == pytest.approx(2.0)


def test_smooth_error_combines_both_accelerations():
    assert category_error(SMOOTH, traj(ax=3.0, ay=4.0)) == pytest.approx(5.0)


def test_racing_line_error_is_offset_from_the_line():
    assert category_error(RACING, traj(d=0.5, racing_d=0.2)) == pytest.approx(0.3)


def test_adaptability_definition_and_clipping():
    assert adaptability(0.5, 1.0) == pytest.approx(0.5)
    assert adaptability(2.0, 1.0) == pytest.approx(-1.0)
    assert adaptability(100.0, 1.0) == WORST_ADAPTABILITY
    assert adaptability(0.1, 1.0, failed=True) == WORST_ADAPTABILITY
    assert adaptability(float("nan"), 1.0) == WORST_ADAPTABILITY


def test_stalled_runs_are_detected():
    assert stalled(CENTRE, traj(progress=2.0, duration=10.0), min_speed=1.0)
    assert not stalled(CENTRE, traj(progress=20.0, duration=10.0), min_speed=1.0)
    assert stalled(REVERSE, traj(progress=1.0), min_speed=1.0)
    assert not stalled(REVERSE, traj(progress=-9.0, duration=10.0), min_speed=1.0)


def test_summary_weighs_categories_equally():
    out = summarise_adaptability([(Category.CENTRELINE, 1.0), (Category.CENTRELINE, 0.0), (Category.SMOOTH, 1.0)])
    assert out["centreline"] == pytest.approx(0.5)
    assert out["overall"] == pytest.approx(0.75)


def test_trajectory_rejects_ragged_arrays():
    with pytest.raises(ValueError, match="Trajectory.d has 3 samples"):
        Trajectory(t=np.zeros(4), s=np.zeros(4), d=np.zeros(3), v=np.zeros(4), ax=np.zeros(4), ay=np.zeros(4),
                   racing_d=np.zeros(4), progress=0.0, crashed=False, duration=1.0)
