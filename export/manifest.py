"""The manifest of an export folder (`engines/<name>/manifest.json`) and the engine-cache key.

One manifest describes everything in the folder; every artifact has an entry with its sha256 and size, and
nothing is used without checking it against that entry: a file is never trusted because it exists.

    {
      "format": "indis-engines", "version": 1, "indis_version": ..., "created": ...,
      "backbone_id", "backbone": {spec, class, process, prediction_type, data_shape, cond_spec},
      "predictor_id", "predictor": {source, source_sha256, config},
      "nfe", "solver", "order",
      "profile": {"min": 1, "opt": 8, "max": 64}            # batch sizes
      "precision": "fp32" | "fp16" | "bf16"                  # of the TensorRT engines (ONNX is always fp32)
      "tensorrt_version": null | "10.x", "gpu_compute_capability": null | "9.0",
      "artifacts": {
        "predictor.onnx": {"kind": "onnx", "sha256", "bytes", "opset", "inputs", "outputs", ...},
        "backbone.onnx":  {...},
        "trt/backbone-<key16>.plan": {"kind": "tensorrt", "sha256", "bytes", "network": "backbone",
             "cache_key", "key_fields": {onnx_sha256, precision, profile, tensorrt_version, compute_capability,
             ...}}
      }
    }

The manifest is written last (atomically), so it is the commit point of an export: a crash part-way leaves
either the old manifest (whose hashes then no longer match the new files: a clear error) or none.

Engine-cache key (`engine_cache_key`): sha256 over a canonical JSON of everything that changes a TensorRT
engine: the ONNX file's sha256, the input shapes of the optimisation profile, the precision flags, the
TensorRT version, the GPU's compute capability and name, and the builder options. A key mismatch between the
manifest entry and the current machine means the engine is stale; it is rebuilt where TensorRT can build it,
else refused with the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

from .. import __version__
from ..backbones.base import CondSpec
from ..io import atomic_write_json, sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT = "indis-engines"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """An export folder or one of its files is missing, corrupt, truncated, tampered with or stale."""


# An artifact name is a plain file name in the folder, or one in its trt/ subfolder (the engines): no "..",
# no absolute path, no backslash, no other subfolder. Names are data from the manifest, never trusted.
_ARTIFACT_NAME = re.compile(r"(?:trt/)?[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_artifact_name(name, where="the manifest") -> str:
    """`name` if it is a plain artifact name (see above), else ArtifactError."""
    if not isinstance(name, str) or not _ARTIFACT_NAME.fullmatch(name):
        raise ArtifactError(f"{where} lists an artifact named {name!r}: artifact names must be plain file names "
                            "inside the export folder (or trt/NAME), without '..', separators or absolute paths; "
                            "the manifest was edited or is corrupt: re-run the export")
    return name


def artifact_path(folder, name: str) -> Path:
    """folder/name for a checked artifact name; also refuses a path that leaves the folder through a link."""
    check_artifact_name(name, f"{Path(folder) / MANIFEST_NAME}")
    root = Path(folder).resolve()
    p = root / name
    if root not in p.resolve().parents:
        raise ArtifactError(f"{Path(folder) / name} resolves to {p.resolve()}, outside the export folder {root} "
                            "(a symbolic link?); refusing to use it")
    return p


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(path, kind: str, **extra) -> Dict:
    p = Path(path)
    return {"kind": kind, "sha256": sha256_file(p), "bytes": p.stat().st_size, **extra}


def new_manifest(**fields) -> Dict:
    m = {"format": FORMAT, "version": FORMAT_VERSION, "indis_version": __version__,
         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "artifacts": {},
         "tensorrt_version": None, "gpu_compute_capability": None}
    m.update(fields)
    return m


def write_manifest(folder, manifest: Dict) -> Path:
    path = Path(folder) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def load_manifest(folder) -> Dict:
    """Read and validate the manifest (not yet the files: see verify_artifacts)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"no export folder {folder} (create it with `indis export --out {folder}`)")
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST_NAME}: it is not a complete indis export "
                            f"(re-run `indis export --out {folder}`)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON (corrupt or truncated?): {e}") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an indis engines manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
    if int(m.get("version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {m['version']}, newer than this indis ({FORMAT_VERSION}); upgrade indis")
    if not isinstance(m.get("artifacts"), dict):
        raise ArtifactError(f"{path} lists no artifacts")
    for name, entry in m["artifacts"].items():
        check_artifact_name(name, str(path))
        if not isinstance(entry, dict):
            raise ArtifactError(f"{path}: the entry of artifact {name!r} is not an object")
    _check_fields(m, path)
    return m


def _check_fields(m: Dict, path) -> None:
    """The fields every reader of a manifest uses, with their types: a missing or mistyped one is a clear
    ArtifactError here, not a KeyError or TypeError later."""
    def need(obj, key, types, where):
        if not isinstance(obj, dict) or key not in obj:
            raise ArtifactError(f"{path} has no {where}{key!r}: it is incomplete or was edited; re-run the export")
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, types):  # (no field here is a bool; True is an int)
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ArtifactError(f"{path}: {where}{key!r} is {v!r}, expected {names}")
        return v

    need(m, "backbone_id", str, "")
    need(m, "predictor_id", str, "")
    need(m, "solver", str, "")
    if need(m, "nfe", int, "") < 1:
        raise ArtifactError(f"{path}: nfe must be a positive integer, got {m['nfe']}")
    if m.get("order") is not None:
        need(m, "order", int, "")
    bb = need(m, "backbone", dict, "")
    for key, types in (("process", (str, dict)), ("prediction_type", str), ("data_shape", list), ("cond_spec", dict)):
        need(bb, key, types, "backbone.")
    if not bb["data_shape"] or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in bb["data_shape"]):
        raise ArtifactError(f"{path}: backbone.data_shape must be a list of positive integers, got {bb['data_shape']!r}")
    try:
        CondSpec(**bb["cond_spec"])
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: backbone.cond_spec {bb['cond_spec']!r} is invalid: {e}") from None
    prof = need(m, "profile", dict, "")
    for key in ("min", "opt", "max"):
        if need(prof, key, int, "profile.") < 1:
            raise ArtifactError(f"{path}: profile.{key} must be a positive integer")


def artifact_entry(folder, manifest: Dict, name: str) -> Dict:
    """The manifest entry of artifact `name`, or an ArtifactError saying that the folder lacks it."""
    entry = manifest.get("artifacts", {}).get(name)
    if entry is None:
        raise ArtifactError(f"{Path(folder) / MANIFEST_NAME} lists no {name}: the export is incomplete or was made "
                            f"without it; re-run `indis export --out {folder}`")
    return entry


def verify_file(folder, name: str, entry: Dict) -> Path:
    """Check one artifact against its manifest entry (existence, size, sha256). Returns its path."""
    p = artifact_path(folder, name)
    if not p.is_file():
        raise ArtifactError(f"{p} is listed in the manifest but missing; re-run the export")
    size = p.stat().st_size
    if "bytes" in entry and size != int(entry["bytes"]):
        raise ArtifactError(f"{p} has {size} bytes but the manifest records {entry['bytes']} (truncated or replaced); "
                            "re-run the export")
    digest = sha256_file(p)
    if digest != entry.get("sha256"):
        raise ArtifactError(f"{p}: sha256 {digest[:16]}... does not match the manifest ({str(entry.get('sha256'))[:16]}...); "
                            "the file was modified or corrupted after export; re-run the export")
    return p


def verify_artifacts(folder, manifest: Optional[Dict] = None, names: Optional[List[str]] = None) -> Dict:
    """Verify the listed artifacts (default: all). Returns the manifest."""
    m = manifest or load_manifest(folder)
    for name in names if names is not None else list(m["artifacts"]):
        verify_file(folder, name, artifact_entry(folder, m, name))
    return m


# ------------------------------------------------------------------------------------------------
# engine cache
# ------------------------------------------------------------------------------------------------
def engine_key_fields(onnx_sha256: str, network: str, precision: str, profile_shapes: Dict, trt_env: Dict,
                      builder: Optional[Dict] = None) -> Dict:
    """Everything that changes a TensorRT engine. trt_env: {'tensorrt_version', 'compute_capability', 'gpu_name'}."""
    for k in ("tensorrt_version", "compute_capability"):
        if not trt_env.get(k):
            raise ValueError(f"engine key: the TensorRT environment has no {k!r}")
    return {
        "onnx_sha256": onnx_sha256,
        "network": network,
        "precision": precision,
        "profile_shapes": {k: [list(map(int, s)) for s in v] for k, v in sorted(profile_shapes.items())},
        "tensorrt_version": str(trt_env["tensorrt_version"]),
        "compute_capability": str(trt_env["compute_capability"]),
        "gpu_name": str(trt_env.get("gpu_name", "")),
        "builder": dict(sorted((builder or {}).items())),
    }


def engine_cache_key(fields: Dict) -> str:
    return sha256_bytes(canonical_json(fields).encode())


def engine_file_name(network: str, key: str) -> str:
    return f"trt/{network}-{key[:16]}.plan"


def stale_reasons(entry: Dict, current: Dict) -> List[str]:
    """Why an engine entry (its 'key_fields') does not fit the current key fields; [] when it fits."""
    old = entry.get("key_fields") or {}
    reasons = []
    labels = {"onnx_sha256": "ONNX file", "tensorrt_version": "TensorRT version", "compute_capability": "GPU compute capability",
              "gpu_name": "GPU", "precision": "precision", "profile_shapes": "optimisation profile", "builder": "builder options",
              "network": "network"}
    for k, label in labels.items():
        if old.get(k) != current.get(k):
            reasons.append(f"{label} differs (engine: {old.get(k)!r}, now: {current.get(k)!r})")
    if not reasons and entry.get("cache_key") != engine_cache_key(current):
        reasons.append("cache key differs")
    return reasons


def find_engine_entry(manifest: Dict, network: str, precision: Optional[str] = None) -> Optional[tuple]:
    """(name, entry) of the TensorRT engine of a network in the manifest, or None."""
    for name, e in manifest.get("artifacts", {}).items():
        if e.get("kind") == "tensorrt" and e.get("network") == network and (precision is None or e.get("precision") == precision):
            return name, e
    return None


def remove_stale_files(folder, manifest: Dict) -> None:
    """Delete engine files in folder/trt that the manifest no longer lists."""
    d = Path(folder) / "trt"
    if not d.is_dir():
        return
    keep = {Path(folder) / n for n in manifest.get("artifacts", {})}
    for p in d.glob("*.plan"):
        if p not in keep:
            os.unlink(p)
