"""Heuristic discretizations: plain data (1-D tensors of N+1 times), in sampling order.

Convention used everywhere in INDIS: a schedule is strictly decreasing, timesteps[0] = T (start, pure
noise) and timesteps[N] = t0 (end). N network calls happen at timesteps[0..N-1].
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from .processes import Process, get_process

Tensor = torch.Tensor


def _check_n(n: int, t0: float, T: float) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of steps must be a positive integer, got {n!r}")
    if not (0 < t0 < T):
        raise ValueError(f"need 0 < t0 < T, got t0={t0}, T={T}")


def _fix_ends(ts: Tensor, t0: float, T: float) -> Tensor:
    ts = ts.clone()
    ts[0], ts[-1] = T, t0
    return ts


def uniform_t(n: int, t0: float, T: float, dtype=torch.float64) -> Tensor:
    """tau_i evenly spaced in t."""
    _check_n(n, t0, T)
    return torch.linspace(T, t0, n + 1, dtype=dtype)


def uniform_logsnr(process: Process, n: int, t0: float, T: float, dtype=torch.float64) -> Tensor:
    """tau_i evenly spaced in logSNR lambda = log(alpha/sigma)."""
    _check_n(n, t0, T)
    lam = torch.linspace(
        float(process.log_snr(torch.tensor(T, dtype=torch.float64))),
        float(process.log_snr(torch.tensor(t0, dtype=torch.float64))),
        n + 1,
        dtype=torch.float64,
    )
    return _fix_ends(process.t_from_log_snr(lam), t0, T).to(dtype)


def polynomial(process: Process, n: int, t0: float, T: float, rho: float = 7.0, dtype=torch.float64) -> Tensor:
    """EDM's polynomial schedule, in VE-equivalent noise level s = sigma/alpha:
    s_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho. For EDM, s = sigma = t."""
    _check_n(n, t0, T)
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    smax = float(process.ve_sigma(torch.tensor(T, dtype=torch.float64)))
    smin = float(process.ve_sigma(torch.tensor(t0, dtype=torch.float64)))
    i = torch.arange(n + 1, dtype=torch.float64)
    s = (smax ** (1 / rho) + i / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return _fix_ends(process.t_from_log_snr(-torch.log(s)), t0, T).to(dtype)


def time_quadratic(n: int, t0: float, T: float, dtype=torch.float64) -> Tensor:
    """Quadratic in time (DDIM's 'quad'): tau = t0 + (T - t0) (i/N)^2, denser near t0."""
    _check_n(n, t0, T)
    i = torch.arange(n, -1, -1, dtype=torch.float64)
    return _fix_ends(t0 + (T - t0) * (i / n) ** 2, t0, T).to(dtype)


def flow_shift(t: Tensor, shift: float) -> Tensor:
    """Resolution-dependent shift of flow models (SD3/FLUX): t' = s t / (1 + (s - 1) t). Monotone for s > 0."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def shifted_uniform(n: int, t0: float, T: float, shift: float = 3.0, dtype=torch.float64) -> Tensor:
    """Uniform in t, then the flow-matching shift (endpoints are shifted too and then pinned back to [t0, T]).
    Only for times in (0, 1) (flow models)."""
    _check_n(n, t0, T)
    if T >= 1:
        raise ValueError(f"the flow shift schedule needs times in (0, 1) (a flow process), got T={T}")
    u = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
    # choose the unshifted grid so that the shifted endpoints are exactly T and t0
    inv = lambda y: y / (shift - (shift - 1) * y)  # inverse of flow_shift
    lo, hi = inv(torch.tensor(t0, dtype=torch.float64)), inv(torch.tensor(T, dtype=torch.float64))
    return _fix_ends(flow_shift(lo + u * (hi - lo), shift), t0, T).to(dtype)


# FLUX.1's resolution-dependent shift (Black Forest Labs 2024, the defaults of diffusers' FluxPipeline and its
# scheduler config): mu is linear in the image sequence length between (256, 0.5) and (4096, 1.15)
RDS_BASE_SEQ_LEN, RDS_MAX_SEQ_LEN, RDS_BASE_SHIFT, RDS_MAX_SHIFT = 256, 4096, 0.5, 1.15


def rds_mu(seq_len: int, base_seq_len: int = RDS_BASE_SEQ_LEN, max_seq_len: int = RDS_MAX_SEQ_LEN,
           base_shift: float = RDS_BASE_SHIFT, max_shift: float = RDS_MAX_SHIFT) -> float:
    """FLUX's `calculate_shift` (as diffusers' FluxPipeline computes mu): mu = base_shift + (seq_len - base_seq_len)
    (max_shift - base_shift) / (max_seq_len - base_seq_len), extrapolated linearly outside [base, max]."""
    if int(seq_len) < 1:
        raise ValueError(f"the image sequence length must be a positive integer, got {seq_len}")
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(base_shift + m * (int(seq_len) - base_seq_len))


def rds_schedule(n: int, t0: float, T: float, seq_len: int | None = None, dtype=torch.float64, **kw) -> Tensor:
    """RDS, the resolution-dependent shift schedule of SD3/FLUX (Esser et al. 2024, "Scaling Rectified Flow
    Transformers", Sec. 5.3.2; FLUX.1): uniform times shifted by FLUX's exponential time shift with mu = rds_mu(seq_len),
    t' = e^mu / (e^mu + (1/t - 1)), which is flow_shift with s = e^mu. seq_len is the transformer's image token count
    (latent height x width / patch^2); name form "rds:SEQ_LEN" in get_schedule. Only for flow processes."""
    if seq_len is None:
        raise ValueError("the rds schedule needs the image sequence length: name it rds:SEQ_LEN (e.g. rds:4096 for a "
                         "1024x1024 FLUX image) or pass seq_len=")
    return shifted_uniform(n, t0, T, shift=math.exp(rds_mu(seq_len, **kw)), dtype=dtype)


HEURISTICS: Dict[str, Callable] = {
    "uniform": lambda p, n, t0, T, **kw: uniform_t(n, t0, T),
    "logsnr": lambda p, n, t0, T, **kw: uniform_logsnr(p, n, t0, T),
    "polynomial": lambda p, n, t0, T, **kw: polynomial(p, n, t0, T, **kw),
    "quadratic": lambda p, n, t0, T, **kw: time_quadratic(n, t0, T),
    "flow_shift": lambda p, n, t0, T, **kw: shifted_uniform(n, t0, T, **kw),
    "rds": lambda p, n, t0, T, **kw: rds_schedule(n, t0, T, **kw),
}


# names the ecosystem uses for the same schedules: name -> (schedule, its fixed keyword arguments).
# "karras": Karras et al. 2022 (EDM), the polynomial schedule with rho = 7 (k-diffusion's get_sigmas_karras,
# diffusers' use_karras_sigmas).
ALIASES: Dict[str, tuple] = {
    "karras": ("polynomial", {"rho": 7.0}),
}


class _ScheduleNames(tuple):
    """The schedule names, as CLI choices: also contains the parameterised forms ("rds:16") of its names."""

    def __contains__(self, name) -> bool:
        try:
            return tuple.__contains__(self, split_schedule_name(name)[0])
        except (ValueError, TypeError):
            return False

    def __add__(self, other) -> "_ScheduleNames":
        return _ScheduleNames(tuple(self) + tuple(other))


SCHEDULE_NAMES = _ScheduleNames(tuple(HEURISTICS) + tuple(ALIASES))  # every name get_schedule accepts (and rds:SEQ_LEN)


def split_schedule_name(name: str):
    """"rds:16" -> ("rds", {"seq_len": 16}); any other name -> (name, {})."""
    base, sep, arg = str(name).partition(":")
    if base == "rds" and sep:
        try:
            return base, {"seq_len": int(arg)}
        except ValueError:
            raise ValueError(f"bad schedule name {name!r}: expected rds:SEQ_LEN with an integer image sequence length") from None
    return name, {}


def get_schedule(name: str, process, n: int, t0: float | None = None, T: float | None = None, **kwargs) -> Tensor:
    """A heuristic schedule by name (uniform, logsnr, polynomial, quadratic, flow_shift, rds:SEQ_LEN; karras =
    polynomial with rho 7), float64, decreasing."""
    process = get_process(process)
    name, extra = split_schedule_name(name)
    kwargs = {**extra, **kwargs}
    if name in ALIASES:
        target, fixed = ALIASES[name]
        clash = {k: v for k, v in kwargs.items() if k in fixed and v != fixed[k]}
        if clash:
            raise ValueError(f"schedule {name!r} is {target} with {fixed}; for other values use {target!r} ({clash})")
        name, kwargs = target, {**kwargs, **fixed}
    if name not in HEURISTICS:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULE_NAMES)}")
    t0 = process.t0 if t0 is None else float(t0)
    T = process.T if T is None else float(T)
    ts = HEURISTICS[name](process, n, t0, T, **kwargs)
    process.check_times(ts, f"{name} schedule")
    return ts
