"""Runtimes behind one interface, and the engine backbone / predictor built on them.

A *runner* executes one exported network: `runner({input name: tensor}) -> [output tensors]`, with the
interface of indis.export.onnx_export (float32, batch axis first). Runners:

  TorchRunner   the PyTorch module itself (eager), optionally replayed from CUDA graphs on GPU (one graph per
                batch size, static input buffers, outputs copied out; indis.cuda_graphs.GraphCache).
  ORTRunner     an onnxruntime InferenceSession; CPU or CUDA execution provider; on CUDA the inputs and outputs
                are torch CUDA tensors bound with I/O binding (no host copies). The provider actually used is read
                from `session.get_providers()` (onnxruntime-gpu lists CUDA/TensorRT in
                `get_available_providers()` even on a machine without a GPU), and a request for CUDA that ends on
                CPU is an error, never a silent fallback.
  TRTRunner     a deserialized TensorRT engine: I/O buffers allocated and bound once per batch size
                (`set_tensor_address`), `execute_async_v3` on a dedicated stream, optional CUDA-graph replay
                (indis.cuda_graphs.capture on that stream).

`EngineBackbone` and `EnginePredictor` wrap a runner with the metadata of the backbone protocol
(indis.backbones.base): an EngineBackbone is a callable (x, t[B], cond) -> prediction with `process`,
`prediction_type`, `data_shape`, `cond_spec` and `backbone_id`, so the PyTorch solvers (indis.solvers.sample)
and the native sampler loop drive it like any backbone; an EnginePredictor is a callable (x_T, cond) ->
Discretization like indis.predictor.Predictor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..backbones.base import CondSpec
from ..cuda_graphs import GraphCache, capture
from ..discretization import Discretization
from ..export.manifest import ArtifactError
from ..export.onnx_export import BackboneForExport
from ..export.tensorrt import require_cuda_gpu, require_tensorrt
from ..processes import get_process

Tensor = torch.Tensor

BACKENDS = ("torch", "ort", "trt", "native")


def _device(device) -> torch.device:
    d = torch.device(device or "cpu")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ImportError(f"device {d} requested, but torch sees no CUDA GPU (install a CUDA build of torch and an NVIDIA driver)")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


class Runner:
    backend: str = ""
    provider: str = ""
    input_names: List[str]
    output_names: List[str]

    def __call__(self, inputs: Dict[str, Tensor]) -> List[Tensor]:
        raise NotImplementedError

    def describe(self) -> Dict:
        return {"backend": self.backend, "provider": self.provider}


# ------------------------------------------------------------------------------------------------
# torch
# ------------------------------------------------------------------------------------------------
class TorchRunner(Runner):
    """module(*inputs in input order) -> tuple of outputs. cuda_graph=True (CUDA only) captures one graph per
    batch size and replays it."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str], device=None,
                 cuda_graph: bool = False):
        self.device = _device(device)
        self.module = module.to(self.device).eval()
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.provider = "cuda-graph" if self.cuda_graph else f"eager-{self.device.type}"
        self._graphs = GraphCache(lambda static: self._run(list(static.values())))

    def _run(self, args):
        out = self.module(*args)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    @torch.no_grad()
    def __call__(self, inputs):
        args = [inputs[n].to(self.device, torch.float32) for n in self.input_names]
        if not self.cuda_graph:
            return self._run(args)
        out = self._graphs({n: a for n, a in zip(self.input_names, args)})
        return [o.clone() for o in out]  # outputs copied out: the next replay overwrites the buffers


# ------------------------------------------------------------------------------------------------
# ONNX Runtime
# ------------------------------------------------------------------------------------------------
class ORTRunner(Runner):
    """onnxruntime session over an ONNX file. device 'cpu' -> CPUExecutionProvider; 'cuda[:i]' ->
    CUDAExecutionProvider with I/O binding of torch CUDA tensors."""

    backend = "ort"

    def __init__(self, onnx_path, output_shapes: Dict[str, Sequence], device=None, threads: int = 0):
        import onnxruntime as ort

        self.device = _device(device)
        so = ort.SessionOptions()
        # no busy-waiting of idle ORT threads: the solver loop runs torch ops between network calls on the same cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if self.device.type == "cuda":
            opts = {"device_id": self.device.index, "user_compute_stream": str(torch.cuda.current_stream(self.device).cuda_stream)}
            providers = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=providers)
        self.providers = list(self.session.get_providers())  # the providers really in use, best first
        self.provider = self.providers[0]
        if self.device.type == "cuda" and self.provider != "CUDAExecutionProvider":
            raise ImportError(
                f"ONNX Runtime could not use CUDA for {onnx_path} (session providers: {self.providers}); install "
                "onnxruntime-gpu matching your CUDA/cuDNN, or use device='cpu'")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_shapes = {k: list(v) for k, v in output_shapes.items()}
        self.io_binding = self.provider == "CUDAExecutionProvider"

    def _out_shape(self, name: str, batch: int):
        return [batch if (d == "B" or d == -1) else int(d) for d in self.output_shapes[name]]

    def __call__(self, inputs):
        if not self.io_binding:
            feeds = {n: inputs[n].detach().to("cpu", torch.float32).contiguous().numpy() for n in self.input_names}
            return [torch.from_numpy(o) for o in self.session.run(self.output_names, feeds)]
        import numpy as np

        batch = inputs[self.input_names[0]].shape[0]
        binding = self.session.io_binding()
        keep = []
        for n in self.input_names:
            t = inputs[n].to(self.device, torch.float32).contiguous()
            keep.append(t)
            binding.bind_input(n, "cuda", self.device.index, np.float32, list(t.shape), t.data_ptr())
        outs = []
        for n in self.output_names:
            o = torch.empty(self._out_shape(n, batch), dtype=torch.float32, device=self.device)
            outs.append(o)
            binding.bind_output(n, "cuda", self.device.index, np.float32, list(o.shape), o.data_ptr())
        self.session.run_with_iobinding(binding)
        return outs


# ------------------------------------------------------------------------------------------------
# TensorRT
# ------------------------------------------------------------------------------------------------
class TRTRunner(Runner):
    """A TensorRT engine. Buffers are torch CUDA tensors allocated and bound once per batch size; inference
    is `execute_async_v3` on a private stream ordered after the caller's stream; with cuda_graph=True the
    enqueue is captured once per batch size and replayed."""

    backend = "trt"

    def __init__(self, plan_path, device=None, cuda_graph: bool = False, profile: Optional[Dict] = None):
        trt = require_tensorrt()
        require_cuda_gpu()
        self.trt = trt
        self.device = _device(device or "cuda")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {plan_path} (built by another TensorRT version or GPU, "
                                "or corrupt); re-run `indis export --tensorrt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if is_in(n)]
        self.output_names = [n for n in names if not is_in(n)]
        self.profile = profile
        self.provider = "TensorRT" + ("+cuda-graph" if cuda_graph else "")
        self.cuda_graph = bool(cuda_graph)
        self.stream = torch.cuda.Stream(self.device)
        self.batch = None
        self.buffers: Dict[str, Tensor] = {}
        self.graph = None

    def _torch_dtype(self, name):
        m = {self.trt.DataType.FLOAT: torch.float32, self.trt.DataType.HALF: torch.float16, self.trt.DataType.INT32: torch.int32,
             self.trt.DataType.BOOL: torch.bool}
        if hasattr(self.trt.DataType, "BF16"):
            m[self.trt.DataType.BF16] = torch.bfloat16
        return m[self.engine.get_tensor_dtype(name)]

    def _bind(self, shapes: Dict[str, tuple]):
        if self.profile is not None:
            b = next(iter(shapes.values()))[0]
            if not self.profile["min"] <= b <= self.profile["max"]:
                raise ValueError(f"batch {b} is outside the engine's optimisation profile "
                                 f"[{self.profile['min']}, {self.profile['max']}]; re-export with a wider --batch profile")
        self.buffers = {}
        for n in self.input_names:
            self.context.set_input_shape(n, shapes[n])
        for n in self.input_names + self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            buf = torch.empty(shape, dtype=self._torch_dtype(n), device=self.device)
            self.context.set_tensor_address(n, buf.data_ptr())
            self.buffers[n] = buf
        self.graph = None

    def _enqueue(self):
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    @torch.no_grad()
    def __call__(self, inputs):
        batch = inputs[self.input_names[0]].shape[0]
        if batch != self.batch:
            self._bind({n: tuple(inputs[n].shape) for n in self.input_names})
            self.batch = batch
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for n in self.input_names:
                self.buffers[n].copy_(inputs[n].to(self.device), non_blocking=True)
            if self.cuda_graph:
                if self.graph is None:  # one plain run, then the capture, both on the runner's stream
                    self.graph, _ = capture(self._enqueue, self.device, warmup=1, stream=self.stream)
                self.graph.replay()
            else:
                self._enqueue()
            outs = [self.buffers[n].float().clone() for n in self.output_names]
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return outs


# ------------------------------------------------------------------------------------------------
# engine backbone / predictor
# ------------------------------------------------------------------------------------------------
class EngineBackbone(torch.nn.Module):
    """A backbone executed by a runner: (x [B, *data_shape], t [B] or scalar, cond) -> prediction (dtype of x).

    Attributes of the backbone protocol come from the export manifest. A class condition may be given as
    integer labels [B] (checked and one-hot encoded here) or as one-hot floats [B, dim]."""

    def __init__(self, runner: Runner, process, prediction_type: str, data_shape, cond_spec: CondSpec, backbone_id: str):
        super().__init__()
        self.runner = runner
        self.process = get_process(process)
        self.prediction_type = prediction_type
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        self.backbone_id = backbone_id
        self.backend = runner.backend

    @property
    def provider(self) -> str:
        return self.runner.provider

    def forward(self, x: Tensor, t, cond=None) -> Tensor:
        b = x.shape[0]
        if x.dim() != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"engine backbone: x must have shape [B, {', '.join(map(str, self.data_shape))}], got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t
        inputs = {"x": x, "t": t}
        c = self.cond_spec.check(cond, b, "engine backbone")
        if c is not None:
            inputs["cond"] = c
        return self.runner(inputs)[0].to(device=x.device, dtype=x.dtype)


class EnginePredictor(torch.nn.Module):
    """The exported predictor: (x_T, cond) -> Discretization (float32 tensors on x_T's device)."""

    def __init__(self, runner: Runner, nfe: int, data_shape, cond_spec: CondSpec, predictor_id: str):
        super().__init__()
        self.runner = runner
        self.nfe = int(nfe)
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        self.predictor_id = predictor_id
        self.backend = runner.backend

    def forward(self, x_T: Tensor, cond=None) -> Discretization:
        b = x_T.shape[0]
        inputs = {"x_T": x_T}
        c = self.cond_spec.check(cond, b, "engine predictor")
        if c is not None:
            inputs["cond"] = c
        tau, dtau, gamma = (o.to(x_T.device) for o in self.runner(inputs))
        return Discretization(tau, dtau, gamma)


def torch_engine_backbone(backbone, device=None, cuda_graph: bool = False) -> EngineBackbone:
    """A torch Backbone behind a TorchRunner (one CUDA graph per batch size when cuda_graph and on CUDA), with the
    same protocol attributes: what `load_engines(backend="torch")` builds from an export folder, without one."""
    names = ["x", "t"] + (["cond"] if backbone.cond_spec.kind != "none" else [])
    runner = TorchRunner(BackboneForExport(backbone.eval()).eval(), names, ["prediction"], device, cuda_graph)
    return EngineBackbone(runner, backbone.process, backbone.prediction_type, backbone.data_shape, backbone.cond_spec,
                          backbone.backbone_id)
