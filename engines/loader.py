"""Load an export folder (made by `indis export`) on one backend and sample from it.

Backends:
  torch    the PyTorch predictor (predictor.safetensors from the folder) and backbone (passed in, or the
           manifest's backbone when it is a registry name: a folder never names code or paths to load; its id
           must match the manifest); CUDA graphs with cuda_graph=True on GPU
  ort      predictor.onnx and backbone.onnx in ONNX Runtime (CPU, or CUDA with I/O binding)
  trt      the TensorRT engines in trt/ (rebuilt when stale and TensorRT can build; refused otherwise)
  native   the native sampler loop of indis.native (csrc/) driving the networks of `native_runtime`
           ("torch" by default, or "ort" / "trt")

Every file is verified against the manifest (size and sha256) before it is used; artifact names must be plain
names inside the folder (indis.export.manifest). The solver loop is the same
for torch / ort / trt (indis.solvers.sample, float32 state), so the backends differ only by the network runtime.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch

from ..backbones.base import CondSpec
from ..export import manifest as mf
from ..export.onnx_export import BackboneForExport, PredictorForExport
from ..export.pipeline import predictor_id, resolve_trt_engine
from ..native import FastSampler
from ..processes import get_process
from ..sampling.load import load_predictor
from ..sampling.seeds import draw, seed_batches
from ..solvers import sample
from .runtime import BACKENDS, EngineBackbone, EnginePredictor, ORTRunner, TorchRunner, TRTRunner, _device
from ..backbones.spec import REGISTRY_NAMES, is_registry_name, resolve_backbone

Tensor = torch.Tensor


def manifest_backbone(folder: Path, man: Dict):
    """The torch backbone an export folder was made for, when the manifest names it by a registry name
    (bundled, ideal, gmm-image, edm:PRESET[:SEED]). An export folder is data: a manifest that names a path or
    a module:function is refused (it would let whoever edits the folder choose what runs); the user then names
    the backbone on the command line (--backbone) and its id is checked against the manifest."""
    spec = man["backbone"].get("spec")
    if not spec:
        raise mf.ArtifactError(f"{folder}: the manifest records no backbone spec; pass the backbone on the command line "
                               "(--backbone SPEC, or load_engines(backbone=...))")
    if not is_registry_name(spec):
        raise mf.ArtifactError(f"{folder}: the manifest names the backbone {spec!r}, which is not a registry name "
                               f"({', '.join(REGISTRY_NAMES)}, edm:PRESET[:SEED]); an export folder never chooses code or "
                               "paths to load. Pass the backbone on the command line: --backbone SPEC (or "
                               "load_engines(backbone=...)); its id is checked against the manifest")
    return resolve_backbone(spec, registry_only=True)


def _torch_networks(folder: Path, man: Dict, backbone=None):
    if backbone is None:
        backbone = manifest_backbone(folder, man)
    if backbone.backbone_id != man["backbone_id"]:
        raise mf.ArtifactError(f"{folder} was exported for backbone id {man['backbone_id']}, but the torch backbone has id "
                               f"{backbone.backbone_id}; load the matching backbone or re-export")
    path = mf.verify_file(folder, "predictor.safetensors", mf.artifact_entry(folder, man, "predictor.safetensors"))
    model, _ = load_predictor(path, man["backbone_id"])
    if predictor_id(model) != man["predictor_id"]:
        raise mf.ArtifactError(f"{folder}/predictor.safetensors does not have the manifest's predictor id {man['predictor_id']}")
    return PredictorForExport(model.eval()), BackboneForExport(backbone.eval())


def load_engines(folder, backend: str = "ort", device=None, threads: int = 0, cuda_graph: bool = False, backbone=None,
                 precision: Optional[str] = None, rebuild: bool = True, log=print):
    """(EnginePredictor, EngineBackbone, manifest) of an export folder on a backend ("torch", "ort", "trt")."""
    if backend not in ("torch", "ort", "trt"):
        raise ValueError(f"backend must be one of torch, ort, trt here (native: use load_engine_sampler), got {backend!r}")
    folder = Path(folder)
    man = mf.load_manifest(folder)
    if backbone is not None and getattr(backbone, "backbone_id", None) != man["backbone_id"]:
        raise mf.ArtifactError(f"{folder} was exported for backbone id {man['backbone_id']}, but the given backbone has id "
                               f"{getattr(backbone, 'backbone_id', None)}; give the matching --backbone or re-export")
    names = {"predictor": ["x_T"], "backbone": ["x", "t"]}
    cs = CondSpec(**man["backbone"]["cond_spec"])
    if cs.kind != "none":
        names = {k: v + ["cond"] for k, v in names.items()}
    outs = {"predictor": ["tau", "dtau", "gamma"], "backbone": ["prediction"]}
    runners = {}
    if backend == "torch":
        pmod, bmod = _torch_networks(folder, man, backbone)
        runners["predictor"] = TorchRunner(pmod, names["predictor"], outs["predictor"], device, cuda_graph)
        runners["backbone"] = TorchRunner(bmod, names["backbone"], outs["backbone"], device, cuda_graph)
    elif backend == "ort":
        for net in ("predictor", "backbone"):
            entry = mf.artifact_entry(folder, man, f"{net}.onnx")
            if not isinstance(entry.get("output_shapes"), dict):
                raise mf.ArtifactError(f"{folder}/{mf.MANIFEST_NAME}: the entry of {net}.onnx has no output_shapes; re-run the export")
            path = mf.verify_file(folder, f"{net}.onnx", entry)
            runners[net] = ORTRunner(path, entry["output_shapes"], device, threads)
    else:
        for net in ("predictor", "backbone"):
            plan = resolve_trt_engine(folder, man, net, precision, rebuild=rebuild, log=log)
            runners[net] = TRTRunner(plan, device, cuda_graph, man.get("profile"))
    pred = EnginePredictor(runners["predictor"], man["nfe"], man["backbone"]["data_shape"], cs, man["predictor_id"])
    bb = EngineBackbone(runners["backbone"], man["backbone"]["process"], man["backbone"]["prediction_type"],
                        man["backbone"]["data_shape"], cs, man["backbone_id"])
    return pred, bb, man


class EngineSampler:
    """(x_T, cond) -> (x0, timings): predictor then the few-step solve, on one backend.

    timings (seconds, wall clock, synchronised on CUDA): {'predictor', 'solver', 'total'}."""

    def __init__(self, predictor, backbone, solver: str, order: Optional[int], manifest: Dict, native=None):
        self.predictor, self.backbone = predictor, backbone
        self.solver, self.order = solver, order
        self.manifest = manifest
        self.native = native
        self.backend = "native" if native is not None else backbone.backend

    def _sync(self, x):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    @torch.no_grad()
    def __call__(self, x_T: Tensor, cond=None):
        cs = self.backbone.cond_spec
        c = cs.check(cond, x_T.shape[0], "sampler")  # once, outside the loop: labels -> one-hot
        t0 = time.perf_counter()
        disc = self.predictor(x_T, c)
        self._sync(x_T)
        t1 = time.perf_counter()
        info = {}
        if self.native is not None:
            x0, info = self.native(x_T, c, disc=disc)
        else:
            x0 = sample(self.backbone, x_T, disc, solver=self.solver, order=self.order, cond=c, state_dtype=torch.float32)
        self._sync(x0)
        t2 = time.perf_counter()
        return x0, {**info, "predictor": t1 - t0, "solver": t2 - t1, "total": t2 - t0, "discretization": disc}


def load_engine_sampler(folder, backend: str = "ort", device=None, solver: Optional[str] = None, order: Optional[int] = None,
                        threads: int = 0, cuda_graph: Optional[bool] = None, backbone=None, native_runtime: str = "torch",
                        log=print) -> EngineSampler:
    """An EngineSampler for an export folder. solver/order default to the manifest's (the predictor was trained
    for them)."""
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
    native = None
    if backend == "native":
        native = FastSampler(bb, pred, solver=solver, order=order, backend="native", cuda_graph=native_graph,
                             state_dtype=torch.float32)
    return EngineSampler(pred, bb, solver, order, man, native)


def sample_seeds(folder, seeds: Iterable[int], backend: str = "ort", device=None, batch_size: int = 0, threads: int = 0,
                 backbone=None, table=None, progress: bool = False, **kw):
    """Samples for seeds (a list, or an indis.sampling.seeds.SeedList; per-seed x_T and condition as
    indis.sampling.seeds, so the same seed gives the same sample at any batch size and on every backend). The
    prior noise is drawn batch by batch. Returns (x0 [S, ...] float32 CPU, discretizations
    {timesteps, dtau, gamma} [S, ...] float64 CPU, x_T, cond, sampler)."""
    from tqdm.auto import tqdm

    fs = load_engine_sampler(folder, backend, device, threads=threads, backbone=backbone, **kw)
    man = fs.manifest
    dev = _device(device)
    cs = CondSpec(**man["backbone"]["cond_spec"])
    prior_std = get_process(man["backbone"]["process"]).prior_std()
    bs = batch_size or int(man["profile"]["opt"])
    bs = min(bs, int(man["profile"]["max"])) if backend == "trt" else bs
    total = getattr(seeds, "count", None) or (len(seeds) if hasattr(seeds, "__len__") else None)
    xs, xts, conds, parts = [], [], [], {"timesteps": [], "dtau": [], "gamma": []}
    with tqdm(total=total, desc=f"sample ({backend})", disable=not progress) as bar:
        for sb in seed_batches(seeds, bs):
            x_T, cond = draw(sb, man["backbone"]["data_shape"], prior_std, cs, table)
            xb = x_T.to(dev)
            cb = None if cond is None else cond.to(dev)
            x0, info = fs(xb, cb)
            xs.append(x0.float().cpu())
            xts.append(x_T)
            conds.append(cond)
            d = info.get("discretization") if isinstance(info, dict) else None
            if d is None:
                d = fs.predictor(xb, cs.check(cb, xb.shape[0], "sampler"))
            parts["timesteps"].append(d.timesteps.double().cpu())
            parts["dtau"].append(d.dtau.double().cpu())
            parts["gamma"].append(d.gamma.double().cpu())
            bar.update(len(sb))
    if not xs:
        raise ValueError("no seeds to sample")
    cond = None if conds[0] is None else torch.cat(conds)
    return torch.cat(xs), {k: torch.cat(v) for k, v in parts.items()}, torch.cat(xts), cond, fs
