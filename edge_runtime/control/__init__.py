"""Vehicle control: the OSQP Frenet MPC and its LLM-tunable parameter set (torch-free)."""

from .mpc import FrenetMPC, MPCConfig, MPCResult
from .params import DEFAULT_PARAMS, PARAM_NAMES, PARAM_SPECS, MPCParams, ParameterError, parameter_table_markdown

__all__ = ["FrenetMPC", "MPCConfig", "MPCResult", "MPCParams", "ParameterError", "DEFAULT_PARAMS",
           "PARAM_NAMES", "PARAM_SPECS", "parameter_table_markdown"]
