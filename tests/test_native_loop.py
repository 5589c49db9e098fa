"""Native sampler loop (_C.sample_loop via indis.native) against indis.solvers.sample, and FastSampler."""
from __future__ import annotations

import pytest
import torch

from indis import _native
from indis.discretization import Discretization
from indis.processes import get_process
from indis.solvers import sample as py_sample
from indis.solvers import step_tables
from helpers import random_schedule

pytestmark = pytest.mark.skipif(not _native.native_available(), reason="indis._C not built")

from indis import native  # noqa: E402

PROCS = {
    "edm": (80.0, 0.002),
    "flow": (0.988, 0.002),
    "vp_linear": (1.0, 1e-3),
    "vp_cosine": (0.9946, 1e-3),
}


class ToyBackbone(torch.nn.Module):
    """A smooth nonlinear model x, t -> prediction (per-sample t), any prediction type."""

    def __init__(self, process, prediction_type, dim=12):
        super().__init__()
        self.process, self.prediction_type = get_process(process), prediction_type
        g = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(0.3 * torch.randn(dim, dim, generator=g, dtype=torch.float64), requires_grad=False)
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        flat = x.reshape(x.shape[0], -1)
        t = t.to(x.dtype).view(-1, 1)
        out = torch.tanh(flat @ self.A.to(x.dtype)) * (1 + 0.1 * torch.log1p(t)) + 0.05 * flat
        if cond is not None:
            out = out + cond.to(x.dtype).view(-1, 1)
        return out.reshape(x.shape)


def _disc(proc_name, b, n, dtype=torch.float64, seed=0):
    ts, gamma, dtau = random_schedule(*PROCS[proc_name], b, n, dtype, seed)
    return Discretization(ts, dtau, gamma)


@pytest.mark.parametrize("proc_name", list(PROCS))
@pytest.mark.parametrize("ptype", ["eps", "x0", "velocity"])
@pytest.mark.parametrize("solver,order", [("euler", 1), ("ipndm", 4), ("dpmpp_2m", 2)])
def test_loop_matches_python_solver(proc_name, ptype, solver, order):
    b, n = 3, 5
    bb = ToyBackbone(proc_name, ptype)
    disc = _disc(proc_name, b, n)
    x_T = torch.randn(b, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T = x_T * get_process(proc_name).prior_std()
    ref64 = py_sample(bb, x_T, disc, solver=solver, order=order)
    got64, info = native.sample(bb, x_T, disc, solver=solver, order=order, return_info=True)
    assert info["ring"] == ("references" if ptype == "eps" and solver != "dpmpp_2m" else "buffer")
    scale = ref64.abs().max()
    assert torch.allclose(got64, ref64, rtol=1e-10, atol=1e-10 * scale)
    # fp32 state: native and Python fp32 both against the fp64 reference
    ref32 = py_sample(bb, x_T.float(), disc, solver=solver, order=order)
    got32 = native.sample(bb, x_T.float(), disc, solver=solver, order=order)
    assert got32.dtype == torch.float32
    err_py = (ref32.double() - ref64).abs().max().item()
    err_nat = (got32.double() - ref64).abs().max().item()
    assert torch.allclose(got32.double(), ref32.double(), rtol=1e-5, atol=1e-5 * scale) or err_nat <= 2 * err_py + 1e-6 * scale


def test_loop_half_precision_state():
    bb = ToyBackbone("edm", "eps")
    disc = _disc("edm", 4, 5)
    x_T = 80 * torch.randn(4, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = py_sample(bb, x_T, disc, solver="ipndm")
    for dt in (torch.float16, torch.bfloat16):
        got = native.sample(bb, x_T, disc, solver="ipndm", state_dtype=dt)
        assert got.dtype == dt
        rel = ((got.double() - ref).abs().max() / ref.abs().max()).item()
        assert rel < (5e-3 if dt == torch.float16 else 4e-2), (dt, rel)


def test_loop_shared_schedule_cond_and_no_mutation():
    bb = ToyBackbone("edm", "x0")
    ts = torch.tensor([80.0, 5.0, 0.5, 0.002], dtype=torch.float64)
    x_T = 80 * torch.randn(2, 12, dtype=torch.float64)
    keep = x_T.clone()
    cond = torch.tensor([0.1, -0.2], dtype=torch.float64)
    ref = py_sample(bb, x_T, ts, solver="dpmpp_2m", cond=cond)
    bb.calls = 0
    got = native.sample(bb, x_T, ts, solver="dpmpp_2m", cond=cond)
    assert bb.calls == 3
    assert torch.equal(x_T, keep)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-8)


def test_loop_backbone_returning_its_input_is_safe():
    """An output aliasing the state is copied before the in-place update (reference ring)."""
    ident = lambda x, t, c: x
    ts = torch.tensor([80.0, 5.0, 0.5, 0.002], dtype=torch.float64)
    x_T = torch.randn(2, 5, dtype=torch.float64)
    ref = py_sample(ident, x_T, ts, solver="ipndm", process="edm", prediction_type="eps")
    got = native.sample(ident, x_T, ts, solver="ipndm", process="edm", prediction_type="eps")
    assert torch.allclose(got, ref, rtol=1e-12)


def test_loop_bad_input():
    bb = ToyBackbone("edm", "eps")
    ts = torch.tensor([80.0, 5.0, 0.002], dtype=torch.float64)
    x = torch.randn(2, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="order"):
        native.sample(bb, x, ts, solver="ipndm", order=5)
    with pytest.raises(ValueError, match="native"):
        native.sample(bb, x, ts, solver="unipc")
    with pytest.raises(ValueError, match="N >= 1"):
        native.sample(bb, x, ts[:1], solver="euler")
    with pytest.raises(ValueError, match="decreasing"):
        native.sample(bb, x, ts.flip(0), solver="euler")
    with pytest.raises(ValueError, match="batch size"):
        native.sample(bb, x, ts.expand(3, -1), solver="euler")
    with pytest.raises(ValueError, match="NaN"):
        native.sample(bb, x, ts, solver="euler", gamma=torch.tensor([1.0, float("nan")], dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        native.sample(lambda x, t, c: x[:, :3], x, ts, solver="euler", process="edm", prediction_type="eps")
    with pytest.raises(TypeError, match="torch.Tensor"):
        native.sample(lambda x, t, c: 1.0, x, ts, solver="euler", process="edm", prediction_type="eps")
    with pytest.raises(RuntimeError, match="boom"):
        def bad(x, t, c):
            raise RuntimeError("boom")
        native.sample(bad, x, ts, solver="euler", process="edm", prediction_type="eps")
    # the loop itself, called with tables (indis.solvers.step_tables), checks what it reads and writes
    C = _native.load()
    tables = step_tables("ipndm", "edm", ts, None, None, 2, "eps", batch=2)._asdict()
    fn = lambda x, t: x * 0.01
    C.sample_loop(fn, x, **tables)  # valid
    with pytest.raises(TypeError, match="callable"):
        C.sample_loop(3, x, **tables)
    with pytest.raises(TypeError, match="dtype"):
        C.sample_loop(fn, x.int(), **tables)
    with pytest.raises(ValueError, match="NaN"):
        C.sample_loop(fn, x * float("nan"), **tables)
    with pytest.raises(TypeError, match="float32"):  # float32 tables for a float64 state
        C.sample_loop(fn, x, **{**tables, "u": tables["u"].float()})
    with pytest.raises(ValueError, match="shape"):
        C.sample_loop(fn, x, **{**tables, "p": tables["p"][:1]})
    with pytest.raises(ValueError, match="w must have shape"):
        C.sample_loop(fn, x, **{**tables, "w": torch.zeros(2, 2, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match="orders"):
        C.sample_loop(fn, x, **{**tables, "orders": (2, 2)})  # step 0 has no older history entry
    with pytest.raises(ValueError, match="orders"):
        C.sample_loop(fn, x, **{**tables, "orders": (1,)})
    with pytest.raises(ValueError, match="NaN or inf"):
        C.sample_loop(fn, x, **{**tables, "w": tables["w"] * float("inf")})
    with pytest.raises(ValueError, match="is on meta"):
        C.sample_loop(fn, x, **{**tables, "q": tables["q"].to("meta")})


def test_loop_reads_tables_through_their_strides():
    """The loop reads each table through its strides (step_tables returns views of one tensor): contiguous copies,
    a shared schedule broadcast with stride 0 and a history-major w give the same sample."""
    C = _native.load()
    bb = ToyBackbone("edm", "x0")
    ts = torch.tensor([80.0, 5.0, 0.5, 0.05, 0.002], dtype=torch.float64)
    x_T = 80 * torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fn = lambda x, t: bb(x, t)
    for solver, order in (("ipndm", 3), ("dpmpp_2m", 2)):
        tab = step_tables(solver, "edm", ts, None, None, order, "x0", batch=3)._asdict()
        assert not tab["u"].is_contiguous()  # views of one [B, N, M + 3] tensor
        ref = C.sample_loop(fn, x_T, **tab)["x"]
        dense = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in tab.items()}
        one = step_tables(solver, "edm", ts, None, None, order, "x0", batch=1)._asdict()
        shared = {k: v.expand(3, *v.shape[1:]) if isinstance(v, torch.Tensor) else v for k, v in one.items()}
        w_hist_major = tab["w"].permute(2, 0, 1).contiguous().permute(1, 2, 0)
        for variant in (dense, shared, {**tab, "w": w_hist_major}):
            assert torch.equal(C.sample_loop(fn, x_T, **variant)["x"], ref)
        assert torch.allclose(ref, py_sample(bb, x_T, ts, solver=solver, order=order), rtol=1e-10, atol=1e-8)


def test_loop_runs_any_process_through_the_python_tables():
    """The native loop has no process formulas of its own: a subclass with its own alpha/sigma (here EDM with a
    scaled time, sigma = 2t) runs natively and agrees with the Python solver."""
    from indis.processes import EDMProcess

    class ScaledEDM(EDMProcess):
        def sigma(self, t):
            return 2 * torch.as_tensor(t)

        def d_sigma(self, t):
            return 2 * torch.ones_like(torch.as_tensor(t))

        def log_snr(self, t):
            return -torch.log(2 * torch.as_tensor(t))

    bb = ToyBackbone(ScaledEDM(), "x0")
    ts = torch.tensor([40.0, 5.0, 0.5, 0.001], dtype=torch.float64)
    x_T = 80 * torch.randn(2, 12, dtype=torch.float64)
    for solver in ("ipndm", "dpmpp_2m"):
        ref = py_sample(bb, x_T, ts, solver=solver)
        got = native.sample(bb, x_T, ts, solver=solver)
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10 * ref.abs().max())


def test_fast_sampler_paths_and_timings():
    bb = ToyBackbone("edm", "eps")
    disc = _disc("edm", 2, 4)
    x_T = 80 * torch.randn(2, 12, dtype=torch.float64)

    class Pred(torch.nn.Module):
        def forward(self, x, cond=None):
            return disc

    ref = py_sample(bb, x_T, disc, solver="ipndm")
    fs = native.FastSampler(bb, Pred(), solver="ipndm")
    x0, tm = fs(x_T)
    assert tm["path"] == "native" and tm["nfe"] == 4
    for k in ("predictor_ms", "loop_ms", "total_ms", "backbone_ms", "update_ms"):
        assert tm[k] >= 0
    assert torch.allclose(x0, ref, rtol=1e-10)
    x1, tm1 = native.FastSampler(bb, solver="ipndm", backend="python")(x_T, disc=disc)
    assert tm1["path"] == "python" and torch.allclose(x1, ref, rtol=1e-12)
    x2, tm2 = native.FastSampler(bb, solver="unipc")(x_T, disc=disc)  # auto: UniPC falls back to Python
    assert tm2["path"] == "python" and "Python-only" in tm2["fallback_reason"]
    with pytest.raises(ValueError, match="Python-only"):
        native.FastSampler(bb, solver="unipc", backend="native")
    with pytest.raises(ValueError, match="disc"):
        native.FastSampler(bb)(x_T)


def test_tensorrt_backbone_reports_missing_support():
    if _native.build_info()["tensorrt"]:
        pytest.skip("built with TensorRT")
    with pytest.raises(RuntimeError, match="without TensorRT"):
        native.TensorRTBackbone("model.plan")
