"""Reading the decision prompt's history table back, and the labelling rules applied to it.

Why: a model can only learn the decision labels if they can be recomputed from the text it is shown
(the table is subsampled and rounded to whole centimetres). This reader parses the text alone --
it shares nothing with the prompt builder but the column names -- so the prompt tests and
``bench/label_recovery.py`` can measure how often the rules of
:class:`~edge_runtime.tasks.decision.LabelThresholds` give the true label from what the prompt shows.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.tasks.decision import DEFAULT_THRESHOLDS, DecisionInstruction, _sign_changes


def parse_history_text(prompt: str) -> tuple[dict[str, np.ndarray], bool]:
    """The compact history of a decision prompt: its columns in SI units, and the crashed flag."""
    lines = prompt.split("\n")
    header = lines[1].split()
    rows = []
    for line in lines[2:]:
        if line.startswith("Summary: "):
            continue
        if line.startswith("Crashed: "):
            crashed = {"yes": True, "no": False}[line.split(": ")[1]]
            break
        rows.append([int(x) / 100.0 for x in line.split()])
    table = np.array(rows)
    return {name: table[:, i] for i, name in enumerate(header)}, crashed


def rules_from_text(prompt: str, ins: DecisionInstruction) -> bool:
    """The rules of decision.LabelThresholds, applied to what the prompt shows."""
    t = DEFAULT_THRESHOLDS
    cols, crashed = parse_history_text(prompt)
    if crashed:
        return False
    v, d = cols["v"], cols["d"]
    forward = v.mean() > t.forward_speed
    return {
        DecisionInstruction.DONT_MOVE: lambda: np.abs(v).max() < t.still_speed,
        DecisionInstruction.REVERSE: lambda: v.mean() < t.reverse_speed,
        DecisionInstruction.DRIVE_FORWARD: lambda: forward,
        DecisionInstruction.OSCILLATE: lambda: (_sign_changes(d - d.mean(), t.oscillation_band)
                                                >= t.oscillation_crossings and np.ptp(d) > t.oscillation_p2p),
        DecisionInstruction.LEFT_WALL: lambda: forward and cols["wl"].mean() < t.left_wall_distance,
        DecisionInstruction.CENTRELINE: lambda: forward and np.sqrt(np.mean(d ** 2)) < t.centreline_rms,
        DecisionInstruction.FASTER_THAN_3: lambda: v.mean() > t.fast_speed,
        DecisionInstruction.RACING_LINE: lambda: forward and np.sqrt(np.mean(cols["dr"] ** 2)) < t.racing_line_rms,
    }[ins]()
