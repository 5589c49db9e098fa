"""`indis export`: a trained predictor and its backbone -> an export folder (engines/<name>/).

Folder layout (all files listed with their sha256 in manifest.json, written last; see manifest.py):

    manifest.json
    predictor.onnx            x_T (, cond) -> tau, dtau, gamma
    backbone.onnx             x, t (, cond) -> prediction
    predictor.safetensors     the predictor's weights (the torch backend runs it; also the predictor id)
    sigmas.json               optional: per-sample sigma schedules for diffusers / node UIs (sigmas.py)
    trt/<network>-<key16>.plan, trt/timing.cache   with --tensorrt

Every ONNX file is checked (onnx.checker, shape inference, opset, TensorRT op set) and compared with PyTorch
in fp32 on random inputs with a dynamic batch (ORT CPU, batches 1 and 5; export at batch 2); an error above
`atol` (default 1e-4) stops the export.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import torch

from ..backbones.base import stable_hash
from ..io import EXPORT, claim_folder, sha256_file
from ..predictor import save_predictor
from ..solvers import get_solver
from . import manifest as mf
from . import tensorrt as trt_backend
from .onnx_export import (BackboneForExport, PredictorForExport, backbone_spec, check_profile, compare_with_torch,
                          export_onnx, predictor_spec)
from .sigmas import check_prompt_table, export_sigmas

DEFAULT_PROFILE = {"min": 1, "opt": 8, "max": 64}
NETWORKS = ("predictor", "backbone")


def predictor_id(model) -> str:
    return stable_hash(model.config(), dict(model.state_dict()))


def _check_pair(model, backbone) -> None:
    if tuple(model.data_shape) != tuple(backbone.data_shape):
        raise ValueError(f"the predictor takes priors of shape {tuple(model.data_shape)}, the backbone's samples have "
                         f"shape {tuple(backbone.data_shape)}")
    if model.cond_spec != backbone.cond_spec:
        raise ValueError(f"predictor condition {model.cond_spec} differs from the backbone's {backbone.cond_spec}")
    if model.param.process.config() != backbone.process.config():
        raise ValueError(f"the predictor was built for process {model.param.process.config()}, the backbone uses "
                         f"{backbone.process.config()}")


def export_folder(model, backbone, out, *, backbone_spec_str: Optional[str] = None, predictor_source: Optional[str] = None,
                  solver: str = "ipndm", order: Optional[int] = None, profile: Optional[Dict] = None,
                  tensorrt: bool = False, precision: str = "fp32", atol: float = 1e-4, verify: bool = True,
                  verify_batches=(1, 5), export_batch: int = 2, sigmas_seeds=None, extra: Optional[Dict] = None,
                  overwrite: bool = False, log=print, prompt_table=None) -> Dict:
    """Export `model` (Predictor / GlobalDiscretization / FixedDiscretization / PeerSchedule) and `backbone` into
    folder `out`. A PeerSchedule is exported with its own solver and order (AFS and per-step orders are refused).
    Returns the manifest. The caller's modules are left in the training/eval mode they came in.
    `out` must be new, empty, or an export folder: a teacher dataset or a training run is refused, and an
    export of another backbone, predictor or solver is replaced only with overwrite=True."""
    if getattr(model, "runs_sampler", False):
        raise ValueError(f"{type(model).__name__} runs its own sampler (a network inside every step), which the exported "
                         "engines do not implement; sample it with PyTorch (indis eval / indis sample)")
    if hasattr(model, "sampling_info"):  # a peer schedule (indis.baselines) carries the solver it was selected with
        info = model.sampling_info()
        if info["afs"] or info["orders"] is not None:
            raise ValueError(f"this {getattr(model, 'method', 'peer')} schedule samples with "
                             f"{'the analytical first step' if info['afs'] else 'per-step orders ' + str(info['orders'])}, which "
                             "the exported engines do not implement; export a schedule selected without them "
                             "(train with --peer-afs off; SDM's order schedule always needs the PyTorch sampler)")
        if get_solver(solver).name != info["solver"]:
            log(f"the schedule was selected with {info['solver']} and is exported with it (not {get_solver(solver).name})")
        solver, order = info["solver"], info["order"]
    solver_obj = get_solver(solver)
    order = solver_obj.check_order(order)
    profile = dict(profile or DEFAULT_PROFILE)
    check_profile(profile)
    _check_pair(model, backbone)
    if sigmas_seeds is not None:  # before any file is written: sigmas.json needs each seed's condition
        check_prompt_table(backbone, prompt_table, "sigmas.json (--sigmas-seeds)")
    claim_folder(out, EXPORT, "export")
    if not overwrite:
        _check_same_export(Path(out), {"backbone_id": backbone.backbone_id, "predictor_id": predictor_id(model),
                                       "solver": solver_obj.name, "order": order, "nfe": int(model.param.nfe)})
    if tensorrt:  # fail before the (long) ONNX export when TensorRT or the GPU is missing
        trt_backend.builder_options(precision)
        trt_env = trt_backend.trt_environment()
    elif precision != "fp32":
        raise ValueError("--precision applies to TensorRT engines; add --tensorrt (the ONNX files are always fp32)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # export in eval mode (dropout off) and give the caller's modules back in the mode they came in
    modes = {m: m.training for m in (model, backbone) if isinstance(m, torch.nn.Module)}
    try:
        return _export_folder(model.eval(), backbone.eval(), out, backbone_spec_str=backbone_spec_str,
                              predictor_source=predictor_source, solver_obj=solver_obj, order=order, profile=profile,
                              tensorrt=tensorrt, precision=precision, atol=atol, verify=verify,
                              verify_batches=verify_batches, export_batch=export_batch, sigmas_seeds=sigmas_seeds,
                              extra=extra, trt_env=trt_env if tensorrt else None, log=log, prompt_table=prompt_table)
    finally:
        for m, mode in modes.items():
            m.train(mode)


def _check_same_export(out: Path, settings: Dict) -> None:
    """Refuse to replace an export of other settings (backbone, predictor, solver, order, NFE) without overwrite."""
    if not (out / mf.MANIFEST_NAME).is_file():
        return
    try:
        old = mf.load_manifest(out)
    except mf.ArtifactError:
        return  # a damaged export of this kind: re-exporting repairs it
    diff = [k for k, v in settings.items() if old.get(k) != v]
    if diff:
        raise FileExistsError(f"--out {out} holds an export of another {', '.join(diff)} ("
                              + ", ".join(f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in diff)
                              + "); pass --overwrite to replace it, or choose another folder")


def _export_folder(model, backbone, out, *, backbone_spec_str, predictor_source, solver_obj, order, profile, tensorrt,
                   precision, atol, verify, verify_batches, export_batch, sigmas_seeds, extra, trt_env, log,
                   prompt_table=None) -> Dict:
    solver = solver_obj.name
    pid, bid = predictor_id(model), backbone.backbone_id
    arts: Dict[str, Dict] = {}
    numerics: Dict[str, Dict] = {}
    specs = {"predictor": predictor_spec(model), "backbone": backbone_spec(backbone)}
    # wrappers are new modules (training=True by default); the exporter restores their mode recursively after
    # tracing, which would switch the wrapped networks (and their dropout) to training mode
    modules = {"predictor": PredictorForExport(model).eval(), "backbone": BackboneForExport(backbone).eval()}
    for net in NETWORKS:
        path = out / f"{net}.onnx"
        info = export_onnx(modules[net], specs[net], path, batch=export_batch)
        if verify:
            t0 = time.perf_counter()
            errs = compare_with_torch(modules[net], specs[net], str(path), batches=verify_batches, threads=torch.get_num_threads())
            worst = max(errs.values())
            numerics[net] = {"ort_cpu_max_abs_error": {str(k): v for k, v in errs.items()}, "atol": atol,
                             "seconds": round(time.perf_counter() - t0, 3)}
            if worst > atol:
                raise ValueError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} > {atol:g} (fp32, batches "
                                 f"{list(verify_batches)}); the export is not faithful")
        entry = mf.file_entry(path, "onnx")
        if entry["sha256"] != info["sha256"]:
            raise mf.ArtifactError(f"{path} changed while it was being exported")
        info.update(entry)
        info["profile_shapes"] = {k: [list(s) for s in v] for k, v in specs[net].profile_shapes(profile).items()}
        info["output_shapes"] = {k: ["B", *v[1:]] for k, v in specs[net].outputs.items()}
        arts[f"{net}.onnx"] = info
        log(f"exported {path} ({info['bytes'] / 1e6:.2f} MB, opset {info['opset']}, {info['export_seconds']:.2f} s"
            + (f", max |ORT - torch| {max(numerics[net]['ort_cpu_max_abs_error'].values()):.2e}" if net in numerics else "") + ")")
    save_predictor(out / "predictor.safetensors", model, {"backbone_id": bid, "solver": solver, "order": order,
                                                          "exported_from": predictor_source})
    arts["predictor.safetensors"] = mf.file_entry(out / "predictor.safetensors", "safetensors")

    man = mf.new_manifest(
        backbone_id=bid,
        backbone={"spec": backbone_spec_str, "class": type(backbone).__name__, "process": backbone.process.config(),
                  "prediction_type": backbone.prediction_type, "data_shape": list(backbone.data_shape),
                  "cond_spec": backbone.cond_spec.to_dict()},
        predictor_id=pid,
        predictor={"source": predictor_source, "source_sha256": _maybe_sha(predictor_source), "config": model.config()},
        nfe=int(model.param.nfe), solver=solver_obj.name, order=order, profile=profile, precision=precision,
        numerics=numerics, artifacts=arts, **(extra or {}))
    if sigmas_seeds is not None:
        export_sigmas(model, backbone, sigmas_seeds, out / "sigmas.json", predictor_id=pid, table=prompt_table)
        arts["sigmas.json"] = mf.file_entry(out / "sigmas.json", "json")
    if tensorrt:
        for net in NETWORKS:
            build_trt_engine(out, man, net, precision, trt_env, log=log)
    mf.remove_stale_files(out, man)
    mf.write_manifest(out, man)
    return man


def _maybe_sha(path) -> Optional[str]:
    if path and Path(path).is_file():
        return sha256_file(path)
    return None


# ------------------------------------------------------------------------------------------------
# TensorRT engines and their cache entries
# ------------------------------------------------------------------------------------------------
def trt_key_fields(folder, manifest: Dict, network: str, precision: str, trt_env: Dict) -> Dict:
    onnx_entry = mf.artifact_entry(folder, manifest, f"{network}.onnx")
    if not isinstance(onnx_entry.get("profile_shapes"), dict) or not isinstance(onnx_entry.get("sha256"), str):
        raise mf.ArtifactError(f"the manifest entry of {network}.onnx has no profile_shapes / sha256; re-run the export")
    opts = trt_backend.builder_options(precision)
    opts.pop("precision")
    return mf.engine_key_fields(onnx_entry["sha256"], network, precision, onnx_entry["profile_shapes"], trt_env, opts)


def build_trt_engine(folder, manifest: Dict, network: str, precision: str, trt_env: Dict, log=print) -> str:
    """Build the engine of one network into folder/trt and record it in `manifest` (not yet written)."""
    folder = Path(folder)
    mf.verify_file(folder, f"{network}.onnx", mf.artifact_entry(folder, manifest, f"{network}.onnx"))
    fields = trt_key_fields(folder, manifest, network, precision, trt_env)
    key = mf.engine_cache_key(fields)
    name = mf.engine_file_name(network, key)
    res = trt_backend.build_engine(folder / f"{network}.onnx", folder / name, manifest["artifacts"][f"{network}.onnx"]["profile_shapes"],
                       precision=precision, timing_cache=folder / "trt" / "timing.cache")
    old = mf.find_engine_entry(manifest, network)
    if old is not None:
        manifest["artifacts"].pop(old[0])
    manifest["artifacts"][name] = mf.file_entry(folder / name, "tensorrt", network=network, precision=precision,
                                                cache_key=key, key_fields=fields, build_seconds=res["seconds"])
    manifest.update(tensorrt_version=trt_env["tensorrt_version"], gpu_compute_capability=trt_env["compute_capability"],
                    precision=precision)
    log(f"built {folder / name} ({res['bytes'] / 1e6:.1f} MB, {precision}, {res['seconds']:.1f} s)")
    return name


def resolve_trt_engine(folder, manifest: Dict, network: str, precision: Optional[str] = None, trt_env: Optional[Dict] = None,
                       rebuild: bool = True, log=print) -> Path:
    """The verified engine file of a network for this machine. A missing or stale engine (other ONNX hash,
    TensorRT version, GPU, precision or profile) is rebuilt when rebuild=True (TensorRT present), else refused."""
    folder = Path(folder)
    precision = precision or manifest.get("precision") or "fp32"
    if trt_env is None:
        trt_env = trt_backend.trt_environment()
    current = trt_key_fields(folder, manifest, network, precision, trt_env)
    found = mf.find_engine_entry(manifest, network, precision)
    reasons = ["no engine was built for it"] if found is None else mf.stale_reasons(found[1], current)
    if not reasons:
        return mf.verify_file(folder, found[0], found[1])
    if not rebuild:
        raise mf.ArtifactError(f"the TensorRT engine of the {network} in {folder} does not fit this machine: "
                               + "; ".join(reasons) + f". Rebuild it with `indis export ... --tensorrt --precision {precision}`")
    log(f"rebuilding the {network} engine: " + "; ".join(reasons))
    name = build_trt_engine(folder, manifest, network, precision, trt_env, log=log)
    mf.remove_stale_files(folder, manifest)
    mf.write_manifest(folder, manifest)
    return folder / name
