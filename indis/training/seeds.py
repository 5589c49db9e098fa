"""Per-sample random streams, as in NVlabs/edm's StackedRandomGenerator: one CPU torch.Generator per sample.

Sample `seed` always gets the same prior noise x_T and the same condition, whatever the batch it is drawn in,
the batch size, the device or the backend: the numbers come from a CPU generator seeded with that seed alone,
and are only then moved to the target device. Draw order inside one sample's stream: first the standard
normal noise of shape data_shape (float32), then (class- or table-conditional models) one integer index.
x_T = prior_std * noise, computed in float64 and then cast, so that the scale is exact too.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..backbones.base import CondSpec

Tensor = torch.Tensor


def _check_seeds(seeds) -> Tensor:
    seeds = torch.as_tensor(seeds, dtype=torch.int64).flatten()
    if (seeds < 0).any():
        raise ValueError("seeds must be non-negative integers")
    return seeds


def unit_noise_and_index(seeds, data_shape: Sequence[int], n_choices: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """Standard-normal noise [B, *data_shape] (float32, CPU) and, if n_choices > 0, an index [B] in [0, n_choices)."""
    seeds = _check_seeds(seeds)
    noise, idx = [], []
    for s in seeds.tolist():
        g = torch.Generator(device="cpu").manual_seed(int(s))
        noise.append(torch.randn(tuple(data_shape), generator=g, dtype=torch.float32))
        if n_choices > 0:
            idx.append(int(torch.randint(n_choices, (1,), generator=g)))
    noise_t = torch.stack(noise) if noise else torch.empty(0, *data_shape)
    return noise_t, (torch.tensor(idx, dtype=torch.int64) if n_choices > 0 else None)


def prior_noise(seeds, data_shape: Sequence[int], prior_std: float, device=None, dtype=torch.float32) -> Tensor:
    """x_T [B, *data_shape] for the given seeds: prior_std * N(0, I), bit-exact per seed."""
    noise, _ = unit_noise_and_index(seeds, data_shape)
    return (noise.double() * float(prior_std)).to(dtype=dtype, device=device)


def conditions_for_seeds(seeds, cond_spec: CondSpec, data_shape: Sequence[int], table: Optional[Tensor] = None):
    """The condition of each seed (None for unconditional models): class -> long labels [B] in [0, dim);
    text -> rows of `table` ([M, dim] pooled prompt embeddings, see indis.predictor.pool_text), [B, dim].
    The index is drawn from the seed's stream after its noise (as in NVlabs/edm's generate.py), so it depends on
    data_shape but not on the batch."""
    return draw(seeds, data_shape, 1.0, cond_spec, table)[1]


def draw(seeds, data_shape, prior_std: float, cond_spec: CondSpec = CondSpec(), table=None, device=None, dtype=torch.float32):
    """(x_T, cond) for the seeds, in one pass over the per-sample generators."""
    seeds = _check_seeds(seeds)
    n = 0
    if cond_spec.kind == "class":
        n = cond_spec.dim
    elif cond_spec.kind == "text":
        if table is None:
            raise ValueError("a text-conditional backbone needs a table of prompt embeddings [M, dim] (--prompt-table)")
        n = table.shape[0]
    noise, idx = unit_noise_and_index(seeds, data_shape, n)
    x_T = (noise.double() * float(prior_std)).to(dtype=dtype, device=device)
    if cond_spec.kind == "none":
        return x_T, None
    cond = idx if cond_spec.kind == "class" else torch.as_tensor(table)[idx]
    return x_T, cond.to(device)
