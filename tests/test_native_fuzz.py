"""Property-based fuzzing (hypothesis, fixed seed) of the native entry points: the custom operators
torch.ops.indis.fused_update / fused_update_x0 and the sampler loop _C.sample_loop (through indis.native.sample,
and directly with the step tables of indis.solvers.step_tables).

Valid inputs (random shapes, dtypes, orders, strided and sign-view coefficients, in-place or not; random
processes, solvers, prediction types and schedules; backbones that return fresh tensors, one reused buffer,
their input, sign views, non-contiguous or other-dtype outputs) must give the reference result; invalid
inputs must give a ValueError or TypeError, never a crash or a silent result. derandomize=True: the same
examples on every run.
"""
from __future__ import annotations

import pytest
import torch

from indis import _native
from indis.processes import get_process
from indis.solvers import sample as py_sample
from indis.solvers import step_tables
from helpers import random_schedule

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.native_available(), reason="indis._C not built")

from indis import native  # noqa: E402

FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# |error| / (sum of |terms|): the final rounding to the data dtype (accumulation is fp32, fp64 for fp64)
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
PROCS = {"edm": (80.0, 0.002), "flow": (0.988, 0.002), "vp_linear": (1.0, 1e-3), "vp_cosine": (0.9946, 1e-3)}


def _coef(g, b, cols, dtype, layout):
    """Coefficients [b] or [b, cols] in one of several memory layouts: plain, strided view, sign view."""
    shape = (b,) if cols is None else (b, cols)
    vals = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    if layout == "strided":  # every other element of a bigger buffer (any strides are allowed)
        big = torch.zeros((2 * b,) if cols is None else (2 * b, 2 * cols), dtype=dtype)
        view = big[::2] if cols is None else big[::2, ::2]
        view.copy_(vals)
        return view
    if layout == "neg":  # reads as vals, memory holds -vals
        return torch._neg_view((-vals).to(dtype))
    return vals.to(dtype)


def _data(g, shape, dtype, neg=False):
    t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return torch._neg_view(-t) if neg else t


def _check_close(out, terms, dtype):
    ref = sum(c * v for c, v in terms)
    scale = sum((c * v).abs() for c, v in terms) + 1e-30
    err = ((out.double() - ref).abs() / scale).max().item()
    assert err <= REL_TOL[dtype], err


@pytest.mark.slow  # breadth beyond test_native_update (same kernels against the same reference)
@FUZZ
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(DTYPES), coef64=st.booleans(), b=st.integers(1, 5),
       inner=st.lists(st.integers(1, 9), min_size=0, max_size=3), m=st.integers(1, 4), in_place=st.booleans(),
       x0_variant=st.booleans(), layouts=st.lists(st.sampled_from(["plain", "strided", "neg"]), min_size=4, max_size=4),
       neg_data=st.lists(st.booleans(), min_size=6, max_size=6))
def test_fuzz_fused_update_matches_reference(seed, dtype, coef64, b, inner, m, in_place, x0_variant, layouts, neg_data):
    g = torch.Generator().manual_seed(seed)
    shape = (b, *inner)
    cdt = torch.float64 if coef64 else torch.float32
    x = _data(g, shape, dtype, neg=neg_data[0] and not in_place)  # a sign view cannot be written in place
    x_val = x.resolve_neg().double().clone()  # (x itself is overwritten in place)
    u = _coef(g, b, None, cdt, layouts[0])
    w = _coef(g, b, m, cdt, layouts[1])
    bshape = (-1,) + (1,) * len(inner)
    uv, wv = u.resolve_neg().double(), w.resolve_neg().double()
    out = x if in_place else torch.empty(shape, dtype=dtype)
    if not x0_variant:
        hist = [_data(g, shape, dtype, neg=neg_data[1 + j]) for j in range(m)]
        terms = [(uv.view(bshape), x_val)] + [(wv[:, j].view(bshape), h.resolve_neg().double()) for j, h in enumerate(hist)]
        native.fused_update(out, x, hist, u, w)
    else:
        pred = _data(g, shape, dtype, neg=neg_data[5])
        hist = [_data(g, shape, dtype, neg=neg_data[1 + j]) for j in range(m - 1)]
        p, q = _coef(g, b, None, cdt, layouts[2]), _coef(g, b, None, cdt, layouts[3])
        slot = torch.empty(shape, dtype=dtype)
        native.fused_update_x0(out, x, pred, slot, hist, p, q, u, w)
        pv, qv = p.resolve_neg().double().view(bshape), q.resolve_neg().double().view(bshape)
        _check_close(slot, [(pv, x_val), (qv, pred.resolve_neg().double())], dtype)
        s = slot.double()  # the kernel uses the rounded slot it wrote
        terms = [(uv.view(bshape), x_val), (wv[:, 0].view(bshape), s)] + [
            (wv[:, j + 1].view(bshape), h.resolve_neg().double()) for j, h in enumerate(hist)]
    _check_close(out, terms, dtype)


BREAKS = ["hist_shape", "hist_dtype", "x_noncontig", "out_overlaps_hist", "m0", "m5", "nan_coef", "w_shape", "u_dtype",
          "int_data", "grad", "out_neg", "device_mix", "slot_overlaps_x", "scalar_x", "hist_none"]


@FUZZ
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(DTYPES), b=st.integers(1, 4), m=st.integers(1, 4),
       x0_variant=st.booleans(), brk=st.sampled_from(BREAKS))
def test_fuzz_fused_update_rejects_bad_input(seed, dtype, b, m, x0_variant, brk):
    g = torch.Generator().manual_seed(seed)
    shape = (b, 6)
    x = _data(g, shape, dtype)
    out = torch.zeros(shape, dtype=dtype)
    nh = m if not x0_variant else m - 1
    hist = [_data(g, shape, dtype) for _ in range(nh)]
    u = torch.rand(b, generator=g, dtype=torch.float64)
    w = torch.rand(b, m, generator=g, dtype=torch.float64)
    pred, slot = _data(g, shape, dtype), torch.empty(shape, dtype=dtype)
    p, q = torch.rand(b, dtype=torch.float64), torch.rand(b, dtype=torch.float64)
    if brk == "hist_shape" and hist:
        hist[0] = _data(g, (b, 5), dtype)
    elif brk == "hist_dtype" and hist:
        hist[-1] = hist[-1].to(torch.float64 if dtype != torch.float64 else torch.float32)
    elif brk == "x_noncontig":
        x = _data(g, (b, 12), dtype)[:, ::2]
    elif brk == "out_overlaps_hist" and hist:
        out = hist[0]
    elif brk == "m0":
        hist, w = [], w[:, :0]
    elif brk == "m5":
        hist = [_data(g, shape, dtype) for _ in range(5)]
        w = torch.rand(b, 5 + (1 if x0_variant else 0), dtype=torch.float64)
    elif brk == "nan_coef":
        w[0, -1] = float("nan")
    elif brk == "w_shape":
        w = torch.rand(b, m + 1, dtype=torch.float64)
    elif brk == "u_dtype":
        u = u.float()
    elif brk == "int_data":
        x, out = torch.ones(shape, dtype=torch.int32), torch.ones(shape, dtype=torch.int32)
    elif brk == "grad":
        u = u.clone().requires_grad_(True)
    elif brk == "out_neg":
        out = torch._neg_view(torch.zeros(shape, dtype=dtype))
    elif brk == "device_mix":
        u = u.to("meta")
    elif brk == "slot_overlaps_x" and x0_variant:
        slot = x
    elif brk == "scalar_x":
        x, out = torch.tensor(1.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    elif brk == "hist_none" and hist:
        hist[0] = None
    else:
        return  # this break does not apply to this variant (e.g. no history entries)
    keep = out.clone() if out.dtype.is_floating_point and not out.is_neg() and out.device.type == "cpu" else None
    with pytest.raises((ValueError, TypeError)):
        if x0_variant:
            native.fused_update_x0(out, x, pred, slot, hist, p, q, u, w)
        else:
            native.fused_update(out, x, hist, u, w)
    if keep is not None:  # refused before anything was written
        assert torch.equal(out, keep) or brk == "out_overlaps_hist"


class _Toy(torch.nn.Module):
    """A smooth model x, t -> prediction, with one of several output behaviours."""

    def __init__(self, process, prediction_type, mode):
        super().__init__()
        self.process, self.prediction_type, self.mode = get_process(process), prediction_type, mode
        self.buf = None

    def forward(self, x, t, cond=None):
        flat = x.reshape(x.shape[0], -1)
        out = (torch.tanh(0.3 * flat) * (1 + 0.1 * torch.log1p(t.to(x.dtype).view(-1, 1))) + 0.05 * flat).reshape(x.shape)
        if self.mode == "reuse":  # one buffer, overwritten every call
            if self.buf is None or self.buf.shape != out.shape or self.buf.dtype != out.dtype:
                self.buf = torch.empty_like(out)
            return self.buf.copy_(out)
        if self.mode == "input":  # returns x itself (an eps-prediction model here)
            return x
        if self.mode == "neg":
            return torch._neg_view(-out)
        if self.mode == "noncontig":
            return out.transpose(0, -1).contiguous().transpose(0, -1) if out.dim() > 1 else out
        if self.mode == "float32":
            return out.float()
        return out


@pytest.mark.slow  # breadth beyond test_native_loop (same loop against the Python solvers)
@FUZZ
@given(seed=st.integers(0, 2**31 - 1), proc=st.sampled_from(list(PROCS)), ptype=st.sampled_from(["eps", "x0", "velocity"]),
       solver_order=st.sampled_from([("euler", 1), ("ipndm", 1), ("ipndm", 2), ("ipndm", 3), ("ipndm", 4), ("dpmpp_2m", 1),
                                     ("dpmpp_2m", 2)]),
       n=st.integers(1, 6), b=st.integers(1, 4), dim=st.integers(1, 7), per_sample=st.booleans(), with_shift=st.booleans(),
       mode=st.sampled_from(["fresh", "reuse", "input", "neg", "noncontig", "float32"]))
def test_fuzz_sample_loop_matches_python(seed, proc, ptype, solver_order, n, b, dim, per_sample, with_shift, mode):
    solver, order = solver_order
    if mode == "input" and ptype != "eps":
        mode = "fresh"  # x as an x0/velocity prediction is a degenerate model (0/0 in the eps conversion)
    T, t0 = PROCS[proc]
    ts, gamma, dtau = random_schedule(T, t0, b, n, torch.float64, seed)
    if not per_sample:
        ts, gamma, dtau = ts[0], gamma[0], dtau[0]
    if not with_shift:
        dtau = None
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(b, dim, generator=g, dtype=torch.float64) * get_process(proc).prior_std()
    # reference: the Python solver on the same model returning fresh float64 tensors (the identity model as is)
    ref_model = _Toy(proc, ptype, "input" if mode == "input" else "fresh")
    ref = py_sample(ref_model, x_T, ts, solver=solver, order=order, dtau=dtau, gamma=gamma)
    got = native.sample(_Toy(proc, ptype, mode), x_T, ts, solver=solver, order=order, dtau=dtau, gamma=gamma)
    scale = ref.abs().max().item() + 1e-12
    tol = 1e-9 if mode != "float32" else 1e-4
    assert (got - ref).abs().max().item() <= tol * scale


# Breaks of the schedule and solver (checked by indis.native.sample before the tables are computed) and of the
# tables, the backbone and the state (checked by _C.sample_loop itself).
SCHEDULE_BREAKS = ["solver", "order", "process", "pred_type", "nan_ts", "increasing_ts", "ts_batch", "dtau_shape",
                   "ts_out_of_range", "nan_gamma"]
LOOP_BREAKS = ["ret_shape", "ret_none", "ret_int", "ret_meta", "not_callable", "x_int", "x_empty", "x_nan",
               "table_dtype", "table_shape", "table_device", "table_nan", "w_cols", "orders_len", "orders_value",
               "t_call_int"]


class _Model(torch.nn.Module):
    def __init__(self, fn, process="edm", prediction_type="eps"):
        super().__init__()
        self.fn, self.process, self.prediction_type = fn, get_process(process), prediction_type

    def forward(self, x, t, cond=None):
        return self.fn(x, t)


@FUZZ
@given(seed=st.integers(0, 2**31 - 1), brk=st.sampled_from(SCHEDULE_BREAKS + LOOP_BREAKS), b=st.integers(1, 3),
       n=st.integers(1, 4))
def test_fuzz_sample_loop_rejects_bad_input(seed, brk, b, n):
    C = _native.load()
    g = torch.Generator().manual_seed(seed)
    ts, gamma, dtau = random_schedule(80.0, 0.002, b, n, torch.float64, seed)
    x = torch.randn(b, 5, generator=g, dtype=torch.float64) * 80
    fn = lambda x, t: x * 0.01
    kw = dict(solver="ipndm", order=2, process="edm", prediction_type="eps")
    if brk in SCHEDULE_BREAKS:
        if brk == "solver":
            kw["solver"] = "unipc"
        elif brk == "order":
            kw["order"] = 5
        elif brk == "process":
            kw["process"] = "ddpm"
        elif brk == "pred_type":
            kw["prediction_type"] = "score"
        elif brk == "nan_ts":
            ts = ts.clone()
            ts[0, -1] = float("nan")
        elif brk == "increasing_ts":
            ts = ts.flip(-1)
        elif brk == "ts_batch":
            ts = torch.cat([ts, ts])
        elif brk == "dtau_shape":
            dtau = torch.zeros(b, n + 1, dtype=torch.float64)
        elif brk == "ts_out_of_range":
            ts = ts.clone()
            ts[:, -1] = -1.0
        elif brk == "nan_gamma":
            gamma = gamma.clone()
            gamma[-1, 0] = float("inf")
        with pytest.raises((ValueError, TypeError)):
            native.sample(fn, x, ts, dtau=dtau, gamma=gamma, **kw)
        return
    tables = step_tables("ipndm", "edm", ts, dtau, gamma, 2 if n > 1 else 1, "eps")._asdict()
    if brk == "ret_shape":
        fn = lambda x, t: x[:, :2]
    elif brk == "ret_none":
        fn = lambda x, t: None
    elif brk == "ret_int":
        fn = lambda x, t: torch.ones(x.shape, dtype=torch.int64)
    elif brk == "ret_meta":
        fn = lambda x, t: torch.empty(x.shape, device="meta", dtype=x.dtype)
    elif brk == "not_callable":
        fn = 3
    elif brk == "x_int":
        x = torch.ones(b, 5, dtype=torch.int64)
    elif brk == "x_empty":
        x = torch.empty(0, 5, dtype=torch.float64)
    elif brk == "x_nan":
        x = x.clone()
        x[-1, 0] = float("nan")
    elif brk == "table_dtype":
        name = ["u", "w", "p", "q", "t_call"][seed % 5]
        tables[name] = tables[name].float()
    elif brk == "table_shape":
        name = ["u", "p", "q", "t_call"][seed % 4]
        tables[name] = torch.cat([tables[name], tables[name]], dim=seed % 2)
    elif brk == "table_device":
        name = ["u", "w", "p", "q", "t_call"][seed % 5]
        tables[name] = tables[name].to("meta")
    elif brk == "table_nan":
        name = ["u", "w", "p", "q", "t_call"][seed % 5]
        tables[name] = tables[name].clone()
        tables[name].view(-1)[seed % tables[name].numel()] = float("nan")
    elif brk == "w_cols":
        tables["w"] = torch.zeros(b, n, 5, dtype=torch.float64)
    elif brk == "orders_len":
        tables["orders"] = tables["orders"] + (1,)
    elif brk == "orders_value":
        orders = list(tables["orders"])
        orders[seed % n] = (seed % n) + 2  # more history entries than the step has (or the ring holds)
        tables["orders"] = tuple(orders)
    elif brk == "t_call_int":
        tables["t_call"] = tables["t_call"].long()
    with pytest.raises((ValueError, TypeError)):
        C.sample_loop(fn, x, **tables, validate=True, timing=False)
