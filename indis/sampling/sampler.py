"""One sampler for inference: a discretization (a saved predictor of any kind, or a fixed schedule) + a backbone
runtime (the torch backbone, or the ONNX Runtime / TensorRT / torch networks of an export folder) + a solver loop
(the native C++ loop of indis.native, or the Python solvers) -> samples and one `Timings` record.

    sampler = Sampler(backbone, "runs/indis5/predictor.safetensors")           # torch networks
    sampler = Sampler(backbone, schedule="karras", nfe=5)                       # a fixed schedule
    sampler = Sampler.from_engines("engines/digits5", backend="ort")            # an export folder
    x0, timings = sampler(x_T, cond)                                            # one batch
    out = sampler.sample_seeds(parse_seeds("0-63"), batch_size=16)              # the seed loop

The loop itself is indis.native.FastSampler's (native when it can run the inputs, else indis.solvers.sample), so
the samples of a seed are those of indis.solvers.sample on the same backbone, discretization and state dtype (bit
for bit on the Python loop; to rounding on the native one). Classifier-free guidance wraps the backbone
(indis.sampling.guidance); x_T and the conditions of a seed come from indis.sampling.seeds (the same seed gives the
same sample at any batch size, on every backend); text-conditional models take their conditions from a prompt
table (indis.io.load_prompt_table). Peers that decide their own sampling (indis.baselines: per-step orders, the
analytical first step, AMED-Plugin's own sampler) are sampled as they were trained and searched.

Training keeps the differentiable indis.sampling.solve.solve; this module is inference only (no gradients).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import torch

from ..backbones.base import CondSpec
from ..discretization import Discretization
from ..engines.loader import load_engines
from ..engines.runtime import BACKENDS, EngineBackbone, _device
from ..native import FastSampler
from ..processes import get_process
from ..solvers import get_solver
from .fixed import heuristic
from .guidance import GuidedBackbone
from .load import load_predictor
from .seeds import draw, seed_batches
from .solve import sampling_choices

Tensor = torch.Tensor

LOOPS = ("auto", "native", "python")  # FastSampler's backends: the solver loop
DEFAULT_BATCH = 64


@dataclass
class Timings:
    """One sampler call, or the sum over the batches of a seed loop. Times in milliseconds (wall clock,
    synchronised on CUDA).

    predictor_ms     the discretization model phi(x_T, cond) (or the fixed schedule); 0 when the caller gave it
    loop_ms          the N-step loop: backbone calls and solver updates (a whole-loop CUDA graph's replay)
    backbone_ms      inside the backbone calls (Python and native loops; None where they are not timed apart:
                     a CUDA graph, a plugin sampler)
    update_ms        the native loop's fused updates (None on the other paths)
    total_ms         the whole call
    nfe              steps of the schedule
    batch            samples
    path             "python" | "native" | "native+cuda_graph" | "plugin" (a model that runs its own sampler)
    runtime          the networks' runtime: "torch", "ort" or "trt"
    fallback_reason  why the native loop was not taken (None when it was, or when the Python loop was asked for)
    ring             the native loop's history mode
    extra            anything else the loop reported
    """

    predictor_ms: float = 0.0
    loop_ms: float = 0.0
    total_ms: float = 0.0
    backbone_ms: Optional[float] = None
    update_ms: Optional[float] = None
    nfe: int = 0
    batch: int = 0
    path: str = ""
    runtime: str = "torch"
    fallback_reason: Optional[str] = None
    ring: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        """A flat dict for JSON (extra's keys beside the fields)."""
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

    @classmethod
    def total(cls, parts: Sequence["Timings"]) -> "Timings":
        """The sum over the batches of a seed loop (times and samples added; the first batch's path and reasons)."""
        if not parts:
            raise ValueError("no timings to add")
        first = parts[0]
        add = lambda k: None if getattr(first, k) is None else sum(getattr(p, k) or 0.0 for p in parts)
        return cls(predictor_ms=sum(p.predictor_ms for p in parts), loop_ms=sum(p.loop_ms for p in parts),
                   total_ms=sum(p.total_ms for p in parts), backbone_ms=add("backbone_ms"), update_ms=add("update_ms"),
                   nfe=first.nfe, batch=sum(p.batch for p in parts), path=first.path, runtime=first.runtime,
                   fallback_reason=first.fallback_reason, ring=first.ring, extra=dict(first.extra))


@dataclass
class SampleResult:
    """One batch: the samples, the discretization they were integrated on and the timings."""

    x0: Tensor
    discretization: Discretization
    timings: Timings


@dataclass
class SeedBatch:
    """One batch of a seed loop: its seeds, the prior noise and conditions drawn for them (CPU; class labels,
    table rows or None) and the sampler's result."""

    seeds: List[int]
    x_T: Tensor
    cond: Optional[Tensor]
    result: SampleResult


@dataclass
class SeedSamples:
    """Every seed of a seed loop: x0 [S, ...] float32 CPU, the discretizations (float64 CPU), x_T and the
    conditions as drawn (CPU), and the timings summed over the batches."""

    seeds: List[int]
    x0: Tensor
    discretization: Discretization
    x_T: Tensor
    cond: Optional[Tensor]
    timings: Timings


def _sync(t: Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


class Sampler:
    """Discretization + backbone runtime + solver loop -> samples and Timings (see the module docstring).

    backbone: an indis Backbone (torch), or an engines.runtime.EngineBackbone (what `from_engines` builds).
    predictor: a discretization model ((x_T, cond) -> Discretization: Predictor, GlobalDiscretization, LD3, a
      fixed schedule, the peers), or a predictor.safetensors path (indis.sampling.load.load_predictor; its
      recorded backbone id must be the backbone's, its solver and order become the defaults), or None: then
      `schedule` / `nfe` name a fixed schedule (indis.schedules names, e.g. "karras"; nfe alone: polynomial), or
      every call passes its own `disc`.
    solver, order: default the predictor file's (the solver it was trained for), else ipndm at its default order.
    loop: "auto" (the native loop when indis._C is built and runs the inputs, else Python), "native" (an error if
      it cannot) or "python" (indis.solvers.sample).
    cfg_scale, null_cond: classifier-free guidance (indis.sampling.guidance.GuidedBackbone).
    prompt_table: [M, dim] pooled prompt embeddings of a text-conditional backbone (seed loops draw a row per seed).
    device: where x_T and the conditions go (default: the backbone's parameters' device, else CPU).
    state_dtype, model_dtype, cuda_graph: as indis.native.FastSampler's.
    """

    def __init__(self, backbone, predictor=None, *, schedule: Optional[str] = None, nfe: Optional[int] = None,
                 solver: Optional[str] = None, order: Optional[int] = None, loop: str = "auto", cfg_scale: float = 1.0,
                 null_cond: Optional[Tensor] = None, prompt_table: Optional[Tensor] = None, device=None,
                 state_dtype=torch.float32, model_dtype=None, cuda_graph="auto"):
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
        self.backbone = backbone
        self.meta: Dict = {}
        if isinstance(predictor, (str, os.PathLike)):
            predictor, self.meta = load_predictor(predictor, getattr(backbone, "backbone_id", None))
        if predictor is not None:
            if schedule is not None:
                raise ValueError(f"schedule {schedule!r} applies to sampling without a predictor; the predictor makes "
                                 "its own schedule")
            # the steps it was saved / exported for (AMED-Plugin: its network calls), else its parameterization's
            own = (self.meta.get("nfe") or getattr(predictor, "nfe", None)
                   or getattr(getattr(predictor, "param", None), "nfe", None))
            if nfe is not None and own is not None and int(nfe) != int(own):
                raise ValueError(f"nfe {nfe} conflicts with the predictor, which makes {own} steps")
        elif schedule is not None or nfe is not None:
            if nfe is None:
                raise ValueError(f"schedule {schedule!r} needs nfe (the number of steps)")
            predictor = heuristic(backbone, schedule or "polynomial", int(nfe))
        self.predictor = predictor.eval() if isinstance(predictor, torch.nn.Module) else predictor
        if solver is None and self.meta.get("solver"):
            solver = self.meta["solver"]
            order = (self.meta.get("train_config") or {}).get("order") if order is None else order
        self.solver = get_solver(solver or "ipndm").name
        self.order = order
        self.cond_spec: CondSpec = getattr(backbone, "cond_spec", CondSpec())
        shape = getattr(backbone, "data_shape", None)  # a plain callable may declare none (then no seed loops)
        self.data_shape = None if shape is None else tuple(shape)
        self.prompt_table = None if prompt_table is None else torch.as_tensor(prompt_table)
        self.engine = isinstance(backbone, EngineBackbone)  # engine networks take the condition checked once per call
        self.runtime = backbone.backend if self.engine else "torch"
        self.provider = getattr(backbone, "provider", f"torch-{self._default_device().type}")
        self.device = _device(device) if device is not None else self._default_device()
        self.state_dtype, self.loop = state_dtype, loop
        self.backend = "native" if loop == "native" else self.runtime  # the `indis sample --backend` word
        self.manifest: Optional[Dict] = None
        self.default_batch, self.max_batch = DEFAULT_BATCH, None

        net = backbone if cfg_scale == 1.0 and null_cond is None else GuidedBackbone(backbone, cfg_scale, null_cond)
        solver_obj, order, net = sampling_choices(self.predictor, self.solver, order, net)
        self.net = net
        self.plugin = bool(getattr(self.predictor, "runs_sampler", False))  # AMED-Plugin: its own sampler
        why_python = None
        if self.plugin:
            why_python = f"{type(self.predictor).__name__} runs its own sampler"
        elif getattr(self.predictor, "orders", None) is not None:
            why_python = "per-step orders run on the Python solvers (the native loop takes one order)"
        if why_python is not None and loop == "native":
            raise ValueError(f"loop='native' cannot run this predictor: {why_python}")
        self.why_python = why_python if loop == "auto" else None
        fs_loop = "python" if why_python is not None else loop
        self.fast = FastSampler(net, solver=solver_obj, order=order, backend=fs_loop, state_dtype=state_dtype,
                                model_dtype=model_dtype, cuda_graph=cuda_graph)

    def _default_device(self) -> torch.device:
        params = self.backbone.parameters() if isinstance(self.backbone, torch.nn.Module) else iter(())
        p = next(params, None)
        return p.device if p is not None else torch.device("cpu")

    # -- export folders ------------------------------------------------------------------------------
    @classmethod
    def from_engines(cls, folder, backend: str = "ort", device=None, solver: Optional[str] = None,
                     order: Optional[int] = None, threads: int = 0, cuda_graph: Optional[bool] = None, backbone=None,
                     native_runtime: str = "torch", prompt_table: Optional[Tensor] = None, log=print) -> "Sampler":
        """The sampler of an export folder (`indis export`) on one backend: torch, ort, trt (the folder's networks
        on that runtime, the Python solver loop) or native (the native loop driving the networks of
        `native_runtime`: torch, ort or trt). solver/order default to the manifest's (the predictor was trained
        for them). cuda_graph (default: on CUDA): per network call on torch/trt, or, for native with torch
        networks, the whole loop in one graph. backbone: the torch backbone of the torch / native backends when
        the manifest names none by a registry name (its id is checked). Every file is verified against the
        manifest (indis.engines.loader.load_engines)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        dev = _device(device)
        if cuda_graph is None:
            cuda_graph = dev.type == "cuda"
        runtime = native_runtime if backend == "native" else backend
        # CUDA graphs: per network call in the torch/trt runners; for the native backend the native sampler
        # captures the whole loop instead (torch networks only: ORT calls and TensorRT's private stream are not captured)
        native_graph = backend == "native" and bool(cuda_graph) and dev.type == "cuda" and runtime == "torch"
        runner_graph = bool(cuda_graph) and runtime != "ort" and not native_graph
        pred, bb, man = load_engines(folder, runtime, dev, threads, runner_graph, backbone, log=log)
        solver = solver or man["solver"]
        order = order if order is not None else (man.get("order") if solver == man["solver"] else None)
        s = cls(bb, pred, solver=solver, order=order, loop="native" if backend == "native" else "python",
                prompt_table=prompt_table, device=dev, state_dtype=torch.float32, cuda_graph=native_graph)
        s.manifest, s.backend = man, backend
        s.default_batch = int(man["profile"]["opt"])
        s.max_batch = int(man["profile"]["max"]) if backend == "trt" else None
        return s

    # -- one batch -----------------------------------------------------------------------------------
    def path_for(self, x_T: Tensor):
        """(path, reason the native loop is not taken or None) for inputs like x_T."""
        if self.plugin:
            return "plugin", self.why_python
        path, reason = self.fast.path_for(x_T)
        return path, (self.why_python or reason)

    @torch.no_grad()
    def sample(self, x_T: Tensor, cond=None, disc: Optional[Discretization] = None) -> SampleResult:
        """Samples of one batch: x_T [B, *data_shape] (moved to the sampler's device), cond as the backbone takes it
        (class labels [B] or one-hot, text rows [B, dim], None), disc: a discretization instead of the predictor's."""
        t_total = time.perf_counter()
        x_T = x_T.to(self.device)
        cond = None if cond is None else torch.as_tensor(cond).to(self.device)
        checked = self.cond_spec.check(cond, x_T.shape[0], "Sampler")  # labels -> one-hot, once per call
        c = checked if self.engine else cond
        t0, given = time.perf_counter(), disc is not None
        if not given:
            if self.predictor is None:
                raise ValueError("no discretization: pass disc=..., or build the Sampler with a predictor or a schedule")
            disc = self.predictor(x_T, c)
            _sync(x_T)
        predictor_ms = 0.0 if given else _ms(t0)
        if self.plugin:
            t0 = time.perf_counter()
            x0 = self.predictor(x_T, c, self.net, state_dtype=self.state_dtype)
            _sync(x0)
            info: Dict[str, Any] = {"path": "plugin", "fallback_reason": self.why_python, "loop_ms": _ms(t0),
                                    "nfe": int(getattr(self.predictor, "nfe", disc.nfe))}
        else:
            x0, info = self.fast(x_T, c, disc=disc)
            _sync(x0)
        info = dict(info)
        known = {k: info.pop(k, None) for k in ("path", "fallback_reason", "loop_ms", "backbone_ms", "update_ms",
                                                "ring", "nfe", "predictor_ms", "total_ms")}
        reason = self.why_python if self.why_python is not None else known["fallback_reason"]
        if self.loop == "python" and known["path"] == "python":
            reason = None  # the Python loop was asked for: not a fallback
        timings = Timings(predictor_ms=predictor_ms, loop_ms=float(known["loop_ms"] or 0.0), total_ms=_ms(t_total),
                          backbone_ms=known["backbone_ms"], update_ms=known["update_ms"], nfe=int(known["nfe"]),
                          batch=int(x_T.shape[0]), path=known["path"], runtime=self.runtime, fallback_reason=reason,
                          ring=known["ring"], extra=info)
        return SampleResult(x0, disc, timings)

    def __call__(self, x_T: Tensor, cond=None, disc: Optional[Discretization] = None):
        """(x0, Timings) of one batch (see `sample`)."""
        r = self.sample(x_T, cond, disc)
        return r.x0, r.timings

    # -- seeds ---------------------------------------------------------------------------------------
    def draw(self, seeds: Sequence[int], class_label: Optional[int] = None):
        """(x_T, cond) of the seeds on the CPU, as indis.sampling.seeds draws them (cond: class labels, prompt-table
        rows or None); class_label: every seed gets this class instead of its own random one."""
        if self.data_shape is None:
            raise ValueError("the backbone declares no data_shape, so seeds cannot be drawn; pass x_T")
        x_T, cond = draw(seeds, self.data_shape, get_process(self.fast.process).prior_std(), self.cond_spec,
                         self.prompt_table)
        if class_label is not None:
            cond = torch.full((len(x_T),), int(class_label), dtype=torch.int64)
        return x_T, cond

    def check_class_label(self, class_label: Optional[int], what: str = "class_label") -> None:
        """A ValueError unless class_label is None or a class of this class-conditional backbone."""
        if class_label is None:
            return
        if self.cond_spec.kind != "class":
            kind = "unconditional" if self.cond_spec.kind == "none" else f"{self.cond_spec.kind}-conditional"
            raise ValueError(f"{what} {class_label} needs a class-conditional backbone; this one is {kind}")
        if isinstance(class_label, bool) or not isinstance(class_label, int) or not 0 <= class_label < self.cond_spec.dim:
            raise ValueError(f"{what} must be an integer class in [0, {self.cond_spec.dim}), got {class_label!r}")

    def iter_seeds(self, seeds: Iterable[int], batch_size: int = 0, class_label: Optional[int] = None,
                   progress: bool = False) -> Iterator[SeedBatch]:
        """The seed loop: seeds (a list, or an indis.sampling.seeds.SeedList, never expanded) in batches of
        batch_size (0: the export's optimal batch, else 64; at most a TensorRT profile's maximum), each drawn on the
        CPU (indis.sampling.seeds), then sampled. Yields one SeedBatch per batch."""
        from tqdm.auto import tqdm

        self.check_class_label(class_label)
        bs = batch_size or self.default_batch
        if self.max_batch is not None:
            bs = min(bs, self.max_batch)
        total = getattr(seeds, "count", None) or (len(seeds) if hasattr(seeds, "__len__") else None)
        with tqdm(total=total, desc=f"sample ({self.backend})", disable=not progress) as bar:
            for sb in seed_batches(seeds, bs):
                x_T, cond = self.draw(sb, class_label)
                yield SeedBatch(sb, x_T, cond, self.sample(x_T, cond))
                bar.update(len(sb))

    def sample_seeds(self, seeds: Iterable[int], batch_size: int = 0, class_label: Optional[int] = None,
                     progress: bool = False, on_batch: Optional[Callable[[SeedBatch], None]] = None) -> SeedSamples:
        """Every seed's sample, collected (see iter_seeds); on_batch(batch) is called as each batch is done (for
        outputs written as they come, e.g. one PNG per seed)."""
        seen: List[int] = []
        xs, xts, conds, discs, times = [], [], [], [], []
        for b in self.iter_seeds(seeds, batch_size, class_label, progress):
            if on_batch is not None:
                on_batch(b)
            seen += b.seeds
            xs.append(b.result.x0.float().cpu())
            xts.append(b.x_T)
            conds.append(b.cond)
            discs.append(b.result.discretization)
            times.append(b.result.timings)
        if not xs:
            raise ValueError("no seeds to sample")
        part = lambda k: torch.cat([getattr(d, k).double().cpu() for d in discs])
        disc = Discretization(part("timesteps"), part("dtau"), part("gamma"))
        cond = None if conds[0] is None else torch.cat(conds)
        return SeedSamples(seen, torch.cat(xs), disc, torch.cat(xts), cond, Timings.total(times))
