"""Native fused update (CPU; the torch.ops.indis custom operators) and the step tables the native loop consumes
(indis.solvers.step_tables) against the Python specification (linear_form and the Python sampler's conversions)."""
from __future__ import annotations

import pytest
import torch

from indis import _native
from indis.processes import get_process
from indis.solvers import linear_form, step_tables
from helpers import random_schedule

C = pytest.importorskip("indis._C") if _native.native_available() else None
pytestmark = pytest.mark.skipif(C is None, reason="indis._C not built")

from indis import native  # noqa: E402

PROCESSES = {
    "edm": (get_process("edm"), 80.0, 0.002),
    "flow": (get_process("flow"), 0.988, 0.002),
    "vp_linear": (get_process("vp_linear"), 1.0, 1e-3),
    "vp_cosine": (get_process("vp_cosine"), 0.9946, 1e-3),
}


def _ref_update(x, hist, u, w):
    xd = x.double()
    bshape = (-1,) + (1,) * (x.dim() - 1)
    out = u.double().view(bshape) * xd
    for j, h in enumerate(hist):
        out = out + w[:, j].double().view(bshape) * h.double()
    return out


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_update_matches_reference(m, dtype):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(5, 3, 7, 9, generator=g, dtype=dtype)  # odd inner size: vector tails
    hist = [torch.randn(x.shape, generator=g, dtype=dtype) for _ in range(m)]
    u = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(5, m, generator=g, dtype=torch.float64)
    ref = _ref_update(x, hist, u, w)
    out = torch.empty_like(x)
    native.fused_update(out, x, hist, u.to(dtype), w.to(dtype))
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert torch.allclose(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    # in place (out is x), coefficients as non-contiguous views
    xin = x.clone()
    w_big = torch.randn(5, 2 * m, dtype=torch.float32)
    w_big[:, ::2] = w.float()
    native.fused_update(xin, xin, hist, u.float(), w_big[:, ::2])
    ref32 = _ref_update(x, hist, u.float(), w.float())
    assert torch.allclose(xin.double(), ref32, rtol=1e-5, atol=1e-5 * ref32.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_update_half_error_vs_torch(dtype):
    """Error against an fp64 reference is at most a small multiple of PyTorch's own error in that dtype."""
    g = torch.Generator().manual_seed(0)
    b, m = 8, 3
    x = torch.randn(b, 3, 32, 32, generator=g).to(dtype)
    hist = [torch.randn(x.shape, generator=g).to(dtype) for _ in range(m)]
    u = torch.rand(b, generator=g) + 0.5
    w = torch.randn(b, m, generator=g)
    ref = _ref_update(x, hist, u, w)
    out = torch.empty_like(x)
    native.fused_update(out, x, hist, u, w)
    bshape = (-1, 1, 1, 1)
    torch_out = u.to(dtype).view(bshape) * x
    for j in range(m):
        torch_out = torch_out + w[:, j].to(dtype).view(bshape) * hist[j]
    err_native = (out.double() - ref).abs().max().item()
    err_torch = (torch_out.double() - ref).abs().max().item()
    assert err_native <= 1.5 * err_torch, (err_native, err_torch)


def test_fused_update_x0_variant():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 10, generator=g)
    pred = torch.randn(4, 10, generator=g)
    old = torch.randn(4, 10, generator=g)
    p, q, u = torch.rand(4, generator=g), torch.rand(4, generator=g), torch.rand(4, generator=g)
    w = torch.randn(4, 2, generator=g)
    slot = torch.empty_like(x)
    out = x.clone()
    native.fused_update_x0(out, out, pred, slot, [old], p, q, u, w)
    s_ref = p[:, None].double() * x.double() + q[:, None].double() * pred.double()
    assert torch.allclose(slot.double(), s_ref, atol=1e-6)
    ref = u[:, None].double() * x.double() + w[:, :1].double() * s_ref + w[:, 1:].double() * old.double()
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_fused_update_rejects_bad_input():
    x = torch.randn(3, 8)
    h = [torch.randn(3, 8) for _ in range(2)]
    u, w = torch.rand(3), torch.rand(3, 2)
    out = torch.empty_like(x)
    f = native.fused_update
    with pytest.raises(ValueError, match="shape"):
        f(out, x, h, u, torch.rand(3, 3))
    with pytest.raises(ValueError, match="shape"):
        f(out, x, [torch.randn(3, 7), h[1]], u, w)
    with pytest.raises(ValueError, match="shape"):
        f(out, x, h, torch.rand(4), w)
    with pytest.raises(ValueError, match="contiguous"):
        f(out, torch.randn(8, 3).t(), h, u, w)
    with pytest.raises(TypeError, match="dtype"):
        f(out, x, [h[0].double(), h[1]], u, w)
    with pytest.raises(TypeError, match="float32"):
        f(out.int(), x.int(), [t.int() for t in h], u, w)
    with pytest.raises(TypeError, match="dtype"):
        f(out, x, h, u, w.double())
    with pytest.raises(ValueError, match="1 to 4"):
        f(out, x, h * 3, u, torch.rand(3, 6))
    with pytest.raises(ValueError, match="1 to 4"):
        f(out, x, [], u, torch.rand(3, 0))
    with pytest.raises(ValueError, match="NaN"):
        f(out, x, h, torch.tensor([1.0, float("nan"), 1.0]), w)
    with pytest.raises(ValueError, match="NaN"):
        f(out, x, h, u, torch.tensor([[1.0, 1.0], [float("inf"), 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="overlaps"):
        f(h[0], x, h, u, w)
    with pytest.raises(ValueError, match="is on meta but x is on cpu"):
        f(out, x, h, u.to("meta"), w)
    with pytest.raises(ValueError, match="differentiable"):
        f(out, x, [h[0].clone().requires_grad_(), h[1]], u, w)
    with pytest.raises(ValueError, match="slot overlaps"):
        native.fused_update_x0(out, x, h[0], x, [], u, u, u, w[:, :1])


# ---- custom operators ----------------------------------------------------------------------------
def test_fused_ops_pass_opcheck():
    """The schema (written tensors marked Tensor(a!)), the Meta kernel (FakeTensor, dynamic shapes under
    aot_dispatch) and the autograd registration, as torch.library.opcheck tests custom operators."""
    g = torch.Generator().manual_seed(0)
    for dtype, m in ((torch.float32, 3), (torch.float64, 1), (torch.bfloat16, 4)):
        x = torch.randn(4, 3, 5, generator=g).to(dtype)
        hist = [torch.randn(x.shape, generator=g).to(dtype) for _ in range(m)]
        u, w = torch.rand(4, generator=g), torch.randn(4, m, generator=g)
        torch.library.opcheck(torch.ops.indis.fused_update.default, (torch.empty_like(x), x, hist, u, w))
        torch.library.opcheck(torch.ops.indis.fused_update.default, (torch.empty_like(x), x, hist, u, w),
                              {"check_finite": False})
        p, q = torch.rand(4, generator=g), torch.rand(4, generator=g)
        torch.library.opcheck(torch.ops.indis.fused_update_x0.default,
                              (torch.empty_like(x), x, torch.randn(x.shape, generator=g).to(dtype), torch.empty_like(x),
                               hist[: m - 1], p, q, u, w))


def test_fused_ops_meta_and_autograd_kernels():
    x = torch.randn(3, 8)
    h = [torch.randn(3, 8) for _ in range(2)]
    u, w = torch.rand(3), torch.rand(3, 2)
    meta = lambda t: t.to("meta")
    # the Meta kernel checks metadata (no memory is read) and writes nothing
    torch.ops.indis.fused_update(meta(x), meta(x), [meta(t) for t in h], meta(u), meta(w))
    with pytest.raises(ValueError, match="shape"):
        torch.ops.indis.fused_update(meta(x), meta(x), [meta(t) for t in h], meta(u), meta(torch.rand(3, 3)))
    # autograd: refused with a message, the version counter of the written tensor is bumped
    out = torch.empty_like(x)
    v0 = out._version
    native.fused_update(out, x, h, u, w)
    assert out._version > v0
    with pytest.raises(ValueError, match="not differentiable"):
        native.fused_update(out, x, h, u.clone().requires_grad_(), w)
    with torch.no_grad():
        native.fused_update(out, x, h, u.clone().requires_grad_(), w)


# ---- step tables ----------------------------------------------------------------------------------
@pytest.mark.parametrize("proc_name", list(PROCESSES))
@pytest.mark.parametrize("solver,order", [("euler", 1), ("ipndm", 4), ("ipndm", 2), ("dpmpp_2m", 2), ("dpmpp_2m", 1)])
def test_step_tables_match_linear_form(proc_name, solver, order):
    proc, T, t0 = PROCESSES[proc_name]
    b, n = 6, 7
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        ts, gamma, dtau = random_schedule(T, t0, b, n, dtype)
        u, w, p, q, tc, orders, pred_is_basis = step_tables(solver, proc, ts, dtau, gamma, order)
        assert u.dtype == dtype and w.shape == (b, n, order if solver != "euler" else 1)
        assert orders == tuple(min(order, i + 1) for i in range(n)) and pred_is_basis == (solver != "dpmpp_2m")
        for i in range(n):
            # specification, evaluated in fp64 from the same (rounded) inputs
            u_ref, w_ref = linear_form(solver, proc, ts.double(), i, gamma.double(), order)
            k = w_ref.shape[1]
            assert k == orders[i]
            assert torch.allclose(u[:, i].double(), u_ref, rtol=tol, atol=0), (i, u[:, i], u_ref)
            scale = w_ref.abs().max()
            assert torch.allclose(w[:, i, :k].double(), w_ref, rtol=tol, atol=tol * scale), (i, w[:, i], w_ref)
            assert (w[:, i, k:] == 0).all()
        assert torch.equal(tc, ts[:, :-1] + dtau)


def test_step_tables_shared_schedule_and_fp32_vs_python_fp32():
    proc = get_process("vp_cosine")
    ts = torch.linspace(0.9946, 1e-3, 6, dtype=torch.float32)
    u, w, *_ = step_tables("ipndm", proc, ts, None, None, 3, batch=4)
    assert u.shape == (4, 5) and torch.equal(u[0], u[3])
    for i in range(5):
        u_ref, w_ref = linear_form("ipndm", proc, ts, i, None, 3)  # Python in fp32
        assert torch.allclose(u[:, i], u_ref.expand(4), rtol=1e-5)
        assert torch.allclose(w[:, i, : w_ref.shape[1]], w_ref.expand(4, -1), rtol=1e-4, atol=1e-7)


def test_step_tables_prediction_maps():
    """p x + q pred equals the Python conversion to the solver's basis."""
    from indis.solvers import make_grid

    proc = get_process("vp_linear")
    ts, gamma, dtau = random_schedule(1.0, 1e-3, 3, 4, torch.float64, seed=3)
    x, pred = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for ptype in ("eps", "x0", "velocity"):
        for solver in ("ipndm", "dpmpp_2m"):
            u, w, p, q, tc, _, pred_is_basis = step_tables(solver, proc, ts, dtau, gamma, 2, prediction_type=ptype)
            assert pred_is_basis == (ptype == "eps" and solver == "ipndm")
            grid = make_grid(proc, ts)
            for i in range(4):
                eps = proc.to_eps(pred, x, tc[:, i], ptype)
                if solver == "ipndm":
                    ref = eps
                else:
                    ref = (x - (grid.sigma[:, i] * gamma[:, i])[:, None] * eps) / grid.alpha[:, i][:, None]
                got = p[:, i, None] * x + q[:, i, None] * pred
                assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10), (ptype, solver, i)


def test_step_tables_read_sign_views_and_reject_bad_input():
    ts = torch.tensor([80.0, 1.0, 0.002], dtype=torch.float64)
    for a, b in zip(step_tables("ipndm", "edm", ts)[:5], step_tables("ipndm", "edm", torch._neg_view(-ts))[:5]):
        assert torch.equal(a, b)
    f = step_tables
    with pytest.raises(ValueError, match="order"):
        f("ipndm", "edm", ts, order=5)
    with pytest.raises(ValueError, match="order"):
        f("euler", "edm", ts, order=2)
    with pytest.raises(ValueError, match="N >= 1"):
        f("euler", "edm", ts[:1])
    with pytest.raises(ValueError, match="shape"):
        f("euler", "edm", ts, gamma=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch"):
        f("euler", "edm", ts.expand(2, -1), batch=3)
    with pytest.raises(TypeError, match="float32 or float64"):
        f("euler", "edm", ts.half())
    with pytest.raises(ValueError, match="prediction type"):
        f("euler", "edm", ts, prediction_type="score")
    with pytest.raises(ValueError, match="unipc"):
        f("unipc", "edm", ts)
