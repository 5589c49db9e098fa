"""The CUDA-graph helper (indis.cuda_graphs) without a GPU: the keying, the refusals, and the order of warm-up,
capture, input copies and replays, checked against a stand-in for torch.cuda that records what is called and
replays a "graph" by running the captured function again on the static buffers."""
from __future__ import annotations

import contextlib

import pytest
import torch

from indis import cuda_graphs
from indis.cuda_graphs import GraphCache, capture, graph_device, signature


def test_signature_keys_shapes_dtypes_devices_and_absent_inputs():
    a = {"x": torch.zeros(2, 3), "cond": None}
    assert signature(a) == signature({"x": torch.ones(2, 3), "cond": None})  # values do not matter
    assert signature(a) != signature({"x": torch.zeros(3, 3), "cond": None})
    assert signature(a) != signature({"x": torch.zeros(2, 3, dtype=torch.float64), "cond": None})
    assert signature(a) != signature({"x": torch.zeros(2, 3), "cond": torch.zeros(2)})
    assert signature(a) != signature({"y": torch.zeros(2, 3), "cond": None})
    assert signature(a) != signature({"x": torch.zeros(2, 3, device="meta"), "cond": None})
    hash(signature(a))


@pytest.mark.parametrize("bad", [[0, 1], 3, "a", (torch.zeros(2),)])
def test_signature_refuses_what_a_graph_cannot_replay(bad):
    with pytest.raises(ValueError, match="cond must be a tensor or None"):
        signature({"x": torch.zeros(2), "cond": bad})


def test_graph_device_needs_one_cuda_device():
    with pytest.raises(ValueError, match="one CUDA device, got cpu"):
        graph_device({"x": torch.zeros(1), "y": None})
    with pytest.raises(ValueError, match="no tensor"):
        graph_device({"y": None})
    with pytest.raises(ValueError, match="cpu, meta"):
        graph_device({"x": torch.zeros(1), "y": torch.zeros(1, device="meta")})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_capture_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA-enabled torch and a GPU"):
        capture(lambda: None, "cuda")


class FakeCuda:
    """Enough of torch.cuda for capture()/GraphCache: streams, the current stream, graph capture and replay.
    A captured graph replays by calling the captured function again (on the same static buffers)."""

    def __init__(self):
        self.log = []
        self.current = "main"

        class Stream:
            def __init__(s, device=None, name=None):
                s.name = name or f"side{len([e for e in self.log if e[0] == 'new_stream'])}"
                self.log.append(("new_stream", s.name))

            def wait_stream(s, other):
                self.log.append(("wait", s.name, other.name))

        class CUDAGraph:
            def __init__(g):
                g.fn = None

            def replay(g):
                self.log.append(("replay",))
                g.fn()

        self.Stream, self.CUDAGraph = Stream, CUDAGraph
        self.main = Stream(name="main")

    def is_available(self):
        return True

    @contextlib.contextmanager
    def device(self, d):
        self.log.append(("device", str(d)))
        yield

    def current_stream(self, device=None):
        return self.main if self.current == "main" else self._streams[self.current]

    @contextlib.contextmanager
    def stream(self, s):
        prev, self.current, self._streams = self.current, s.name, {s.name: s}
        yield
        self.current = prev

    @contextlib.contextmanager
    def graph(self, g, pool=None, stream=None):
        self.log.append(("capture_begin", stream.name))
        with self.stream(stream):
            yield
        self.log.append(("capture_end",))


def test_graph_cache_warms_up_captures_and_replays_on_static_buffers(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(cuda_graphs.torch, "cuda", fake)
    calls = []

    def body(static, scale):
        calls.append((fake.current, static["x"].data_ptr()))
        return static["x"] * scale + (0 if static["cond"] is None else static["cond"])

    cache = GraphCache(body)
    # graph_device wants CUDA tensors: the stand-in runs on CPU tensors
    monkeypatch.setattr(cuda_graphs, "graph_device", lambda inputs: torch.device("cpu"))

    # the "graph" replays the function captured inside the graph context
    orig_capture = cuda_graphs.capture

    def capture_recording(fn, device, **kw):
        graph, out = orig_capture(fn, device, **kw)
        graph.fn = fn
        return graph, out

    monkeypatch.setattr(cuda_graphs, "capture", capture_recording)
    x1 = torch.tensor([1.0, 2.0])
    out = cache({"x": x1, "cond": None}, key="k", scale=3.0)
    # 2 warm-ups + 1 capture on the side stream, then one replay on the caller's stream; never the caller's buffer
    assert [c[0] for c in calls] == ["side1", "side1", "side1", "main"]
    assert all(ptr != x1.data_ptr() for _, ptr in calls)
    kinds = [e[0] for e in fake.log]
    assert kinds.index("wait") < kinds.index("capture_begin") < kinds.index("capture_end") < kinds.index("replay")
    assert ("capture_begin", "side1") in fake.log and ("wait", "side1", "main") in fake.log
    assert ("wait", "main", "side1") in fake.log  # the caller's stream waits for the warm-up
    assert len(cache) == 1 and out is next(iter(cache.entries.values())).output
    # same signature and key: no new capture, the new values are copied into the static buffers
    n_calls = len(calls)
    x2 = torch.tensor([5.0, 7.0])
    cache({"x": x2, "cond": None}, key="k", scale=99.0)  # kwargs are used only at capture
    assert len(calls) == n_calls + 1 and len(cache) == 1  # one replay
    static = next(iter(cache.entries.values()))
    assert torch.equal(static.inputs["x"], x2)
    # another key or shape or a present cond: another graph
    cache({"x": x2, "cond": None}, key="other", scale=1.0)
    cache({"x": torch.zeros(3), "cond": None}, key="k", scale=1.0)
    cache({"x": x2, "cond": torch.ones(2)}, key="k", scale=1.0)
    assert len(cache) == 4
    with pytest.raises(ValueError, match="cond must be a tensor or None"):
        cache({"x": x2, "cond": 3}, key="k", scale=1.0)


def test_fast_sampler_graph_path_refuses_a_non_tensor_condition():
    from indis import _native, native

    if not _native.native_available():
        pytest.skip("indis._C not built")

    class Net(torch.nn.Module):
        process, prediction_type = "edm", "eps"

        def forward(self, x, t, cond=None):
            return x * 0.1

    fs = native.FastSampler(Net(), solver="ipndm", cuda_graph=True)
    ts = torch.tensor([80.0, 1.0, 0.002])
    with pytest.raises(ValueError, match="cond must be a tensor or None"):
        fs._run_graph(torch.randn(2, 3), ["a", "b"], ts)
    with pytest.raises(ValueError, match="one CUDA device"):
        fs._run_graph(torch.randn(2, 3), None, ts)
