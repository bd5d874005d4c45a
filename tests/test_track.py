"""Track geometry: Frenet conversion, CSV loading and its errors, the built-ins, the racing line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.sim import (
    BUILTIN_TRACKS,
    SPLIT_TRACKS,
    TEST_TRACK,
    TRAIN_TRACK,
    VALIDATION_TRACK,
    Track,
    TrackFormatError,
    compute_racing_line,
    load_track,
    split_track,
)
from edge_runtime.sim.racing_line import RacingLineConfig
from edge_runtime.sim.track import wrap_angle

# -- built-ins --------------------------------------------------------------------------------------


@pytest.fixture(params=BUILTIN_TRACKS, scope="session")
def builtin_track(request) -> Track:
    """Every built-in track (overrides the conftest fixture, which predates the test track)."""
    return load_track(request.param)


def test_builtin_tracks(oval, hairpin):
    assert set(BUILTIN_TRACKS) == {TRAIN_TRACK, VALIDATION_TRACK, TEST_TRACK} == {"oval", "hairpin", "esses"}
    assert oval.length == pytest.approx(2 * 12.0 + 2 * math.pi * 4.0, rel=0.01)
    assert 60.0 < hairpin.length < 80.0
    assert load_track("oval") is oval  # cached


def test_one_track_per_split():
    assert SPLIT_TRACKS == {"train": "oval", "validation": "hairpin", "test": "esses"}
    assert [split_track(s) for s in ("train", "validation", "test")] == ["oval", "hairpin", "esses"]
    with pytest.raises(ValueError, match="unknown split 'heldout'.*train, validation, test"):
        split_track("heldout")


def test_test_track_has_its_own_character(hairpin):
    """esses differs from oval and hairpin: the width changes along the lap, an S-bend (curvature
    of both signs in a row), a long fast sweeper and a tight corner."""
    tr = load_track(TEST_TRACK)
    assert 45.0 < tr.length < 65.0
    width = tr.w_left + tr.w_right
    assert width.max() - width.min() > 0.8  # narrow S-bend, wide front straight
    assert np.ptp(hairpin.w_left + hairpin.w_right) < 1e-6  # the validation track has one width
    assert tr.curvature.min() < -0.2  # the S-bend turns right on a left-hand circuit
    radius = 1.0 / np.maximum(np.abs(tr.curvature), 1e-9)
    assert radius.min() < 2.0  # the tight corner
    sweeper = (radius > 4.5) & (radius < 8.0) & (tr.curvature > 0)
    assert sweeper.sum() * tr.step > 12.0  # a long constant-ish fast left-hander


def test_default_parameters_lap_the_test_track_and_its_racing_line_exists():
    """The MPC with the default parameter set laps esses without crashing (the baseline of control
    adaptability must exist there), and a racing line is computed."""
    from edge_runtime.control.params import DEFAULT_PARAMS
    from edge_runtime.sim.racing_line import racing_line_for
    from edge_runtime.tasks.closed_loop import EvalConfig, rollout

    tr = load_track(TEST_TRACK)
    traj, failures = rollout(DEFAULT_PARAMS, EvalConfig(track=TEST_TRACK, duration=30.0))
    assert not traj.crashed and failures == 0
    assert traj.progress >= tr.length - 0.5  # a full lap (the window stops after one)
    w_left, w_right = tr.widths_at(traj.s)
    assert np.all(traj.d < w_left) and np.all(-traj.d < w_right)
    line = racing_line_for(TEST_TRACK)
    assert np.abs(line.d).max() > 0.3 and np.all(np.isfinite(line.d))


def test_total_turning_is_one_lap(builtin_track):
    tr = builtin_track
    assert np.sum(tr.curvature) * tr.step == pytest.approx(2 * math.pi * tr.direction, abs=5e-3)
    assert tr.heading_at(tr.length - 1e-9) == pytest.approx(tr.heading[0] + 2 * math.pi * tr.direction, abs=1e-3)


def test_unknown_track_name():
    with pytest.raises(TrackFormatError, match="unknown track 'monza'.*oval, hairpin, esses"):
        load_track("monza")


# -- Frenet -----------------------------------------------------------------------------------------


def test_frenet_round_trip(builtin_track):
    tr = builtin_track
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.uniform(0.0, tr.length, 400),
                        rng.uniform(-0.05, 0.05, 200) % tr.length,  # both sides of the seam
                        [0.0, tr.step, tr.length - 1e-9, tr.length - 0.05, 0.05]])
    w_left, w_right = tr.widths_at(s)
    d = rng.uniform(-1.0, 1.0, len(s)) * np.where(rng.random(len(s)) < 0.5, w_left, w_right)
    x, y = tr.from_frenet(s, d)
    for si, di, xi, yi in zip(s, d, x, y):
        fp = tr.to_frenet(float(xi), float(yi))
        assert abs(tr.signed_progress(si, fp.s)) < 1e-6, (si, di, fp)
        assert fp.d == pytest.approx(di, abs=1e-6)
        assert 0.0 <= fp.s < tr.length
        # The local search from a nearby hint finds the same point.
        near = tr.to_frenet(float(xi), float(yi), hint=fp.index + 3)
        assert abs(tr.signed_progress(fp.s, near.s)) < 1e-9 and near.d == pytest.approx(fp.d, abs=1e-9)


def test_frenet_scalar_and_array_agree(oval):
    s = np.array([0.3, 17.2, 40.0])
    x, y = oval.from_frenet(s, 0.4)
    for i in range(3):
        xi, yi = oval.from_frenet(float(s[i]), 0.4)
        assert (xi, yi) == pytest.approx((x[i], y[i]))


def test_positive_d_is_left_of_the_driving_direction(builtin_track):
    tr = builtin_track
    for s in (1.0, 20.0, 45.0):
        x0, y0 = tr.from_frenet(s, 0.0)
        x1, y1 = tr.from_frenet(s, 0.5)
        th = tr.heading_at(s)
        cross = math.cos(th) * (y1 - y0) - math.sin(th) * (x1 - x0)
        assert cross == pytest.approx(0.5)


def test_heading_error_sign(oval):
    s = 5.0
    th = float(oval.heading_at(s))
    assert oval.heading_error(s, th + 0.1) == pytest.approx(0.1)  # yawed to the left: positive
    assert oval.heading_error(s, th - 0.1) == pytest.approx(-0.1)
    assert oval.heading_error(s, th + 2 * math.pi + 0.1) == pytest.approx(0.1)
    assert oval.heading_error(s, th + math.pi) == pytest.approx(math.pi)


def test_wrap_angle():
    assert wrap_angle(math.pi) == pytest.approx(math.pi)
    assert wrap_angle(-math.pi) == pytest.approx(math.pi)  # (-pi, pi]
    assert wrap_angle(3 * math.pi / 2) == pytest.approx(-math.pi / 2)
    assert wrap_angle(-7.0) == pytest.approx(-7.0 + 2 * math.pi)


def test_signed_progress_across_the_seam(oval):
    L = oval.length
    assert oval.signed_progress(L - 0.05, 0.03) == pytest.approx(0.08)
    assert oval.signed_progress(0.03, L - 0.05) == pytest.approx(-0.08)
    assert oval.signed_progress(10.0, 12.5) == pytest.approx(2.5)
    assert oval.signed_progress(12.5, 10.0) == pytest.approx(-2.5)
    assert oval.signed_progress(3.0, 3.0) == 0.0


def test_lookups_wrap_around(oval):
    L = oval.length
    assert oval.curvature_at(L + 1.0) == pytest.approx(oval.curvature_at(1.0))
    assert oval.widths_at(-1.0)[0] == pytest.approx(oval.widths_at(L - 1.0)[0])
    assert oval.wrap_s(L + 0.5) == pytest.approx(0.5)
    assert np.allclose(oval.wrap_s(np.array([-0.5, L])), [L - 0.5, 0.0])


# -- CSV ----------------------------------------------------------------------------------------------


def _circle_rows(n: int = 24, r: float = 5.0, w_right: float = 0.8, w_left: float = 1.0) -> list[str]:
    return [f"{r * math.cos(2 * math.pi * i / n):.6f}, {r * math.sin(2 * math.pi * i / n):.6f}, {w_right}, {w_left}"
            for i in range(n)]


def _write(tmp_path, lines, name="track.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_round_trip(tmp_path, hairpin):
    path = tmp_path / "hairpin_copy.csv"
    hairpin.to_csv(path)
    back = Track.from_csv(path)
    assert back.name == "hairpin_copy" and back.source == str(path)
    assert back.length == pytest.approx(hairpin.length, rel=1e-4)
    assert back._n == hairpin._n
    assert np.allclose(back.x, hairpin.x, atol=2e-3) and np.allclose(back.y, hairpin.y, atol=2e-3)
    assert np.allclose(back.w_left, hairpin.w_left, atol=1e-5)
    assert np.allclose(back.w_right, hairpin.w_right, atol=1e-5)
    assert load_track(path).length == pytest.approx(back.length)  # by path, too


def test_csv_header_comments_and_closing_point(tmp_path):
    rows = _circle_rows()
    plain = Track.from_csv(_write(tmp_path, rows, "plain.csv"))
    decorated = Track.from_csv(_write(tmp_path, [
        "# a circle, radius 5 m", "x_m, y_m, w_tr_right_m, w_tr_left_m", "", *rows[:5],
        "   # comment between rows", *rows[5:], rows[0]], "decorated.csv"))
    assert decorated._n == plain._n
    assert np.allclose(decorated.x, plain.x) and np.allclose(decorated.y, plain.y)
    assert decorated.length == pytest.approx(2 * math.pi * 5.0, rel=1e-3)
    assert decorated.w_right[0] == pytest.approx(0.8) and decorated.w_left[0] == pytest.approx(1.0)
    semicolons = Track.from_csv(_write(tmp_path, [r.replace(",", ";") for r in rows], "semi.csv"))
    assert semicolons.length == pytest.approx(plain.length)


@pytest.mark.parametrize("bad_line, pattern", [
    ("1.0, abc, 0.5, 0.5", r"bad\.csv:4: 'abc' is not a number"),
    ("1.0, 2.0, 0.5", r"bad\.csv:4: expected 4 columns .* got 3"),
    ("1.0, 2.0, 0.5, 0.5, 9", r"bad\.csv:4: expected 4 columns .* got 5"),
    ("1.0, 2.0, -0.5, 0.5", r"bad\.csv:4: w_right must be > 0"),
    ("1.0, 2.0, 0.5, 0", r"bad\.csv:4: w_left must be > 0"),
    ("1.0, nan, 0.5, 0.5", r"bad\.csv:4: column y is nan"),
    ("inf, 2.0, 0.5, 0.5", r"bad\.csv:4: column x is inf"),
])
def test_csv_errors_name_file_and_line(tmp_path, bad_line, pattern):
    rows = _circle_rows()
    path = _write(tmp_path, ["x,y,w_right,w_left", *rows[:2], bad_line, *rows[2:]], "bad.csv")
    with pytest.raises(TrackFormatError, match=pattern):
        Track.from_csv(path)


def test_csv_non_numeric_first_row_is_not_taken_for_a_header(tmp_path):
    rows = _circle_rows()
    path = _write(tmp_path, ["# no header", "1.0, abc, 0.5, 0.5", *rows], "bad.csv")
    with pytest.raises(TrackFormatError, match=r"bad\.csv:2: 'abc' is not a number"):
        Track.from_csv(path)


def test_csv_too_few_points(tmp_path):
    rows = _circle_rows(n=3)
    with pytest.raises(TrackFormatError, match=r"short\.csv: a closed track needs at least 4 .* got 3"):
        Track.from_csv(_write(tmp_path, rows, "short.csv"))
    # The repeated closing point does not count.
    with pytest.raises(TrackFormatError, match="got 3"):
        Track.from_csv(_write(tmp_path, rows + rows[:1], "short.csv"))


def test_csv_missing_and_empty_files(tmp_path):
    with pytest.raises(TrackFormatError, match=r"nope\.csv: track file not found"):
        Track.from_csv(tmp_path / "nope.csv")
    with pytest.raises(TrackFormatError, match=r"nope\.csv: track file not found"):
        load_track(tmp_path / "nope.csv")
    with pytest.raises(TrackFormatError, match=r"empty\.csv: no data rows"):
        Track.from_csv(_write(tmp_path, ["# only a comment", "x,y,w_right,w_left"], "empty.csv"))


def test_csv_repeated_point(tmp_path):
    rows = _circle_rows()
    path = _write(tmp_path, [*rows[:3], rows[2], *rows[3:]], "dup.csv")
    with pytest.raises(TrackFormatError, match=r"dup\.csv:4: centre-line point .* repeats the point of line 3"):
        Track.from_csv(path)


def test_array_validation():
    x = np.array([0.0, 1.0, 1.0, 0.0])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    w = np.full(4, 0.2)  # narrower than the ~0.7 m radius of the spline through the corners
    assert Track("square", x, y, w, w).length > 3.0
    with pytest.raises(TrackFormatError, match="same length"):
        Track("bad", x, y[:3], w, w)
    with pytest.raises(TrackFormatError, match="NaN"):
        Track("bad", x, np.array([0.0, np.nan, 1.0, 1.0]), w, w)
    with pytest.raises(TrackFormatError, match="w_left must be > 0"):
        Track("bad", x, y, w, -w)


# -- racing line --------------------------------------------------------------------------------------


def integrated_squared_curvature(track: Track, s: np.ndarray, d: np.ndarray) -> float:
    """sum(dtheta^2 / ds) over the closed polyline through the points (s, d): int kappa^2 ds."""
    x, y = track.from_frenet(s, d)
    ex, ey = np.roll(x, -1) - x, np.roll(y, -1) - y
    seg = np.hypot(ex, ey)
    theta = np.unwrap(np.arctan2(ey, ex))
    turn = np.diff(np.append(theta, theta[0] + 2 * math.pi * track.direction))
    ds = 0.5 * (seg + np.roll(seg, 1))
    return float(np.sum(turn**2 / ds))


def test_racing_line_within_bounds_and_smoother(builtin_track):
    tr = builtin_track
    cfg = RacingLineConfig()
    line = compute_racing_line(tr, cfg)
    assert line.track_length == tr.length and np.array_equal(line.s, tr.s)
    assert np.all(np.isfinite(line.d)) and np.all(np.isfinite(line.curvature))
    keep = cfg.vehicle_half_width + cfg.safety_margin
    assert np.all(line.d <= tr.w_left - keep + 1e-6)
    assert np.all(line.d >= -(tr.w_right - keep) - 1e-6)
    assert np.abs(line.d).max() > 0.3  # it really uses the track
    # Measured on a grid of its own (0.5 m, not aligned with the 0.25 m optimisation points).
    n = int(round(tr.length / 0.5))
    s = (np.arange(n) + 0.4) * tr.length / n
    centre = integrated_squared_curvature(tr, s, np.zeros(n))
    racing = integrated_squared_curvature(tr, s, line.offset_at(s))
    assert racing < 0.9 * centre, (racing, centre)


# -- degenerate shapes (issue 15, item 5) -------------------------------------------------------------


def _shape_csv(tmp_path, name, points, half_width):
    path = tmp_path / f"{name}.csv"
    path.write_text("x_m,y_m,w_tr_right_m,w_tr_left_m\n"
                    + "".join(f"{x:.6f},{y:.6f},{half_width},{half_width}\n" for x, y in points))
    return path


def _figure_eight():
    return [(10 * math.sin(a), 5 * math.sin(2 * a)) for a in np.linspace(0, 2 * math.pi, 40, endpoint=False)]


def _circle(radius):
    return [(radius * math.cos(a), radius * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 30, endpoint=False)]


@pytest.mark.parametrize("name,points,half_width,reason", [
    ("eight", _figure_eight(), 0.5, r"crosses itself near .*figure-eight"),
    ("collinear", [(float(i), 0.0) for i in range(10)], 0.5, r"lie on one straight line.*no area"),
    ("wide", _circle(3.0), 3.5, r"wider than its turn radius .*left half-width 3.50 m > radius 2.99 m"),
])
def test_degenerate_tracks_are_refused_with_the_reason(tmp_path, name, points, half_width, reason):
    path = _shape_csv(tmp_path, name, points, half_width)
    with pytest.raises(TrackFormatError, match=reason) as info:
        Track.from_csv(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TrackFormatError, match=reason):
        load_track(str(path))


def test_the_same_loop_narrower_than_its_radius_is_accepted(tmp_path):
    track = Track.from_csv(_shape_csv(tmp_path, "circle", _circle(3.0), 1.0))
    assert track.length == pytest.approx(2 * math.pi * 3.0, rel=1e-3)


def test_a_right_turn_too_tight_for_its_right_width_is_refused():
    pts = np.array(_circle(3.0)[::-1])  # clockwise: every turn is a right turn
    with pytest.raises(TrackFormatError, match="right half-width 3.20 m > radius"):
        Track("cw", pts[:, 0], pts[:, 1], np.full(len(pts), 3.2), np.full(len(pts), 0.5))
    assert Track("cw", pts[:, 0], pts[:, 1], np.full(len(pts), 0.5), np.full(len(pts), 3.2)).direction == -1.0


def test_edge_run_refuses_a_degenerate_track_in_one_line(tmp_path, capsys):
    from edge_runtime.runtime.cli import main as edge_run

    path = _shape_csv(tmp_path, "eight", _figure_eight(), 0.5)
    assert edge_run(["--track", str(path), "--duration", "1", "--fast", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "crosses itself" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
