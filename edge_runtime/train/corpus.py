"""The tokenizer's training text: prompts and answers of both driving tasks, train split only.

Why in ``train/``: building it draws instructions, simulates decision histories and formats
oracle-style answers -- training-data work that sits above ``tasks/`` and ``sim/`` -- while
``model.tokenizer`` only trains, saves and loads a tokenizer from whatever text it is given.
Held-out phrasings and the held-out track never enter the corpus.
"""

from __future__ import annotations

import numpy as np

from ..contracts.task_enums import Category
from ..control.params import MPCParams
from ..sim.tracks import TRAIN_TRACK
from ..tasks.answers import format_decision_answer, format_mpc_answer
from ..tasks.decision import DecisionInstruction, generate_decision_dataset
from ..tasks.decision import phrasings as decision_phrasings
from ..tasks.instructions import SPEED_RANGE, make_instruction, training_phrasings
from ..tasks.prompts import PromptContext, build_decision_prompt, build_mpc_prompt

__all__ = ["task_corpus"]

# A few reason lines per category, so the corpus also covers the optional reasoning of an answer.
_REASONS: dict[Category, tuple[str, ...]] = {
    Category.CENTRELINE: ("Stay centred: raise the lateral and heading weights.",
                          "Centre line: more weight on the offset n."),
    Category.REFERENCE_VELOCITY: ("Track the target speed: set v_max to it and raise qv.",
                                  "Speed target: v_max is the target, qv makes it stick."),
    Category.REVERSE: ("Reverse: allow negative speed with v_min and v_max below zero.",
                       "Drive backwards: negative speed limits."),
    Category.SMOOTH: ("Smooth ride: low accelerations and a high steering rate weight.",
                      "Comfort: limit lateral and longitudinal acceleration."),
    Category.RACING_LINE: ("Racing line: lower the centre line weight and drive faster.",
                           "Race: small safety margin, high lateral acceleration."),
}


def task_corpus(seed: int = 0, mpc_draws: int = 3, decision_per_instruction: int = 20) -> list[str]:
    """Training text for the tokenizer: prompt + answer strings of both tasks, train split only.

    MPC: every training phrasing (curated + compositional) of every category ``mpc_draws`` times, with random target speeds,
    random valid parameter sets (all digits appear), a random context (speed, train track) on
    every other draw and a reason line on every other draw. Decision:
    ``generate_decision_dataset(decision_per_instruction, split="train", seed=seed)``, cycling
    through the train phrasings of each instruction so that every one of them appears.
    """
    if mpc_draws < 1 or decision_per_instruction < 2:
        raise ValueError("task_corpus: need mpc_draws >= 1 and decision_per_instruction >= 2")
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for category in Category:
        for phrasing in training_phrasings(category):
            for k in range(mpc_draws):
                speed = float(rng.uniform(*SPEED_RANGE)) if category is Category.REFERENCE_VELOCITY else None
                ins = make_instruction(category, phrasing, speed)
                context = None
                if k % 2 == 1:
                    context = PromptContext(current_speed=round(float(rng.uniform(-2.0, 10.0)), 1), track=TRAIN_TRACK)
                params = MPCParams.from_unit_vector(list(rng.random(11)))
                reasons = _REASONS[category]
                reason = reasons[int(rng.integers(len(reasons)))] if k % 2 == 0 else None
                texts.append(build_mpc_prompt(ins.text, context) + format_mpc_answer(params, reason))
    examples = generate_decision_dataset(decision_per_instruction, split="train", seed=seed)
    seen: dict[DecisionInstruction, int] = {}
    for ex in examples:
        texts_ins = decision_phrasings(ex.instruction, "train")
        k = seen.get(ex.instruction, 0)
        seen[ex.instruction] = k + 1
        texts.append(build_decision_prompt(ex.history, texts_ins[k % len(texts_ins)]) + format_decision_answer(ex.label))
    return texts
