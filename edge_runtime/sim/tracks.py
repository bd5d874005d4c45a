"""The built-in tracks, the track of each evaluation split, and the track registry (name or CSV
path -> Track).

One track per split, so that a score on the validation or test split also measures driving on a
layout training never saw (``SPLIT_TRACKS`` is the single mapping; see docs/evaluation.md):

``oval`` (train): a simple stadium with two long straights.
``hairpin`` (validation): two 180-degree hairpins of ~1.5 m radius, a chicane, a long sweeper and
four straights (~70 m), one constant width. Iterate on it freely.
``esses`` (test): a long fast sweeper, an S-bend, a tight 90-degree corner and a medium one
(~55 m), with the width changing along the lap (a narrow S-bend, a wide front straight). Report
only: nothing is designed after reading its results.
All are 1:10 scale with F1TENTH-sized widths.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .track import Track, TrackFormatError

TRAIN_TRACK = "oval"
VALIDATION_TRACK = "hairpin"
TEST_TRACK = "esses"
SPLIT_TRACKS: dict[str, str] = {"train": TRAIN_TRACK, "validation": VALIDATION_TRACK, "test": TEST_TRACK}


def split_track(split: str) -> str:
    """The built-in track of an evaluation split (train, validation or test)."""
    try:
        return SPLIT_TRACKS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLIT_TRACKS)}") from None


def _stadium(straight: float = 12.0, radius: float = 4.0, spacing: float = 1.0) -> np.ndarray:
    pts = []
    n_straight = max(2, int(straight / spacing))
    n_arc = max(6, int(math.pi * radius / spacing))
    for i in range(n_straight):  # bottom straight, +x
        pts.append((straight * i / n_straight, 0.0))
    for i in range(n_arc):  # right end, counter-clockwise
        a = -math.pi / 2 + math.pi * i / n_arc
        pts.append((straight + radius * math.cos(a), radius + radius * math.sin(a)))
    for i in range(n_straight):  # top straight, -x
        pts.append((straight - straight * i / n_straight, 2 * radius))
    for i in range(n_arc):  # left end
        a = math.pi / 2 + math.pi * i / n_arc
        pts.append((radius * math.cos(a), radius + radius * math.sin(a)))
    return np.array(pts)


def _arc(cx: float, cy: float, radius: float, a0: float, a1: float, n: int) -> list[tuple[float, float]]:
    """Points on a circular arc from angle a0 to a1 (degrees), end point excluded."""
    return [(cx + radius * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
             cy + radius * math.sin(math.radians(a0 + (a1 - a0) * i / n))) for i in range(n)]


def _hairpin_points() -> np.ndarray:
    pts: list[tuple[float, float]] = []
    pts += [(3.0 + 3.0 * i, 0.0) for i in range(5)]                    # start straight, +x
    pts += _arc(18.0, 4.5, 4.5, -90.0, 90.0, 8)                        # long left sweeper
    pts += [(18.0, 9.0), (16.0, 9.0), (14.5, 9.35), (13.0, 10.15),      # chicane, -x
            (11.5, 10.15), (10.0, 9.35), (8.5, 9.0), (6.0, 9.0), (4.5, 9.0)]
    pts += _arc(3.0, 7.5, 1.5, 90.0, 270.0, 6)                         # left hairpin
    pts += [(3.0, 6.0), (5.0, 6.0), (7.0, 6.0)]                        # short straight, +x
    pts += _arc(8.5, 4.5, 1.5, 90.0, -90.0, 6)                         # right hairpin
    pts += [(8.5, 3.0), (6.5, 3.0), (4.5, 3.0)]                        # short straight, -x
    pts += _arc(3.0, 1.5, 1.5, 90.0, 270.0, 6)[1:]                     # left hairpin onto the start
    return np.array(pts)


def _esses_points() -> tuple[np.ndarray, np.ndarray]:
    """Centre-line points and the half width at each (the same on both sides)."""
    pts: list[tuple[float, float, float]] = []

    def add(points: list[tuple[float, float]], half_width: float) -> None:
        pts.extend((x, y, half_width) for x, y in points)

    add([(5.0 + 1.5 * i, 0.0) for i in range(6)], 1.2)                 # wide front straight, +x
    add(_arc(14.0, 6.0, 6.0, -90.0, 90.0, 12), 1.05)                   # long fast left sweeper
    add([(12.6, 12.0), (11.5, 12.3), (10.5, 13.0), (9.5, 13.8),         # narrow S-bend, -x
         (8.5, 14.3), (7.3, 14.5), (6.0, 14.5), (5.0, 14.5)], 0.75)
    add(_arc(4.0, 13.0, 1.5, 90.0, 180.0, 3), 0.85)                    # tight left corner
    add([(2.5, 13.0 - 1.5 * i) for i in range(7)], 1.0)                # back straight, -y
    add(_arc(5.0, 2.5, 2.5, 180.0, 270.0, 4), 1.1)                     # medium left corner onto the start
    a = np.array(pts)
    return a[:, :2], a[:, 2]


@lru_cache(maxsize=None)
def _builtin(name: str) -> Track:
    if name == "oval":
        pts = _stadium()
        w = np.full(len(pts), 1.1)
        return Track("oval", pts[:, 0], pts[:, 1], w, w, source="builtin:oval")
    if name == "hairpin":
        pts = _hairpin_points()
        w = np.full(len(pts), 0.9)
        return Track("hairpin", pts[:, 0], pts[:, 1], w, w, source="builtin:hairpin")
    if name == "esses":
        pts, w = _esses_points()
        return Track("esses", pts[:, 0], pts[:, 1], w, w, source="builtin:esses")
    raise KeyError(name)


BUILTIN_TRACKS = ("oval", "hairpin", "esses")


def load_track(name_or_path: str | Path) -> Track:
    """A built-in track by name, or a track CSV (x, y, w_right, w_left) by path."""
    key = str(name_or_path)
    if key in BUILTIN_TRACKS:
        return _builtin(key)
    path = Path(key)
    if path.suffix.lower() == ".csv" or path.exists():
        return _load_csv_cached(str(path.resolve()))
    raise TrackFormatError(
        f"unknown track {key!r}: use one of {', '.join(BUILTIN_TRACKS)} or a path to a CSV file "
        "with columns x, y, w_right, w_left")


@lru_cache(maxsize=16)
def _load_csv_cached(path: str) -> Track:
    return Track.from_csv(path)
