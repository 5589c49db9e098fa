"""CUDA paths of the native core. Skipped without a GPU (and a CUDA-enabled torch and a CUDA build)."""
from __future__ import annotations

import pytest
import torch

from indis import _native

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (_native.native_available() and _native.build_info()["cuda"] and torch.cuda.is_available()),
        reason="needs indis._C built with CUDA, a CUDA-enabled torch and a GPU",
    ),
]

from indis import native  # noqa: E402
from indis.discretization import Discretization  # noqa: E402
from indis.cuda_graphs import capture  # noqa: E402
from indis.solvers import linear_form, step_tables  # noqa: E402
from indis.solvers import sample as py_sample  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 4])
@pytest.mark.parametrize("inner", [3 * 32 * 32, 7])  # vectorised and scalar paths
def test_cuda_fused_update_matches_cpu(dtype, m, inner):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(6, inner, generator=g).to(dtype)
    hist = [torch.randn(6, inner, generator=g).to(dtype) for _ in range(m)]
    u, w = torch.rand(6, generator=g) + 0.5, torch.randn(6, m, generator=g)
    ref = torch.empty_like(x)
    native.fused_update(ref, x, hist, u, w)
    xc = x.cuda()
    native.fused_update(xc, xc, [h.cuda() for h in hist], u.cuda(), w.cuda())
    torch.cuda.synchronize()
    tol = {torch.float32: 1e-6, torch.float64: 1e-13, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert torch.allclose(xc.cpu().double(), ref.double(), rtol=tol, atol=tol * ref.double().abs().max().item())


def test_cuda_fused_update_x0_and_misaligned():
    x = torch.randn(4, 1001, device="cuda")[:, 1:].contiguous()
    base = torch.randn(4 * 1000 + 1, device="cuda")
    pred = base[1:].view(4, 1000)  # not 16-byte aligned: scalar path
    slot, old = torch.empty_like(x), torch.randn_like(x)
    p, q, u = (torch.rand(4, device="cuda") for _ in range(3))
    w = torch.randn(4, 2, device="cuda")
    out = torch.empty_like(x)
    native.fused_update_x0(out, x, pred, slot, [old], p, q, u, w)
    s_ref = p[:, None] * x + q[:, None] * pred
    assert torch.allclose(slot, s_ref, atol=1e-5)
    assert torch.allclose(out, u[:, None] * x + w[:, :1] * s_ref + w[:, 1:] * old, atol=1e-5)


def test_cuda_fused_update_on_side_stream_and_bad_device():
    x = torch.randn(2, 64, device="cuda")
    h = [torch.randn_like(x)]
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        native.fused_update(x, x, h, torch.ones(2, device="cuda"), torch.ones(2, 1, device="cuda"))
    s.synchronize()
    with pytest.raises(ValueError, match="is on cpu"):
        native.fused_update(x, x, h, torch.ones(2), torch.ones(2, 1, device="cuda"))


@pytest.mark.parametrize("solver,order", [("euler", 1), ("ipndm", 4), ("dpmpp_2m", 2)])
@pytest.mark.parametrize("proc", ["edm", "vp_cosine"])
def test_cuda_step_tables_match_linear_form_and_capture(solver, order, proc):
    """The tables on the schedule's device equal linear_form, and they can be computed inside a graph capture."""
    ts = torch.tensor([[80.0, 8.0, 1.0, 0.1, 0.002]] * 3, dtype=torch.float64)
    if proc != "edm":
        ts = torch.tensor([[0.9946, 0.6, 0.3, 0.1, 1e-3]] * 3, dtype=torch.float64)
    gamma = 1 + 0.05 * torch.randn(3, 4, dtype=torch.float64)
    u, w, *_ = step_tables(solver, proc, ts.cuda(), None, gamma.cuda(), order)
    for i in range(4):
        u_ref, w_ref = linear_form(solver, proc, ts, i, gamma, order)
        assert torch.allclose(u[:, i].cpu(), u_ref, rtol=1e-12)
        assert torch.allclose(w[:, i, : w_ref.shape[1]].cpu(), w_ref, rtol=1e-12, atol=1e-14)
    static = {"ts": ts.cuda(), "gamma": gamma.cuda()}
    graph, out = capture(lambda: step_tables(solver, proc, static["ts"], None, static["gamma"], order), "cuda")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out.u, u) and torch.equal(out.w, w)


class _Net(torch.nn.Module):
    process, prediction_type = "edm", "x0"

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(48, 48)

    def forward(self, x, t, cond=None):
        h = self.lin(x.reshape(x.shape[0], -1)) * torch.rsqrt(1 + t.view(-1, 1) ** 2)
        return h.reshape(x.shape)


def test_cuda_loop_and_graph_match_python():
    torch.manual_seed(0)
    net = _Net().cuda()
    b, n = 4, 5
    ts = torch.tensor([80.0, 10.0, 2.0, 0.5, 0.05, 0.002], dtype=torch.float64).expand(b, -1).cuda()
    disc = Discretization(ts, torch.zeros(b, n, dtype=torch.float64, device="cuda"),
                          torch.ones(b, n, dtype=torch.float64, device="cuda"))
    x_T = 80 * torch.randn(b, 3, 4, 4, device="cuda")
    ref = py_sample(net, x_T, disc, solver="ipndm")
    got = native.sample(net, x_T, disc, solver="ipndm")
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4)
    fs = native.FastSampler(net, solver="ipndm", cuda_graph=True)
    g1, tm = fs(x_T, disc=disc)
    assert tm["path"] == "native+cuda_graph"
    assert torch.allclose(g1, ref, rtol=1e-4, atol=1e-4)
    x_T2 = 80 * torch.randn_like(x_T)
    g2, _ = fs(x_T2, disc=disc)  # replay with new inputs
    assert torch.allclose(g2, py_sample(net, x_T2, disc, solver="ipndm"), rtol=1e-4, atol=1e-4)
    assert len(fs._graphs) == 1
