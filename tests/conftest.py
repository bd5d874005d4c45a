"""Shared fixtures: the built-in tracks and a simple centre-line-following controller."""

from __future__ import annotations

import math
import os
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a wrong model path must fail, never look like a hub id

from edge_runtime.sim import ControlCommand, Track, VehicleParams, VehicleState, load_track


@pytest.fixture(scope="session")
def oval() -> Track:
    return load_track("oval")


@pytest.fixture(scope="session")
def hairpin() -> Track:
    return load_track("hairpin")


@pytest.fixture(params=["oval", "hairpin"], scope="session")
def builtin_track(request) -> Track:
    return load_track(request.param)


def centreline_command(track: Track, state: VehicleState, v_ref: float, k_d: float = 1.0,
                       k_psi: float = 1.5, k_v: float = 2.0) -> ControlCommand:
    """P-controller on lateral offset and heading error, with curvature feed-forward on steering
    and a P speed loop; the kind of controller any test can reason about."""
    wheelbase = VehicleParams().wheelbase
    kappa = float(track.curvature_at(state.s))
    steer = math.atan(wheelbase * kappa) - k_d * state.d - k_psi * state.heading_error
    return ControlCommand(steer=steer, accel=k_v * (v_ref - state.v))


@pytest.fixture
def follow_centreline() -> Callable[..., ControlCommand]:
    return centreline_command


@pytest.fixture(scope="session")
def sft_examples():
    """A small SFT set of both tasks from the default oracle table (training phrasings)."""
    from edge_runtime.tasks.oracle_table import OracleTable
    from edge_runtime.train.cli import DEFAULT_ORACLE_TABLE
    from edge_runtime.train.sft_data import SFTDataConfig, build_sft_examples

    table = OracleTable.load(DEFAULT_ORACLE_TABLE)
    return build_sft_examples(table, SFTDataConfig(mpc_examples=40, decision_per_instruction=2, seed=0))


@pytest.fixture(scope="session")
def sft_tokenizer(sft_examples):
    """A tiny tokenizer trained on ``sft_examples``."""
    from edge_runtime.model.tokenizer import train_tokenizer

    return train_tokenizer([e.prompt + e.answer for e in sft_examples], vocab_size=400)
