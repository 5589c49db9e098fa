"""Load an export folder (made by `indis export`): its predictor and backbone networks on one runtime. Sampling
from it is indis.sampling.sampler.Sampler.from_engines (the one sampler).

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
for torch / ort / trt (the Sampler's Python loop, float32 state), so the backends differ only by the network runtime.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from ..backbones.base import CondSpec
from ..backbones.spec import REGISTRY_NAMES, is_registry_name, resolve_backbone
from ..export import manifest as mf
from ..export.onnx_export import BackboneForExport, PredictorForExport
from ..export.pipeline import predictor_id, resolve_trt_engine
from ..sampling.load import load_predictor
from .runtime import EngineBackbone, EnginePredictor, ORTRunner, TorchRunner, TRTRunner


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
        raise ValueError(f"backend must be one of torch, ort, trt here (native: indis.sampling.sampler.Sampler.from_engines), got {backend!r}")
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
