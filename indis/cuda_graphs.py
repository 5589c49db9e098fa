"""One CUDA-graph helper for every capture site: the whole-loop graph of the native sampler
(indis.native.FastSampler), the per-batch-size graphs of a torch runner and the TensorRT enqueue graph
(indis.engines.runtime).

The recipe is the one of PyTorch's CUDA-graph documentation (torch.cuda.graph, "CUDA Graphs" in the CUDA
semantics notes): run the work a few times on a side stream that is ordered after the current stream (lazy
initialisation, cuDNN/cuBLAS autotuning and workspaces happen there, outside the capture), make the current
stream wait for it, then capture one call with ``torch.cuda.graph(graph, stream=side)`` on that same side stream
(as ``torch.cuda.make_graphed_callables`` does, so that per-stream library handles created during the warm-up
are the ones the capture uses). A graph reads and writes fixed addresses: its inputs are static buffers that are
refilled with ``copy_`` before every ``replay()``, and its outputs are tensors that the next replay overwrites.

:class:`GraphCache` keeps one graph per input signature (names, shapes, dtypes and device of the input tensors,
plus a caller's key); everything that is not a tensor or None is refused, because a graph cannot see a new
Python value. Nothing here synchronises or validates values: callers check their inputs on the host first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Mapping, Optional, Tuple

import torch

Tensor = torch.Tensor


def signature(inputs: Mapping[str, Optional[Tensor]]) -> Tuple:
    """Hashable key of a graph's inputs: (name, shape, dtype, device) of each tensor, (name, None) for an absent
    one. Raises ValueError for any other value (a graph replays fixed buffers; it cannot take a new object)."""
    key = []
    for name, v in inputs.items():
        if v is None:
            key.append((name, None))
        elif isinstance(v, Tensor):
            key.append((name, tuple(v.shape), v.dtype, str(v.device)))
        else:
            raise ValueError(f"a CUDA graph replays static tensor buffers: {name} must be a tensor or None, got "
                             f"{type(v).__name__} (use cuda_graph=False for other inputs)")
    return tuple(key)


def graph_device(inputs: Mapping[str, Optional[Tensor]]) -> torch.device:
    """The one CUDA device of the input tensors (ValueError when they are elsewhere or on several devices)."""
    devices = {v.device for v in inputs.values() if isinstance(v, Tensor)}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        found = ", ".join(sorted(str(d) for d in devices)) or "no tensor"
        raise ValueError(f"a CUDA graph needs its input tensors on one CUDA device, got {found}")
    return next(iter(devices))


def capture(fn: Callable[[], Any], device, *, warmup: int = 2, stream=None, pool=None) -> Tuple[Any, Any]:
    """Capture one call of fn() in a CUDA graph: `warmup` plain calls on `stream` (default: a new side stream)
    ordered after the current stream, then the capture on that stream. Returns (graph, the captured call's
    output: tensors that every replay overwrites). The captured work has not run yet: replay() to run it."""
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA graphs need a CUDA-enabled torch and a GPU (torch.cuda.is_available() is False)")
    device = torch.device(device)
    with torch.cuda.device(device):
        side = stream if stream is not None else torch.cuda.Stream(device)
        current = torch.cuda.current_stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side):
            out = fn()
    return graph, out


@dataclass
class CapturedGraph:
    graph: Any
    inputs: Dict[str, Optional[Tensor]]  # the static input buffers
    output: Any  # the static outputs


class GraphCache:
    """Graphs of body(static_inputs, **kwargs), one per (input signature, key), replayed on new inputs.

    cache(inputs, key, **kwargs): on the first call for this signature and key, clone the inputs into static
    buffers and capture body on them (kwargs are used only then: they must be determined by the key); then copy
    the inputs into the static buffers, replay, and return the static output (copy it out before the next call).
    """

    def __init__(self, body: Callable[..., Any], *, warmup: int = 2):
        self.body, self.warmup = body, warmup
        self.entries: Dict[Hashable, CapturedGraph] = {}

    def key(self, inputs: Mapping[str, Optional[Tensor]], key: Hashable = ()) -> Hashable:
        return (signature(inputs), key)

    def __call__(self, inputs: Mapping[str, Optional[Tensor]], key: Hashable = (), **kwargs) -> Any:
        k = self.key(inputs, key)
        entry = self.entries.get(k)
        if entry is None:
            device = graph_device(inputs)
            static = {name: None if v is None else v.detach().clone() for name, v in inputs.items()}
            graph, out = capture(lambda: self.body(static, **kwargs), device, warmup=self.warmup)
            entry = self.entries[k] = CapturedGraph(graph, static, out)
        for name, v in inputs.items():
            if v is not None:
                entry.inputs[name].copy_(v)
        entry.graph.replay()
        return entry.output

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
