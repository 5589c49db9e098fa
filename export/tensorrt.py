"""TensorRT engines from the exported ONNX files (optional: `pip install indis[tensorrt]`, NVIDIA GPU + driver).

TensorRT is imported lazily, only by the functions here; everything else in indis works without it.
`require_tensorrt()` raises an ImportError that says exactly what is missing.

Build (as NVIDIA's TensorRT demo/Diffusion `engine.py`): an explicit-batch network parsed from the ONNX
file, one optimisation profile (min/opt/max batch for every input), precision flags (fp16 / bf16; fp32 is
the default), a timing cache shared by the builds of one export folder (`trt/timing.cache`, loaded if present
and valid, written back atomically), `builder.build_serialized_network`, the plan written atomically.

This module is NOT exercised on the development machine (no GPU, TensorRT not installable there); the cache
key and manifest logic it relies on (export/manifest.py) is tested without TensorRT.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

from ..io import atomic_write_bytes

PRECISIONS = ("fp32", "fp16", "bf16")

INSTALL_HINT = (
    "TensorRT engines need the TensorRT Python package and an NVIDIA GPU with its driver:\n"
    "    pip install indis[tensorrt]      # or: pip install tensorrt (TensorRT >= 10)\n"
    "TensorRT runs only on NVIDIA GPUs (compute capability >= 7.5 for TensorRT 10) with a recent driver; "
    "on machines without one use --backend ort or --backend torch."
)


def require_tensorrt():
    """Import and return the tensorrt module, or raise ImportError with what is needed."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # ImportError, or OSError from missing CUDA libraries
        raise ImportError(f"TensorRT is not available ({type(e).__name__}: {e}).\n{INSTALL_HINT}") from e
    if not hasattr(trt, "Builder"):
        raise ImportError(f"the installed 'tensorrt' package is a placeholder without the TensorRT libraries.\n{INSTALL_HINT}")
    return trt


def require_cuda_gpu():
    import torch

    if not torch.cuda.is_available():
        raise ImportError(f"TensorRT needs an NVIDIA GPU, but torch sees no CUDA device.\n{INSTALL_HINT}")
    return torch.cuda.current_device()


def trt_environment(device: Optional[int] = None) -> Dict:
    """{'tensorrt_version', 'compute_capability', 'gpu_name'} of this machine (needs TensorRT and a GPU)."""
    trt = require_tensorrt()
    import torch

    dev = require_cuda_gpu() if device is None else device
    major, minor = torch.cuda.get_device_capability(dev)
    return {"tensorrt_version": trt.__version__, "compute_capability": f"{major}.{minor}",
            "gpu_name": torch.cuda.get_device_name(dev)}


def builder_options(precision: str, workspace_gib: Optional[float] = None, opt_level: int = 3) -> Dict:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"precision": precision, "workspace_gib": workspace_gib, "builder_optimization_level": int(opt_level)}


def build_engine(onnx_path, plan_path, profile_shapes: Dict, precision: str = "fp32", timing_cache=None,
                 workspace_gib: Optional[float] = None, opt_level: int = 3, verbose: bool = False) -> Dict:
    """Build a serialized engine from an ONNX file. profile_shapes: {input: [min, opt, max] shapes}.
    Writes plan_path atomically and returns {'seconds', 'bytes'}. Raises ImportError without TensorRT/GPU,
    ValueError when parsing or building fails (with the parser's messages)."""
    trt = require_tensorrt()
    require_cuda_gpu()
    opts = builder_options(precision, workspace_gib, opt_level)
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # removed (always on) in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errs))
    config = builder.create_builder_config()
    if opts["workspace_gib"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts["workspace_gib"] * 2**30))
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = opts["builder_optimization_level"]
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for name, (mn, op, mx) in profile_shapes.items():
        profile.set_shape(name, tuple(mn), tuple(op), tuple(mx))
    config.add_optimization_profile(profile)
    cache = None
    tc_path = Path(timing_cache) if timing_cache else None
    if tc_path is not None:
        blob = tc_path.read_bytes() if tc_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None and blob:  # an invalid or foreign cache: start a fresh one
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ValueError(f"TensorRT failed to build an engine from {onnx_path} (precision {precision}); "
                         "run with verbose=True for the builder log")
    data = bytes(plan)
    atomic_write_bytes(plan_path, data)
    if cache is not None:
        atomic_write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))
    return {"seconds": round(time.perf_counter() - t0, 2), "bytes": len(data)}
