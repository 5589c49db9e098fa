"""INDIS: few-step diffusion and flow-matching sampling with instance-aware discretizations.

The pure-PyTorch solvers here are the specification and the only copy of the maths; the native sampler loop
(`indis._C`, csrc/) runs the same per-step linear form for speed on the solvers' step tables
(`indis.solvers.step_tables`).
"""
__version__ = "0.1.0"

from .discretization import Discretization, DiscretizationParam, Warp
from .processes import PREDICTION_TYPES, EDMProcess, FlowOTProcess, Process, VPCosineProcess, VPLinearProcess, get_process
from .schedules import flow_shift, get_schedule
from .solvers import SOLVERS, get_solver, linear_form, make_grid, sample

__all__ = [
    "__version__",
    "Discretization",
    "DiscretizationParam",
    "EDMProcess",
    "FlowOTProcess",
    "PREDICTION_TYPES",
    "Process",
    "SOLVERS",
    "VPCosineProcess",
    "VPLinearProcess",
    "Warp",
    "flow_shift",
    "get_process",
    "get_schedule",
    "get_solver",
    "linear_form",
    "make_grid",
    "sample",
]
