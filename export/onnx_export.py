"""ONNX export of the predictor and the backbone, one export spec per network (as NVIDIA's TensorRT
demo/Diffusion `BaseModel`: input/output names, dynamic axes, the min/opt/max profile, sample inputs).

Networks and their ONNX interfaces (float32 at the boundary, batch axis "B" dynamic):

  predictor   x_T [B, *data_shape] (, cond [B, dim])  ->  tau [B, N+1], dtau [B, N], gamma [B, N]
  backbone    x [B, *data_shape], t [B] (, cond [B, dim])  ->  prediction [B, *data_shape]

A class condition is passed as a one-hot float [B, dim] (integer labels are converted by the runtime, see
indis.engines), a text condition as its pooled embedding [B, dim]. The backbone's raw prediction (its
`prediction_type`) is exported, not eps: the solver loop converts it, exactly as in PyTorch.

The exporter is torch.onnx's TorchScript tracer (`dynamo=False`) at opset 17: our networks contain Python
checks on shapes and values (they are traced away, the graph keeps the arithmetic), no data-dependent control
flow remains, and the traced graphs use only ops TensorRT supports (checked by `check_onnx`). Each file is
checked with `onnx.checker` (full check), shape-inferred in strict mode, and checked against the TensorRT op
set; the bytes are written atomically.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.onnx import symbolic_helper

from ..backbones.gmm import GMMBackbone
from ..io import atomic_write_bytes
from .manifest import ArtifactError, sha256_bytes, verify_file
from .trt_ops import check_trt_graph

Tensor = torch.Tensor

DEFAULT_OPSET = 17
PROTOBUF_LIMIT = 2 * 1024**3 - 1


# ------------------------------------------------------------------------------------------------
# wrappers: fp32 at the boundary, fixed positional interface
# ------------------------------------------------------------------------------------------------
class BackboneForExport(nn.Module):
    """(x, t[B] (, cond)) -> prediction, float32. Exposes nothing but the network call."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.backbone(x, t, cond).float()


class PredictorForExport(nn.Module):
    """(x_T (, cond)) -> (tau [B, N+1], dtau [B, N], gamma [B, N]), float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_T: Tensor, cond: Optional[Tensor] = None):
        d = self.model(x_T, cond)
        b = x_T.shape[0]
        per_sample = lambda v: v.float() if v.dim() == 2 else v.float().unsqueeze(0).expand(b, -1)
        tau = per_sample(d.timesteps)
        dtau = torch.zeros_like(tau[:, :-1]) if d.dtau is None else per_sample(d.dtau)
        gamma = torch.ones_like(tau[:, :-1]) if d.gamma is None else per_sample(d.gamma)
        return tau, dtau, gamma


# ------------------------------------------------------------------------------------------------
# export specs
# ------------------------------------------------------------------------------------------------
@dataclass
class ExportSpec:
    """Interface of one exported network. Shapes use -1 for the batch axis."""

    network: str  # "predictor" | "backbone"
    inputs: Dict[str, Tuple[int, ...]]
    outputs: Dict[str, Tuple[int, ...]]
    cond_kind: str = "none"
    data_shape: Tuple[int, ...] = ()
    prior_std: float = 1.0
    t_range: Tuple[float, float] = (1e-3, 1.0)
    extra: Dict = field(default_factory=dict)

    @property
    def input_names(self) -> List[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self.outputs)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        return {n: {0: "B"} for n in list(self.inputs) + list(self.outputs)}

    def shapes(self, batch: int) -> Dict[str, Tuple[int, ...]]:
        return {n: (batch,) + tuple(s[1:]) for n, s in self.inputs.items()}

    def profile_shapes(self, profile: Dict[str, int]) -> Dict[str, List[Tuple[int, ...]]]:
        """{input: [min shape, opt shape, max shape]} for a batch profile {'min', 'opt', 'max'}."""
        check_profile(profile)
        return {n: [self.shapes(profile[k])[n] for k in ("min", "opt", "max")] for n in self.inputs}

    def sample_inputs(self, batch: int, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, ...]:
        """Random inputs: x ~ prior_std N(0, I) (predictor) or a noisy point at a log-uniform t (backbone)."""
        g = generator or torch.Generator().manual_seed(0)
        out = []
        for name, shape in self.shapes(batch).items():
            if name in ("x", "x_T"):
                out.append(torch.randn(shape, generator=g) * (self.prior_std if name == "x_T" else 1.0))
            elif name == "t":
                lo, hi = (math.log(v) for v in self.t_range)
                out.append(torch.exp(lo + (hi - lo) * torch.rand(shape, generator=g)))
            elif name == "cond":
                if self.cond_kind == "class":
                    labels = torch.randint(0, shape[1], (batch,), generator=g)
                    out.append(torch.nn.functional.one_hot(labels, shape[1]).float())
                else:
                    out.append(torch.randn(shape, generator=g))
        if self.network == "backbone":
            # x at noise level t: x = alpha(t) x0 + sigma(t) eps with x0 ~ U(-1, 1)-ish data scale
            proc = self.extra.get("process")
            if proc is not None:
                x, t = out[0], out[1]
                bshape = (-1,) + (1,) * (x.dim() - 1)
                a, s = proc.alpha(t.double()).float().view(bshape), proc.sigma(t.double()).float().view(bshape)
                x0 = torch.rand(x.shape, generator=g) * 2 - 1
                out[0] = a * x0 + s * x
        return tuple(out)


def check_profile(profile: Dict[str, int]) -> None:
    try:
        lo, opt, hi = (int(profile[k]) for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"a batch profile needs integer 'min', 'opt' and 'max', got {profile!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got min={lo}, opt={opt}, max={hi}")


def _cond_dim(cond_spec) -> int:
    return 0 if cond_spec is None or cond_spec.kind == "none" else int(cond_spec.dim)


def backbone_spec(backbone) -> ExportSpec:
    shape = tuple(int(d) for d in backbone.data_shape)
    cs = getattr(backbone, "cond_spec", None)
    inputs = {"x": (-1,) + shape, "t": (-1,)}
    if _cond_dim(cs):
        inputs["cond"] = (-1, _cond_dim(cs))
    p = backbone.process
    return ExportSpec("backbone", inputs, {"prediction": (-1,) + shape}, cs.kind if cs else "none", shape,
                      p.prior_std(), (p.t0, p.T), extra={"process": p})


def predictor_spec(model) -> ExportSpec:
    shape = tuple(int(d) for d in model.data_shape)
    cs = getattr(model, "cond_spec", None)
    n = model.param.nfe
    inputs = {"x_T": (-1,) + shape}
    if _cond_dim(cs):
        inputs["cond"] = (-1, _cond_dim(cs))
    return ExportSpec("predictor", inputs, {"tau": (-1, n + 1), "dtau": (-1, n), "gamma": (-1, n)},
                      cs.kind if cs else "none", shape, model.param.process.prior_std(model.param.T))


# ------------------------------------------------------------------------------------------------
# export and checks
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _export_mode(module: nn.Module):
    """eval(), no grad, unbounded GMM chunking (a Python loop over batch chunks would be traced for one
    chunk of the sample batch; with one chunk the graph is valid for every batch size), and the `export_context()`
    of every submodule that has one (DiffusersAdapter: FLUX's batch-free rotary embedding)."""
    saved = [(m, m.chunk) for m in module.modules() if isinstance(m, GMMBackbone)]
    was_training = module.training
    try:
        for m, _ in saved:
            m.chunk = 1 << 62
        module.eval()
        with torch.no_grad(), contextlib.ExitStack() as stack:
            for m in module.modules():
                if callable(getattr(m, "export_context", None)):
                    stack.enter_context(m.export_context())
            yield
    finally:
        for m, c in saved:
            m.chunk = c
        module.train(was_training)


_SYMBOLICS_REGISTERED = False


def _register_symbolics(opset: int) -> None:
    """ONNX symbolics for aten ops the TorchScript exporter lacks (used by the VP processes, and rms_norm below):
    logaddexp(a, b) = max(a, b) + log(1 + exp(-|a - b|)) (stable), expm1(x) = exp(x) - 1 and
    log1p(x) = log(1 + x), with TensorRT-supported ops only. ONNX has no expm1/log1p; in float32 the plain
    forms lose relative accuracy only where |x| < ~1e-4, which the VP schedules do not reach (t >= t0)."""
    global _SYMBOLICS_REGISTERED
    if _SYMBOLICS_REGISTERED:
        return

    def logaddexp(g, a, b):
        m = g.op("Max", a, b)
        d = g.op("Neg", g.op("Abs", g.op("Sub", a, b)))
        one = g.op("Constant", value_t=torch.tensor(1.0))
        return g.op("Add", m, g.op("Log", g.op("Add", g.op("CastLike", one, d), g.op("Exp", d))))

    def expm1(g, x):
        one = g.op("Constant", value_t=torch.tensor(1.0))
        return g.op("Sub", g.op("Exp", x), g.op("CastLike", one, x))

    def log1p(g, x):
        one = g.op("Constant", value_t=torch.tensor(1.0))
        return g.op("Log", g.op("Add", x, g.op("CastLike", one, x)))

    def rms_norm(opset_version):
        def fn(g, x, normalized_shape, weight, eps):
            """aten::rms_norm (FLUX's and SD3.5's QK norms): x / sqrt(mean(x^2 over the normalized dims) + eps) * weight,
            eps defaulting to torch's finfo(x.dtype).eps, as torch.nn.functional.rms_norm."""
            shape = symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")
            axes = list(range(-len(shape), 0))
            e = None if symbolic_helper._is_none(eps) else symbolic_helper._get_const(eps, "f", "eps")
            if e is None:
                st = x.type().scalarType() if x.type() is not None else None
                e = torch.finfo({"Half": torch.float16, "BFloat16": torch.bfloat16, "Double": torch.float64}.get(st, torch.float32)).eps
            sq = g.op("Mul", x, x)
            if opset_version < 18:
                ms = g.op("ReduceMean", sq, axes_i=axes, keepdims_i=1)
            else:
                ms = g.op("ReduceMean", sq, g.op("Constant", value_t=torch.tensor(axes, dtype=torch.int64)), keepdims_i=1)
            eps_c = g.op("CastLike", g.op("Constant", value_t=torch.tensor(float(e))), x)
            y = g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", g.op("Add", ms, eps_c))))
            return y if symbolic_helper._is_none(weight) else g.op("Mul", y, weight)
        return fn

    for v in range(DEFAULT_OPSET, 21):
        torch.onnx.register_custom_op_symbolic("aten::logaddexp", logaddexp, v)
        torch.onnx.register_custom_op_symbolic("aten::expm1", expm1, v)
        torch.onnx.register_custom_op_symbolic("aten::log1p", log1p, v)
        torch.onnx.register_custom_op_symbolic("aten::rms_norm", rms_norm(v), v)
    _SYMBOLICS_REGISTERED = True


def export_bytes(module: nn.Module, spec: ExportSpec, batch: int = 2, opset: int = DEFAULT_OPSET) -> bytes:
    """Trace `module` (a *ForExport wrapper) on sample inputs of `batch` and return the ONNX bytes."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: INDIS exports at opset 17 or newer (TensorRT-friendly LayerNorm/attention patterns)")
    _register_symbolics(opset)
    args = spec.sample_inputs(batch)
    buf = io.BytesIO()
    with _export_mode(module), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the input checks are traced away by design
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=spec.input_names,
                          output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(), do_constant_folding=True)
    import onnx

    model = fold_constants(onnx.load_from_string(buf.getvalue()))
    # declare the interface shapes of the spec (the tracer may leave symbolic names for static dims); strict
    # shape inference in check_onnx then verifies that the graph agrees with them
    for v in list(model.graph.input) + list(model.graph.output):
        shape = (spec.inputs.get(v.name) or spec.outputs.get(v.name))
        if shape is None:
            continue
        dims = v.type.tensor_type.shape.dim
        del dims[:]
        for k, d in enumerate(shape):
            dims.add().dim_param = "B" if k == 0 else ""
            if k > 0:
                dims[k].dim_value = int(d)
    data = model.SerializeToString()
    if len(data) > PROTOBUF_LIMIT:
        raise ValueError(f"the {spec.network} ONNX graph is {len(data) / 2**30:.2f} GiB, over protobuf's 2 GiB limit; "
                         "external-data export is not supported yet")
    return data


_NO_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial", "If",
            "Loop", "Scan"}


def fold_constants(model, max_bytes: int = 1 << 28):
    """Evaluate every node whose inputs are all constants (initializers / Constant outputs) with onnx's
    reference evaluator and store its outputs as initializers. The TorchScript exporter leaves e.g. the
    FIR resampling filters of EDM's UNets as Expand/Where chains over constants, and TensorRT wants convolution
    weights to be initializers. Works in place (dead initializers removed) and returns the model."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    keep, new_inits = [], []
    for n in g.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t) if n.attribute[0].name == "value" else None
            if consts[n.output[0]] is None:
                consts.pop(n.output[0])
            keep.append(n)
            continue
        ins = [i for i in n.input if i]
        if n.op_type in _NO_FOLD or n.domain not in ("", "ai.onnx") or not ins or not all(i in consts for i in ins):
            keep.append(n)
            continue
        try:
            outs = ReferenceEvaluator(n).run(None, {i: consts[i] for i in ins})
        except Exception:  # leave anything the reference evaluator cannot run
            keep.append(n)
            continue
        if sum(np.asarray(o).nbytes for o in outs) > max_bytes:
            keep.append(n)
            continue
        for name, val in zip(n.output, outs):
            val = np.asarray(val)
            consts[name] = val
            new_inits.append(numpy_helper.from_array(val, name))
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    # drop initializers and Constant nodes nobody reads any more
    for _ in range(2):
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        live = [n for n in g.node if n.op_type != "Constant" or any(o in used for o in n.output)]
        del g.node[:]
        g.node.extend(live)
        inits = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(inits)
    onnx.checker.check_model(model)
    return model


def check_onnx(model_or_bytes, spec: Optional[ExportSpec] = None, require_trt_ops: bool = True) -> Dict:
    """onnx.checker (full), strict shape inference, opset >= 17 and the TensorRT op set. Returns
    {'opset', 'ops', 'notes', 'inputs', 'outputs'}; raises ValueError listing the problems."""
    import onnx

    model = onnx.load_from_string(model_or_bytes) if isinstance(model_or_bytes, (bytes, bytearray)) else model_or_bytes
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise ValueError(f"ONNX check failed: {type(e).__name__}: {e}") from e
    rep = check_trt_graph(inferred)
    if require_trt_ops and rep["errors"]:
        raise ValueError("the ONNX graph is not TensorRT-friendly:\n  " + "\n  ".join(rep["errors"]))

    def io_desc(vals):
        out = []
        for v in vals:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()})
        return out

    ins, outs = io_desc(model.graph.input), io_desc(model.graph.output)
    if spec is not None:
        if [i["name"] for i in ins] != spec.input_names or [o["name"] for o in outs] != spec.output_names:
            raise ValueError(f"ONNX interface {[i['name'] for i in ins]} -> {[o['name'] for o in outs]} differs from the "
                             f"spec {spec.input_names} -> {spec.output_names}")
        for d, s in zip(ins + outs, list(spec.inputs.values()) + list(spec.outputs.values())):
            if d["shape"][0] != "B" or d["shape"][1:] != list(s[1:]):
                raise ValueError(f"ONNX {d['name']} has shape {d['shape']}, expected ['B', {', '.join(map(str, s[1:]))}]")
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    return {"opset": opset, "ops": rep["ops"], "notes": rep["notes"], "inputs": ins, "outputs": outs}


def export_onnx(module: nn.Module, spec: ExportSpec, path, batch: int = 2, opset: int = DEFAULT_OPSET) -> Dict:
    """Export, check and atomically write one network. Returns its manifest entry (without the file hash
    fields, which the caller adds from the written file)."""
    t0 = time.perf_counter()
    data = export_bytes(module, spec, batch, opset)
    info = check_onnx(data, spec)
    atomic_write_bytes(path, data)
    info.update(kind="onnx", network=spec.network, sha256=sha256_bytes(data), bytes=len(data),
                export_seconds=round(time.perf_counter() - t0, 3), export_batch=batch)
    return info


def load_onnx_checked(path, entry: Optional[Dict] = None):
    """onnx.load with a clear error for a corrupt/truncated file (and the manifest check when entry is given)."""
    import onnx

    p = Path(path)
    if entry is not None:
        verify_file(p.parent, p.name, entry)
    try:
        return onnx.load(str(p))
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise ArtifactError(f"{p} is not a readable ONNX file (corrupt or truncated?): {type(e).__name__}: {e}") from e


def ort_session(path_or_bytes, providers: Optional[Sequence[str]] = None, threads: int = 0):
    """An onnxruntime InferenceSession (CPU unless providers are given)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # no busy-waiting of idle ORT threads: the solver loop runs torch ops between network calls on the same cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    src = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    return ort.InferenceSession(src, sess_options=so, providers=list(providers or ["CPUExecutionProvider"]))


def compare_with_torch(module: nn.Module, spec: ExportSpec, onnx_src, batches: Sequence[int] = (1, 5),
                       seed: int = 1, threads: int = 0) -> Dict[int, float]:
    """Max |ORT - torch| (fp32, ORT CPU) on random inputs for each batch size; {batch: error}."""
    sess = ort_session(onnx_src, threads=threads)
    errs = {}
    with _export_mode(module):
        for b in batches:
            args = spec.sample_inputs(b, torch.Generator().manual_seed(seed + b))
            ref = module(*args)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, {n: a.numpy() for n, a in zip(spec.input_names, args)})
            errs[b] = max(float((torch.from_numpy(g) - r.float()).abs().max()) for g, r in zip(got, ref))
    return errs

