"""Task enums that the vehicle side, training and evaluation all name.

They live here rather than in :mod:`edge_runtime.tasks` so that telemetry records, reports and
the runtime can name a category without importing the task package's phrasings and classifier.
"""

from __future__ import annotations

import enum

__all__ = ["Category"]


class Category(str, enum.Enum):
    """The five instruction categories of the MPC task (RobotxR1); values are stable file keys."""

    CENTRELINE = "centreline"
    REFERENCE_VELOCITY = "reference_velocity"
    REVERSE = "reverse"
    SMOOTH = "smooth"
    RACING_LINE = "racing_line"
