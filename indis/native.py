"""The compiled sampler core: fused multistep update and the native sampler loop.

Python face of the C++/CUDA code in csrc/ (module ``indis._C``):

* :func:`fused_update` / :func:`fused_update_x0`: x_next = u x + sum_j w_j h_j in one pass over memory
  (per-sample u [B], w [B, M], M <= 4), CPU (OpenMP, SIMD) and CUDA (128-bit loads, the current stream); they
  are PyTorch custom operators, ``torch.ops.indis.fused_update`` / ``fused_update_x0`` (FakeTensor-aware,
  refuse autograd);
* :func:`sample`: the native loop (N backbone calls + N fused updates, preallocated ring buffer), a drop-in
  for :func:`indis.solvers.sample` for Euler, iPNDM and DPM-Solver++(2M). Its coefficients are the tables of
  :func:`indis.solvers.step_tables`: the Python solvers are the only copy of the maths, csrc/ has no formula;
* :class:`FastSampler`: predictor + backbone -> (samples, timings), picking the native path when it is
  built and supports the inputs (else the Python solvers), with whole-loop CUDA-graph capture on CUDA
  (:mod:`indis.cuda_graphs`; the tables are recomputed inside the graph from its static schedule buffers).

UniPC stays Python-only (its corrector needs the model output at the new point; indis.solvers.sample).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

import torch

from . import _native
from .cuda_graphs import GraphCache
from .discretization import Discretization
from .solvers import _check_schedule, _resolve_model, get_solver, step_tables, unpack_discretization
from .solvers import sample as python_sample

Tensor = torch.Tensor

NATIVE_SOLVERS = ("euler", "ipndm", "dpmpp_2m")
NATIVE_STATE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def native_available() -> bool:
    return _native.native_available()


def _C():
    return _native.load()


def _ops():
    """torch.ops.indis, registered when indis._C is loaded."""
    _native.load()
    return torch.ops.indis


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
def _tensor_list(hist) -> list:
    hist = list(hist)
    for j, h in enumerate(hist):
        if not isinstance(h, Tensor):
            raise TypeError(f"hist[{j}] must be a tensor, got {type(h).__name__}")
    return hist


def fused_update(out: Tensor, x: Tensor, hist, u: Tensor, w: Tensor, check_finite: bool = True) -> Tensor:
    """out = u[b] x + sum_j w[b, j] hist[j] (one pass; out may be x). On CUDA: the current stream."""
    _ops().fused_update(out, x, _tensor_list(hist), u, w, check_finite=check_finite)
    return out


def fused_update_x0(out, x, pred, slot, hist, p, q, u, w, check_finite: bool = True) -> Tensor:
    """slot = p x + q pred; out = u x + w[:, 0] slot + sum_{j>=1} w[:, j] hist[j-1] (one pass, 2 writes)."""
    _ops().fused_update_x0(out, x, pred, slot, _tensor_list(hist), p, q, u, w, check_finite=check_finite)
    return out


# ------------------------------------------------------------------------------------------------
# Native sampling
# ------------------------------------------------------------------------------------------------
def unsupported_reason(solver, process, x_T: Tensor, state_dtype=None) -> Optional[str]:
    """Why the native loop cannot run these inputs (None if it can)."""
    if not native_available():
        return f"indis._C is not available ({_native.load_error()})"
    name = get_solver(solver).name
    if name not in NATIVE_SOLVERS:
        return f"solver {name!r} is Python-only (native: {', '.join(NATIVE_SOLVERS)})"
    if x_T.device.type not in ("cpu", "cuda"):
        return f"device {x_T.device} is not supported"
    if x_T.is_cuda and not _C().build_info()["cuda"]:
        return "indis._C was built without CUDA"
    if state_dtype is not None and state_dtype not in NATIVE_STATE_DTYPES:
        return f"state dtype {state_dtype} is not supported"
    if torch.is_grad_enabled() and (x_T.requires_grad):
        return "gradients requested (the native loop is inference-only)"
    return None


def _prepare(backbone, x_T, timesteps, solver, order, dtau, gamma, process, prediction_type, state_dtype):
    """Checked inputs of the native loop (host checks, synchronising on CUDA): the solver, its order, the process
    and prediction type, the schedule in the coefficient dtype (float64 for a float64 state, else float32) on
    x_T's device, and the state dtype."""
    timesteps, dtau, gamma = unpack_discretization(timesteps, dtau, gamma)
    s = get_solver(solver)
    order = s.check_order(order)
    if s.name not in NATIVE_SOLVERS:
        raise ValueError(f"solver {s.name!r} has no native implementation; use indis.solvers.sample")
    proc, ptype = _resolve_model(backbone, process, prediction_type)
    ts, n, dtau, gamma = _check_schedule(proc, x_T, timesteps, dtau, gamma)
    if state_dtype is None:
        state_dtype = x_T.dtype if x_T.dtype in (torch.float32, torch.float64) else torch.float32
    if state_dtype not in NATIVE_STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {NATIVE_STATE_DTYPES}, got {state_dtype}")
    coef_dtype = torch.float64 if state_dtype == torch.float64 else torch.float32
    dev = x_T.device
    f = lambda v: None if v is None else v.detach().to(dtype=coef_dtype, device=dev)
    return s, order, proc, ptype, f(ts), f(dtau), f(gamma), state_dtype


def _callable(backbone, cond, model_dtype):
    if model_dtype is None:
        return lambda x, t: backbone(x, t, cond)
    return lambda x, t: backbone(x.to(model_dtype), t, cond)


@torch.no_grad()
def sample(backbone, x_T: Tensor, timesteps, *, solver="ipndm", order: Optional[int] = None, dtau=None, gamma=None,
           cond=None, process=None, prediction_type: Optional[str] = None, state_dtype=None, model_dtype=None,
           validate: bool = True, return_info: bool = False):
    """Native counterpart of :func:`indis.solvers.sample` (Euler, iPNDM, DPM-Solver++(2M); inference only).

    The backbone is called as backbone(x, t[B], cond) N times from the C++ loop; each call is followed by one
    fused update with the coefficients of :func:`indis.solvers.step_tables`. state_dtype may also be
    float16/bfloat16 here (fp32 accumulation). Returns x_0 (and a dict with steps, ring mode, reuse_detected and
    host timings if return_info). validate: the loop also checks that x_T and the tables are finite.

    The backbone gets the live state tensor: it may read it, and anything it does to its storage (x.set_(),
    resizing) is a ValueError after the call rather than a write through a stale pointer. A backbone that
    returns one buffer, overwritten on every call, is detected and the sample recomputed with the copying ring.
    """
    s, order, proc, ptype, ts, dtau, gamma, state_dtype = _prepare(
        backbone, x_T, timesteps, solver, order, dtau, gamma, process, prediction_type, state_dtype)
    tables = step_tables(s, proc, ts, dtau, gamma, order, ptype, batch=x_T.shape[0])
    fn = _callable(backbone, cond, model_dtype)
    res = _C().sample_loop(fn, x_T.detach().to(state_dtype), **tables._asdict(), validate=validate, timing=True)
    x = res.pop("x")
    return (x, dict(res)) if return_info else x


class TensorRTBackbone:
    """A TensorRT engine run natively by the sampler loop (no Python per step).

    Only available when indis._C was built with TensorRT (INDIS_TENSORRT=1 and TensorRT headers/libraries
    found); this code path has not been tested (no TensorRT on the machines it was written on).
    """

    def __new__(cls, engine_path: str, input_name: str = "x", time_name: str = "t", output_name: str = "out"):
        C = _C()
        if not C.build_info().get("tensorrt", False) or not hasattr(C, "TensorRTBackbone"):
            raise RuntimeError(
                "indis._C was built without TensorRT: rebuild with INDIS_TENSORRT=1 and TensorRT installed "
                "(NvInfer.h and libnvinfer, e.g. TENSORRT_ROOT=/path/to/TensorRT), or pass a Python callable "
                "(an ONNX Runtime / torch-tensorrt wrapper) as the backbone")
        return C.TensorRTBackbone(engine_path, input_name, time_name, output_name)


# ------------------------------------------------------------------------------------------------
# FastSampler
# ------------------------------------------------------------------------------------------------
def _sync(t: Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


class FastSampler:
    """Predictor + backbone -> samples, on the native loop when it can run the inputs.

    backbone: a Backbone (declares process / prediction_type) or a callable (x, t, cond) -> prediction
      (then pass process and prediction_type), or an indis._C.NativeBackbone (TensorRT).
    predictor: maps (x_T, cond) to a Discretization; not needed when __call__ gets disc.
    backend: "auto" (native when available and supported, else Python), "native" (raise if unsupported) or
      "python" (indis.solvers.sample).
    cuda_graph: "auto" (capture the whole N-step loop in one CUDA graph for CUDA inputs when the backbone is
      a torch.nn.Module), True (always on CUDA; the backbone must be capturable), False.
    """

    def __init__(self, backbone, predictor=None, solver="ipndm", order: Optional[int] = None, backend: str = "auto",
                 *, process=None, prediction_type: Optional[str] = None, state_dtype=None, model_dtype=None,
                 cuda_graph="auto"):
        if backend not in ("auto", "native", "python"):
            raise ValueError(f"backend must be 'auto', 'native' or 'python', got {backend!r}")
        if cuda_graph not in ("auto", True, False):
            raise ValueError(f"cuda_graph must be 'auto', True or False, got {cuda_graph!r}")
        self.backbone, self.predictor = backbone, predictor
        self.solver = get_solver(solver)
        self.order = self.solver.check_order(order)
        self.backend, self.cuda_graph = backend, cuda_graph
        self.process = process if process is not None else getattr(backbone, "process", None)
        self.prediction_type = prediction_type if prediction_type is not None else getattr(backbone, "prediction_type", None)
        self.state_dtype, self.model_dtype = state_dtype, model_dtype
        self._graphs = GraphCache(self._graph_body)
        if backend == "native":
            if not native_available():
                raise ImportError(f"backend='native' but indis._C is unavailable ({_native.load_error()})")
            if self.solver.name not in NATIVE_SOLVERS:
                raise ValueError(f"backend='native' but solver {self.solver.name!r} is Python-only")

    # -- path selection ----------------------------------------------------------------------------
    def path_for(self, x_T: Tensor) -> Tuple[str, Optional[str]]:
        """('native' | 'native+cuda_graph' | 'python', reason the native path is not used or None)."""
        if self.backend == "python":
            return "python", "backend='python'"
        if self.process is None:
            raise ValueError("the backbone declares no process; pass process=...")
        reason = unsupported_reason(self.solver, self.process, x_T, self.state_dtype)
        if reason is not None:
            if self.backend == "native":
                raise ValueError(f"backend='native' cannot run these inputs: {reason}")
            return "python", reason
        if x_T.is_cuda and (self.cuda_graph is True or (self.cuda_graph == "auto" and isinstance(self.backbone, torch.nn.Module))):
            return "native+cuda_graph", None
        return "native", None

    # -- call --------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x_T: Tensor, cond=None, disc=None) -> Tuple[Tensor, Dict[str, Any]]:
        t_total = time.perf_counter()
        timings: Dict[str, Any] = {}
        t0 = time.perf_counter()
        if disc is None:
            if self.predictor is None:
                raise ValueError("no discretization: pass disc=... or construct FastSampler with a predictor")
            disc = self.predictor(x_T, cond)
            _sync(x_T)
        timings["predictor_ms"] = (time.perf_counter() - t0) * 1e3
        path, reason = self.path_for(x_T)
        timings["path"] = path
        if reason is not None:
            timings["fallback_reason"] = reason
        t0 = time.perf_counter()
        if path == "python":
            x0, bb_ms = self._run_python(x_T, cond, disc)
            timings["backbone_ms"] = bb_ms
        elif path == "native":
            x0, info = sample(self.backbone, x_T, disc, solver=self.solver, order=self.order, cond=cond,
                              process=self.process, prediction_type=self.prediction_type,
                              state_dtype=self.state_dtype, model_dtype=self.model_dtype, return_info=True)
            _sync(x_T)
            timings["backbone_ms"], timings["update_ms"] = info["backbone_ms"], info["update_ms"]
            timings["ring"] = info["ring"]
        else:
            x0 = self._run_graph(x_T, cond, disc)
            _sync(x_T)
        timings["loop_ms"] = (time.perf_counter() - t0) * 1e3
        timings["nfe"] = (disc.nfe if isinstance(disc, Discretization) else torch.as_tensor(disc).shape[-1] - 1)
        timings["total_ms"] = (time.perf_counter() - t_total) * 1e3
        return x0, timings

    def _run_python(self, x_T, cond, disc):
        spent = [0.0]
        bb = self.backbone

        def timed(x, t, c):
            _sync(x)
            t0 = time.perf_counter()
            out = bb(x, t, c)
            _sync(x)
            spent[0] += time.perf_counter() - t0
            return out

        x0 = python_sample(timed, x_T, disc, solver=self.solver, order=self.order, cond=cond, process=self.process,
                           prediction_type=self.prediction_type, state_dtype=self.state_dtype,
                           model_dtype=self.model_dtype)
        return x0, spent[0] * 1e3

    # -- CUDA graph of the whole loop --------------------------------------------------------------
    def _run_graph(self, x_T: Tensor, cond, disc) -> Tensor:
        """C.sample_loop (the step tables, N backbone calls and N fused updates) captured once per (shapes,
        dtypes, device, solver) and replayed. Needs a capturable backbone (no host syncs, no CPU work that
        depends on data); the inputs are validated on the host before they are copied into the static buffers."""
        s, order, proc, ptype, ts, dtau, gamma, state_dtype = _prepare(
            self.backbone, x_T, disc, self.solver, self.order, None, None, self.process, self.prediction_type,
            self.state_dtype)
        inputs = {"x": x_T.detach().to(state_dtype), "ts": ts, "dtau": dtau, "gamma": gamma, "cond": cond}
        key = (s.name, order, type(proc).__name__, repr(proc), ptype, self.model_dtype)
        return self._graphs(inputs, key, solver=s, order=order, process=proc, ptype=ptype).clone()

    def _graph_body(self, st: Dict[str, Optional[Tensor]], solver, order, process, ptype) -> Tensor:
        """The captured work, on the static buffers `st` (GraphCache): tables + the native loop, no validation."""
        bb, x, mdt = self.backbone, st["x"], self.model_dtype
        tables = step_tables(solver, process, st["ts"], st["dtau"], st["gamma"], order, ptype, batch=x.shape[0])
        fn = lambda xx, t: bb(xx if mdt is None else xx.to(mdt), t, st["cond"])
        return _C().sample_loop(fn, x, **tables._asdict(), validate=False, timing=False)["x"]
