"""Per-sample random streams, as in NVlabs/edm's StackedRandomGenerator: one CPU torch.Generator per sample.

Sample `seed` always gets the same prior noise x_T and the same condition, whatever the batch it is drawn in,
the batch size, the device or the backend: the numbers come from a CPU generator seeded with that seed alone,
and are only then moved to the target device. Draw order inside one sample's stream: first the standard
normal noise of shape data_shape (float32), then (class- or table-conditional models) one integer index.
x_T = prior_std * noise, computed in float64 and then cast, so that the scale is exact too.
"""
from __future__ import annotations

import re
from itertools import islice
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..backbones.base import CondSpec

Tensor = torch.Tensor
MAX_SEED = 2**63 - 1  # seeds are int64 (torch.Generator.manual_seed, the seeds tensor of a shard)
_SEED_ITEM = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


class SeedList:
    """The seeds of a --seeds text as inclusive ranges: counted, iterated and cut into batches without ever
    building the list (0-999999999 costs two integers)."""

    def __init__(self, ranges: Sequence[Tuple[int, int]], text: str = ""):
        self.ranges = [(int(a), int(b)) for a, b in ranges]
        self.text = text

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        for a, b in self.ranges:
            yield from range(a, b + 1)

    def __repr__(self) -> str:
        return f"SeedList({self.text!r}: {self.count} seeds)"

    def check_count(self, limit: int, what: str) -> "SeedList":
        """self, or a ValueError when the output needs the samples of all seeds at once and there are too many."""
        if self.count > limit:
            raise ValueError(f"--seeds {self.text!r} names {self.count} seeds; {what} holds at most {limit}: give a smaller "
                             "range (or run several)")
        return self


def parse_seeds(text: str) -> SeedList:
    """`1,5,9`, `0-63`, `0-9,100-109`: non-negative integers and inclusive ranges A-B (A <= B), at most 2**63-1.
    Every malformed item is a ValueError that names it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("--seeds is empty; give seeds like 0-63 or 1,5,9")
    ranges = []
    for item in text.split(","):
        m = _SEED_ITEM.fullmatch(item)
        if m is None:
            if not item.strip():
                raise ValueError(f"--seeds {text!r} has an empty item; separate seeds and ranges by single commas")
            if item.strip().startswith("-") or "--" in item:
                raise ValueError(f"--seeds {text!r}: {item.strip()!r} is negative; seeds are integers from 0 to "
                                 f"{MAX_SEED} (a range is A-B with A <= B)")
            raise ValueError(f"--seeds {text!r}: {item.strip()!r} is not a seed or a range A-B of non-negative integers")
        for g in m.groups():
            if g is not None and (len(g.lstrip("0")) > 19 or int(g) > MAX_SEED):
                raise ValueError(f"--seeds {text!r}: seed {g} is larger than the largest seed {MAX_SEED} (2**63-1)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ValueError(f"--seeds {text!r}: the range {a}-{b} is empty (its start is after its end)")
        ranges.append((a, b))
    return SeedList(ranges, text)


def seed_batches(seeds: Iterable[int], size: int) -> Iterator[List[int]]:
    """Consecutive batches of at most `size` seeds from any iterable (a list or a SeedList), lazily."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    it = iter(seeds)
    while True:
        batch = list(islice(it, size))
        if not batch:
            return
        yield batch


def _check_seeds(seeds) -> Tensor:
    seeds = torch.as_tensor(seeds, dtype=torch.int64).flatten()
    if (seeds < 0).any():
        raise ValueError("seeds must be non-negative integers")
    return seeds


def unit_noise_and_index(seeds, data_shape: Sequence[int], n_choices: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """Standard-normal noise [B, *data_shape] (float32, CPU) and, if n_choices > 0, an index [B] in [0, n_choices)."""
    seeds = _check_seeds(seeds)
    return unit_noise_from_generators([torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds.tolist()],
                                      data_shape, n_choices)


def unit_noise_from_generators(generators: Sequence[torch.Generator], data_shape: Sequence[int],
                               n_choices: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """The same draw from one generator per sample (noise, then the index; on each generator's device, returned on
    the CPU): torch.Generator().manual_seed(s) gives seed s's noise and index."""
    noise, idx = [], []
    for g in generators:
        noise.append(torch.randn(tuple(data_shape), generator=g, dtype=torch.float32, device=g.device).cpu())
        if n_choices > 0:
            idx.append(int(torch.randint(n_choices, (1,), generator=g, device=g.device)))
    noise_t = torch.stack(noise) if noise else torch.empty(0, *data_shape)
    return noise_t, (torch.tensor(idx, dtype=torch.int64) if n_choices > 0 else None)


def prior_noise(seeds, data_shape: Sequence[int], prior_std: float, device=None, dtype=torch.float32) -> Tensor:
    """x_T [B, *data_shape] for the given seeds: prior_std * N(0, I), bit-exact per seed."""
    return draw(seeds, data_shape, prior_std, device=device, dtype=dtype)[0]


def conditions_for_seeds(seeds, cond_spec: CondSpec, data_shape: Sequence[int], table: Optional[Tensor] = None):
    """The condition of each seed (None for unconditional models): class -> long labels [B] in [0, dim);
    text -> rows of `table` ([M, dim] pooled prompt embeddings, see indis.predictor.pool_text), [B, dim].
    The index is drawn from the seed's stream after its noise (as in NVlabs/edm's generate.py), so it depends on
    data_shape but not on the batch."""
    return draw(seeds, data_shape, 1.0, cond_spec, table)[1]


def draw(seeds, data_shape, prior_std: float, cond_spec: CondSpec = CondSpec(), table=None, device=None, dtype=torch.float32,
         with_index: bool = False):
    """(x_T, cond) for the seeds, in one pass over the per-sample generators; with_index: (x_T, cond, index), index
    [B] int64 CPU being each seed's class label or prompt-table row (None for unconditional models)."""
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
        return (x_T, None, None) if with_index else (x_T, None)
    cond = (idx if cond_spec.kind == "class" else torch.as_tensor(table)[idx]).to(device)
    return (x_T, cond, idx) if with_index else (x_T, cond)
