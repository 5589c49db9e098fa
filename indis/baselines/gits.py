"""GITS (Chen et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML 2024).

Training-free: a fine grid of M + 1 times (the teacher's grid, EDM's polynomial rho = 7 by default), a few pilot
trajectories of the teacher solver on it (their states x_j and model outputs eps_j at every grid point), a cost
matrix C(i, j) of the error of one Euler step from grid point i to grid point j taken with the teacher's own
derivative at i (so no extra network call), and dynamic programming for the N-step path from T to t0 of least
(discounted) total cost:

    V_1(i) = C(i, M),   V_k(j) = min_{j < i < M} C(j, i) + gamma V_{k-1}(i),

which minimises sum_m gamma^m C(i_m, i_{m+1}) over paths 0 = i_0 < i_1 < ... < i_N = M (later steps weigh
gamma^m; gamma = 1.15 in GITS's defaults). Costs, in the VE-equivalent variables y = x / alpha, s = sigma / alpha:
  "l2":  mean over pilots of ||y_hat_j - y_j||, y_hat_j = y_i + (s_j - s_i) eps_i;
  "dev": mean over pilots of dev(y_hat_j) - dev(y_j), dev(v) the distance of v from the straight line through the
         pilot's x_T and its teacher endpoint (GITS's default metric; signed).
With AFS the step from T uses the analytical eps of AFS instead of the teacher's (the student will).
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Tuple

import torch

from ..schedules import get_schedule
from .common import analytic_eps, pilot_trajectory, to_ve, ve_s

Tensor = torch.Tensor
METRICS = ("dev", "l2")


def _deviation(v: Tensor, a: Tensor, u: Tensor) -> Tensor:
    """Per-sample distance of v [B, D] from the line a + r u (u unit) [B]."""
    d = v - a
    return (d - (d * u).sum(1, keepdim=True) * u).norm(dim=1)


@torch.no_grad()
def cost_matrix(process, grid: Tensor, states: Tensor, eps: Tensor, metric: str = "dev", afs: bool = False) -> Tensor:
    """C [M+1, M+1] (float64; +inf where j <= i) of one Euler step between grid points, from the pilot
    trajectory `states` [M+1, B, ...] and its model outputs `eps` [M, B, ...] on `grid` [M+1]."""
    if metric not in METRICS:
        raise ValueError(f"unknown GITS metric {metric!r}; expected one of {METRICS}")
    m = len(grid) - 1
    if states.shape[0] != m + 1 or eps.shape[0] != m:
        raise ValueError(f"a grid of {m + 1} points needs {m + 1} states and {m} model outputs, got {states.shape[0]} and {eps.shape[0]}")
    b = states.shape[1]
    s = ve_s(process, grid)
    y = torch.stack([to_ve(process, states[j], grid[j]) for j in range(m + 1)]).reshape(m + 1, b, -1)
    e = eps.reshape(m, b, -1).clone()
    if afs:
        e[0] = analytic_eps(process, states[0], grid[0].expand(b)).reshape(b, -1)
    a, end = y[0], y[-1]
    u = (end - a) / (end - a).norm(dim=1, keepdim=True).clamp_min(1e-30)
    dev_true = torch.stack([_deviation(y[j], a, u) for j in range(m + 1)]) if metric == "dev" else None
    c = torch.full((m + 1, m + 1), math.inf, dtype=torch.float64)
    for i in range(m):
        ds = (s[i + 1 :] - s[i]).view(-1, 1, 1)
        y_hat = y[i].unsqueeze(0) + ds * e[i].unsqueeze(0)  # [M - i, B, D]
        if metric == "l2":
            c[i, i + 1 :] = (y_hat - y[i + 1 :]).norm(dim=2).mean(1)
        else:
            dev_hat = torch.stack([_deviation(v, a, u) for v in y_hat])
            c[i, i + 1 :] = (dev_hat - dev_true[i + 1 :]).mean(1)
    return c


def dp_path(cost: Tensor, steps: int, gamma: float = 1.0) -> Tuple[List[int], float]:
    """Indices 0 = i_0 < ... < i_steps = M minimising sum_m gamma^m cost[i_m, i_{m+1}], and that minimum."""
    m = cost.shape[0] - 1
    if cost.shape != (m + 1, m + 1):
        raise ValueError(f"cost matrix must be square, got {tuple(cost.shape)}")
    if not 1 <= steps <= m:
        raise ValueError(f"a path of {steps} steps needs 1 <= steps <= {m} (the grid has {m} intervals)")
    c = cost.to(torch.float64).tolist()
    inf = math.inf
    # v[k][j]: least discounted cost from j to M in k steps (first step weight 1); nxt[k][j]: its next index
    v = [[inf] * (m + 1) for _ in range(steps + 1)]
    nxt = [[-1] * (m + 1) for _ in range(steps + 1)]
    for j in range(m):
        v[1][j], nxt[1][j] = c[j][m], m
    for k in range(2, steps + 1):
        for j in range(m):
            best, arg = inf, -1
            for i in range(j + 1, m):
                if v[k - 1][i] < inf:
                    val = c[j][i] + gamma * v[k - 1][i]
                    if val < best:
                        best, arg = val, i
            v[k][j], nxt[k][j] = best, arg
    if v[steps][0] == inf:
        raise ValueError("no finite path through the cost matrix")
    path, j = [0], 0
    for k in range(steps, 0, -1):
        j = nxt[k][j]
        path.append(j)
    return path, v[steps][0]


def path_cost(cost: Tensor, path, gamma: float = 1.0) -> float:
    return sum(gamma ** k * float(cost[a, b]) for k, (a, b) in enumerate(zip(path[:-1], path[1:])))


def brute_force_path(cost: Tensor, steps: int, gamma: float = 1.0) -> Tuple[List[int], float]:
    """The same optimum by enumerating every path (for tests on small grids)."""
    m = cost.shape[0] - 1
    best, arg = math.inf, None
    for inner in itertools.combinations(range(1, m), steps - 1):
        p = [0, *inner, m]
        val = path_cost(cost, p, gamma)
        if val < best:
            best, arg = val, p
    return arg, best


@torch.no_grad()
def gits_schedule(backbone, x_T: Tensor, cond, steps: int, grid_steps: int = 60, grid: str = "polynomial",
                  metric: str = "dev", gamma: float = 1.15, teacher_solver: str = "ipndm", afs: bool = False,
                  pilot: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Dict]:
    """GITS's schedule of `steps` steps for a backbone from pilot noises x_T [P, ...] (cond: their condition):
    (timesteps [steps + 1] float64, info with the grid, the chosen indices, the cost matrix, the path cost and the
    pilot trajectory, which a further call with other steps / AFS can reuse through `pilot`)."""
    if grid_steps < steps:
        raise ValueError(f"GITS needs a fine grid of at least as many intervals as steps ({steps}), got {grid_steps}")
    proc = backbone.process
    g = get_schedule(grid, proc, grid_steps)
    fresh = pilot is None
    states, eps = pilot_trajectory(backbone, x_T, cond, g, solver=teacher_solver) if fresh else pilot
    if states.shape[0] != grid_steps + 1:
        raise ValueError(f"the given pilot trajectory has {states.shape[0]} states, the grid {grid_steps + 1} points")
    c = cost_matrix(proc, g, states, eps, metric, afs)
    path, val = dp_path(c, steps, gamma)
    return g[path].clone(), {"grid": g.tolist(), "path": path, "path_cost": val, "cost": c, "pilots": int(x_T.shape[0]),
                             "search_nfe": int(x_T.shape[0]) * grid_steps if fresh else 0, "pilot": (states, eps)}
