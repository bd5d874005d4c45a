"""Simulators behind one small protocol, and a registry to create them by name.

Gymnasium style: ``make_simulator("track", track="hairpin")`` builds the embedded track simulator
from :class:`TrackSimConfig` keyword arguments; ``register_simulator(name, factory)`` adds a
backend. ``make_simulator("carla", host=, port=, town=, ...)`` builds the CARLA backend from
:class:`~edge_runtime.sim.carla_sim.CarlaSimConfig` keyword arguments (plus ``carla_module``, a
stand-in for the ``carla`` package in tests); it is offered as runnable when the ``carla`` package
is installed (the ``carla`` extra), and otherwise refuses with a one-line reason.

Imports stay light: numpy only at import time (scipy.interpolate loads when a track is built, the
racing line's osqp/scipy.sparse on first use of its names), no gymnasium (the Gymnasium
environment lives in :mod:`edge_runtime.sim.gym_env`; import it to register
``edge_runtime/Track-v0``), never torch.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

from .protocol import ControlCommand, Simulator, VehicleState
from .track import Track, TrackFormatError
from .track_sim import TrackSimConfig, TrackSimulator
from .tracks import (BUILTIN_TRACKS, SPLIT_TRACKS, TEST_TRACK, TRAIN_TRACK, VALIDATION_TRACK, load_track,
                     split_track)
from .vehicle import SingleTrackModel, VehicleParams

__all__ = [
    "BUILTIN_TRACKS", "SPLIT_TRACKS", "TEST_TRACK", "TRAIN_TRACK", "VALIDATION_TRACK", "ControlCommand",
    "RacingLine", "RacingLineConfig",
    "SimulatorFactory", "SimulatorUnavailableError", "SingleTrackModel", "Simulator", "Track",
    "TrackFormatError", "TrackSimConfig", "TrackSimulator", "VehicleParams", "VehicleState",
    "available_simulators", "compute_racing_line", "load_track", "make_simulator", "register_simulator",
    "registered_simulators",
    "split_track", "vehicle_params_of",
]

SimulatorFactory = Callable[..., Simulator]

_LAZY = {"RacingLine", "RacingLineConfig", "compute_racing_line"}  # from .racing_line (imports osqp)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import racing_line

        return getattr(racing_line, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SimulatorUnavailableError(RuntimeError):
    """A registered simulator backend that cannot run here (not implemented or not installed)."""


_REGISTRY: dict[str, SimulatorFactory] = {}
_UNAVAILABLE: set[str] = set()  # registered so that they refuse clearly, but cannot run


def register_simulator(name: str, factory: SimulatorFactory, *, overwrite: bool = False,
                       available: bool = True) -> None:
    """Register ``factory(**config) -> Simulator`` under ``name``.

    Registering a name twice is an error unless ``overwrite=True`` (a silent replacement would
    make ``make_simulator`` depend on import order). ``available=False`` marks a backend whose
    factory only explains why it cannot run: CLIs then leave it out of the choices they offer."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"simulator name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"simulator factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"simulator {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory
    if available:
        _UNAVAILABLE.discard(name)
    else:
        _UNAVAILABLE.add(name)


def available_simulators() -> tuple[str, ...]:
    """Registered names that can run here (what a CLI offers as choices), sorted."""
    return tuple(n for n in registered_simulators() if n not in _UNAVAILABLE)


def registered_simulators() -> tuple[str, ...]:
    """Names accepted by :func:`make_simulator`, sorted."""
    return tuple(sorted(_REGISTRY))


def make_simulator(name: str, **config: Any) -> Simulator:
    """Create the simulator registered as ``name`` with backend-specific keyword configuration."""
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown simulator {name!r}; registered simulators: {', '.join(registered_simulators())}") from None
    return factory(**config)


def _make_track_simulator(**config: Any) -> TrackSimulator:
    """``TrackSimulator(TrackSimConfig(**config))``; ``track`` may also be a :class:`Track` object."""
    valid = {f.name for f in fields(TrackSimConfig)}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise TypeError(
            f"unknown option(s) for the 'track' simulator: {', '.join(unknown)}; "
            f"valid options (TrackSimConfig fields): {', '.join(sorted(valid))}")
    track = config.get("track")
    if isinstance(track, Track):
        return TrackSimulator(TrackSimConfig(**{**config, "track": track.name}), track=track)
    return TrackSimulator(TrackSimConfig(**config))


def _make_carla_simulator(**config: Any) -> Simulator:
    """``CarlaSimulator(CarlaSimConfig(**config), carla_module=...)``; a missing package or server
    is a :class:`SimulatorUnavailableError` (one line), a bad option a ``TypeError`` naming it."""
    from .carla_sim import CarlaSimConfig, CarlaSimulator, CarlaUnavailable  # carla loads only here

    module = config.pop("carla_module", None)
    valid = {f.name for f in fields(CarlaSimConfig)}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise TypeError(
            f"unknown option(s) for the 'carla' simulator: {', '.join(unknown)}; "
            f"valid options (CarlaSimConfig fields): {', '.join(sorted(valid))}")
    try:
        return CarlaSimulator(CarlaSimConfig(**config), carla_module=module)
    except CarlaUnavailable as exc:
        raise SimulatorUnavailableError(str(exc)) from None


def _carla_installed() -> bool:
    """Whether ``import carla`` can work here (checked without importing it: the import is slow)."""
    import importlib.util

    try:
        return importlib.util.find_spec("carla") is not None
    except (ImportError, ValueError):
        return False


def vehicle_params_of(sim: Simulator) -> VehicleParams:
    """The geometry and steering limits the MPC should plan with for ``sim``'s car.

    A backend that drives its own vehicle (CARLA: a full-size car) says so with a
    ``vehicle_params`` attribute; the others drive the F1TENTH car of :class:`VehicleParams`."""
    params = getattr(sim, "vehicle_params", None)
    return params if isinstance(params, VehicleParams) else VehicleParams()


register_simulator("track", _make_track_simulator)
register_simulator("carla", _make_carla_simulator, available=_carla_installed())
