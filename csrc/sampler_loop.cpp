// The native sampler loop, _C.sample_loop: N backbone calls, each followed by one fused update
// (csrc/fused_update.cpp, csrc/cuda/fused_update.cu), with a preallocated ring buffer of past basis values.
// The coefficients of all steps come in as tables computed by the Python solvers
// (indis.solvers.step_tables: u, w, p, q, the call times and the order of each step); this file holds no
// solver or process formula.
//
// Two ring modes:
//   * references (pred_is_basis: eps-prediction backbone, eps-basis solver: Euler, iPNDM): the ring keeps
//     the backbone's own output tensors (raw eps) and gamma is folded into w, so a step is one pass
//     with M+1 reads and 1 write and the loop copies nothing;
//   * buffer (x0/velocity prediction, or the x0-basis DPM-Solver++(2M), or a native backbone that
//     reuses its output buffer): ring slots are preallocated once; each step forms the basis value
//     h = p*x + q*pred in the same pass as the update (2 writes: slot and state).
// On CUDA everything runs on the caller's current stream (the capture stream inside torch.cuda.graph).
// The state x is updated in place. Per step the loop allocates no tensor memory itself; a Python
// backbone allocates its own output, and an output in another dtype than the state is cast (one
// allocation).
//
// A Python backbone is not trusted with the raw pointers: after each call the loop checks that the state
// and the history entries it keeps are still where it recorded them (a backbone that calls x.set_() or
// resizes a storage gets a ValueError, never a write through a stale pointer); an output that shares
// memory with a history entry still in use (a backbone that returns one buffer, overwritten every call)
// is detected and the sample is recomputed with the copying ring (result "reuse_detected"); sign-bit
// views (.conj().imag) of any input are materialised before their memory is read.
#include <torch/extension.h>  // at::Tensor <-> torch.Tensor pybind11 casters (libtorch_python)

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "indis_native.h"
#include "native_backbone.h"
#include "native_ops.h"

namespace py = pybind11;

namespace indis {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// True if `t` still is the tensor the loop recorded: same data pointer, dtype, shape, contiguous, and a
// storage that still holds all of it. A Python backbone gets the live state tensor and keeps references to
// its own outputs, so it can replace or shrink their storage (x.set_(...), x.data = ..., x.resize_(...),
// x.untyped_storage().resize_(0)); the loop writes through raw pointers and must notice that first.
bool intact(const at::Tensor& t, const void* ptr, at::IntArrayRef sizes, at::ScalarType dtype) {
  if (!t.defined() || !t.has_storage() || t.scalar_type() != dtype || t.sizes() != sizes || !t.is_contiguous()) return false;
  if (ptr == nullptr || t.data_ptr() != ptr) return false;
  const at::Storage& st = t.storage();
  return st.data() != nullptr &&
         st.nbytes() >= static_cast<size_t>((t.storage_offset() + t.numel()) * static_cast<int64_t>(t.element_size()));
}

// A [B, N] (or [B, N, M]) coefficient table: on x's device, in the coefficient dtype, with its sign (any strides:
// the update reads it through them; step_tables returns views of one tensor).
at::Tensor table(const at::Tensor& t, const char* name, const at::Tensor& x, at::ScalarType coef_type, int64_t B,
                 int64_t N, int64_t M) {
  TORCH_CHECK_VALUE(t.defined(), name, " is None / undefined");
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x_T is on ", x.device());
  TORCH_CHECK_TYPE(t.scalar_type() == coef_type, name, " has dtype ", t.scalar_type(), "; the tables of a ",
                   x.scalar_type(), " state are ", coef_type,
                   " (float64 for a float64 state, else float32; indis.solvers.step_tables computes them in the dtype "
                   "of the timesteps)");
  const bool ok = M < 0 ? (t.dim() == 2 && t.size(0) == B && t.size(1) == N)
                        : (t.dim() == 3 && t.size(0) == B && t.size(1) == N && t.size(2) == M);
  if (M < 0) {
    TORCH_CHECK_VALUE(ok, name, " must have shape [", B, ", ", N, "] (batch, steps), got ", t.sizes());
  } else {
    TORCH_CHECK_VALUE(ok, name, " must have shape [", B, ", ", N, ", M] (batch, steps, history), got ", t.sizes());
  }
  return resolved(t);
}

bool all_finite(const at::Tensor& t) { return t.numel() == 0 || at::isfinite(t).all().item<bool>(); }

py::dict sample_loop(py::object backbone, const at::Tensor& x_T, const at::Tensor& u_in, const at::Tensor& w_in,
                     const at::Tensor& p_in, const at::Tensor& q_in, const at::Tensor& t_call_in,
                     const std::vector<int64_t>& orders, bool pred_is_basis, bool reuses_output, bool validate,
                     bool timing) {
  // ---- inputs --------------------------------------------------------------------------------------
  TORCH_CHECK_VALUE(x_T.defined(), "x_T is None / undefined");
  const int dcode = data_dtype_code(x_T, "x_T (the state dtype)");
  TORCH_CHECK_VALUE(x_T.dim() >= 1 && x_T.size(0) >= 1 && x_T.numel() > 0, "x_T must have shape [B, ...] with B >= 1, got ",
                    x_T.sizes());
  TORCH_CHECK_VALUE(x_T.device().is_cpu() || x_T.device().is_cuda(), "x_T is on ", x_T.device(),
                    "; only CPU and CUDA are supported");
#ifndef INDIS_WITH_CUDA
  TORCH_CHECK(!x_T.is_cuda(), "indis._C was built without CUDA; cannot sample on ", x_T.device());
#endif
  const bool on_cuda = x_T.is_cuda();
  const int64_t B = x_T.size(0);
  // Coefficients in float64 for a float64 state, else float32 (as indis.solvers.sample, which computes
  // them in the state dtype; step_tables evaluates them in float64 and rounds once).
  const auto coef_type = x_T.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_VALUE(u_in.defined() && u_in.dim() == 2 && u_in.size(1) >= 1, "u must have shape [B, N] with N >= 1 steps, got ",
                    u_in.defined() ? u_in.sizes() : at::IntArrayRef{});
  const int64_t N = u_in.size(1);
  TORCH_CHECK_VALUE(w_in.defined() && w_in.dim() == 3 && w_in.size(2) >= 1 && w_in.size(2) <= INDIS_MAX_HIST,
                    "w must have shape [B, N, M] with M (the solver order) in 1..", INDIS_MAX_HIST, ", got ",
                    w_in.defined() ? w_in.sizes() : at::IntArrayRef{});
  const int M = static_cast<int>(w_in.size(2));
  const at::Tensor u = table(u_in, "u", x_T, coef_type, B, N, -1);
  const at::Tensor w = table(w_in, "w", x_T, coef_type, B, N, M);
  const at::Tensor p = table(p_in, "p", x_T, coef_type, B, N, -1);
  const at::Tensor q = table(q_in, "q", x_T, coef_type, B, N, -1);
  const at::Tensor tc = table(t_call_in, "t_call", x_T, coef_type, B, N, -1);
  TORCH_CHECK_VALUE(static_cast<int64_t>(orders.size()) == N, "orders must give the order of each of the ", N,
                    " steps, got ", orders.size(), " entries");
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK_VALUE(orders[i] >= 1 && orders[i] <= M && orders[i] <= i + 1, "orders[", i, "] = ", orders[i],
                      " must be in [1, min(M, i + 1)] = [1, ", std::min<int64_t>(M, i + 1),
                      "]: step i uses the newest orders[i] history entries (", i + 1, " exist, the ring holds ", M, ")");
  }
  const at::Tensor x_src = resolved(x_T);  // a sign-bit view (e.g. .conj().imag) is materialised first
  if (validate) {
    // (Synchronises on CUDA; the CUDA-graph path validates before capture and passes validate=False.)
    TORCH_CHECK_VALUE(all_finite(x_src), "x_T contains NaN or inf");
    TORCH_CHECK_VALUE(all_finite(tc), "t_call contains NaN or inf");
    TORCH_CHECK_VALUE(all_finite(u) && all_finite(w) && all_finite(p) && all_finite(q),
                      "the solver coefficients are NaN or inf; check that the times are inside the process's valid "
                      "range and not too close together");
  }
  const std::uintptr_t stream = on_cuda ? current_cuda_stream(x_T.device()) : 0;

  // ---- backbone -----------------------------------------------------------------------------------
  std::shared_ptr<NativeBackbone> native;
  if (py::isinstance<NativeBackbone>(backbone)) {
    native = backbone.cast<std::shared_ptr<NativeBackbone>>();
    reuses_output = true;
  } else {
    TORCH_CHECK_TYPE(PyCallable_Check(backbone.ptr()), "backbone must be callable as backbone(x, t) -> prediction");
  }

  at::NoGradGuard no_grad;
  const auto t_start = Clock::now();
  // per-step call times [N][B]
  const at::Tensor tc_steps = tc.t().contiguous();
  std::vector<at::Tensor> t_call;
  t_call.reserve(N);
  for (int64_t i = 0; i < N; ++i) t_call.push_back(tc_steps[i]);
  // column i of a table: its first element, then the sample stride (and w's history stride) in the update args
  const int64_t esz = u.element_size();
  auto column = [esz](const at::Tensor& t, int64_t i) {
    return static_cast<const char*>(t.data_ptr()) + i * t.stride(1) * esz;
  };

  double backbone_ms = 0.0, update_ms = 0.0;
  at::Tensor x;
  // One pass of the loop in one ring mode. Returns false when the reference ring finds a backbone output
  // that shares memory with a history entry it still needs (a reused output buffer: that entry has been
  // overwritten); the caller then reruns the pass with the copying ring.
  auto run_pass = [&](bool buffered) -> bool {
    // state (a private contiguous copy: x_T is never modified)
    x = x_src.clone(at::MemoryFormat::Contiguous);
    const std::vector<int64_t> x_shape = x.sizes().vec();
    const at::ScalarType x_type = x.scalar_type();
    const void* x_ptr = x.data_ptr();
    // ring of the last M basis values
    std::vector<at::Tensor> ring(M);
    std::vector<const void*> ring_ptr(M, nullptr);
    at::Tensor ring_buf, native_out;
    if (buffered) {
      std::vector<int64_t> shape{M};
      for (auto s : x.sizes()) shape.push_back(s);
      ring_buf = at::empty(shape, x.options());
      for (int j = 0; j < M; ++j) {
        ring[j] = ring_buf[j];
        ring_ptr[j] = ring[j].data_ptr();
      }
    }
    if (native) native_out = at::empty_like(x);

    IndisUpdateArgs a{};
    a.out = x.data_ptr();
    a.x = x.data_ptr();
    a.dtype = dcode;
    a.coef_dtype = coef_type == at::kDouble ? INDIS_F64 : INDIS_F32;
    a.device = on_cuda ? x.device().index() : -1;
    a.batch = B;
    a.inner = x.numel() / B;
    a.has_pred = buffered ? 1 : 0;
    a.u_sb = u.stride(0);
    a.w_sb = w.stride(0);
    a.w_sj = w.stride(2);
    a.p_sb = p.stride(0);
    a.q_sb = q.stride(0);

    py::object x_py = py::cast(x);  // the same torch.Tensor object every step
    for (int64_t i = 0; i < N; ++i) {
      const int slot = static_cast<int>(i % M);
      // ---- backbone call --------------------------------------------------------------------------
      auto t0 = Clock::now();
      at::Tensor pred;
      if (native) {
        native->run(x, t_call[i], native_out, stream);
        pred = native_out;
      } else {
        py::object r = backbone(x_py, py::cast(t_call[i]));
        // The backbone had the live state and its earlier outputs (the reference ring) in its hands: their
        // memory must still be where the raw pointers point before anything is read or written.
        TORCH_CHECK_VALUE(intact(x, x_ptr, x_shape, x_type),
                          "the backbone replaced, resized or reshaped its input x in place (x.set_(), x.data = ..., "
                          "x.resize_(), x.untyped_storage().resize_(), ...) at step ", i,
                          "; the native loop updates the state through raw pointers and cannot continue. Return a new "
                          "tensor and leave x's storage alone (or use indis.solvers.sample)");
        if (!buffered) {
          for (int j = 0; j < M; ++j) {
            if (j == slot || ring_ptr[j] == nullptr) continue;
            TORCH_CHECK_VALUE(intact(ring[j], ring_ptr[j], x_shape, x_type),
                              "the backbone replaced or resized the storage of a prediction it returned at an earlier "
                              "step (detected at step ", i, "); the native loop keeps those outputs as its history. "
                              "Return a new tensor each call, or pass reuses_output=True (copying ring)");
          }
        }
        try {
          pred = r.cast<at::Tensor>();
        } catch (const py::cast_error&) {
          throw py::type_error("backbone(x, t) must return a torch.Tensor, got " +
                               std::string(py::str(py::type::of(r).attr("__name__"))));
        }
        TORCH_CHECK_VALUE(pred.defined(), "backbone returned an undefined tensor");
        TORCH_CHECK_VALUE(pred.sizes() == x.sizes(), "backbone returned shape ", pred.sizes(), " for input shape ",
                          x.sizes());
        TORCH_CHECK_VALUE(pred.device() == x.device(), "backbone returned a tensor on ", pred.device(),
                          " for input on ", x.device());
        TORCH_CHECK_TYPE(pred.is_floating_point(), "backbone returned dtype ", pred.scalar_type(),
                         "; expected a floating-point prediction");
        if (pred.scalar_type() != x.scalar_type()) pred = pred.to(x.scalar_type());
        if (!pred.is_contiguous()) pred = pred.contiguous();
        pred = resolved(pred);  // a negative-bit view is read with its sign
        if (!buffered) {
          // A backbone that returns a buffer it returned before (one output tensor, overwritten every
          // call) has overwritten a history entry still in use: rerun with the copying ring.
          for (int j = 0; j < M; ++j) {
            if (j == slot || ring_ptr[j] == nullptr) continue;
            if (overlap(span_of(pred, "pred"), span_of(ring[j], "ring"))) return false;
          }
          // The ring keeps pred across the in-place state update: it must not share memory with the
          // state (e.g. a backbone returning x or a view of it).
          if (pred.is_alias_of(x)) pred = pred.clone();
        }
      }
      if (timing) backbone_ms += ms_since(t0);

      // ---- fused update -------------------------------------------------------------------------
      t0 = Clock::now();
      const int k = static_cast<int>(orders[i]);
      for (int j = 0; j < INDIS_MAX_HIST; ++j) a.hist[j] = nullptr;
      for (int j = 1; j < k; ++j) a.hist[j] = ring_ptr[(slot - j + M) % M];
      if (buffered) {
        a.pred = pred.data_ptr();
        a.slot = const_cast<void*>(ring_ptr[slot]);
        a.p = column(p, i);
        a.q = column(q, i);
      } else {
        ring[slot] = pred;  // keep the output alive while it is in the history
        ring_ptr[slot] = pred.data_ptr();
        a.hist[0] = ring_ptr[slot];
      }
      a.m = k;
      a.u = column(u, i);
      a.w = column(w, i);
      if (on_cuda) {
        run_update(a, true, stream);
      } else {
        py::gil_scoped_release nogil;
        run_update(a, false, 0);
      }
      if (timing) update_ms += ms_since(t0);
    }
    return true;
  };
  bool buffered = reuses_output || !pred_is_basis;
  bool reuse_detected = false;
  if (!run_pass(buffered)) {
    reuse_detected = true;
    buffered = true;
    TORCH_CHECK(run_pass(true), "internal error: the copying ring reported a reused output");
  }
  py::dict res;
  res["x"] = x;
  res["steps"] = N;
  res["ring"] = buffered ? "buffer" : "references";
  res["reuse_detected"] = reuse_detected;
  if (timing) {
    res["backbone_ms"] = backbone_ms;
    res["update_ms"] = update_ms;
    res["loop_ms"] = ms_since(t_start);
  }
  return res;
}

}  // namespace

void register_sampler_loop(py::module_& m) {
  py::class_<NativeBackbone, std::shared_ptr<NativeBackbone>>(
      m, "NativeBackbone", "Base class of backbones evaluated without Python (e.g. TensorRT); not constructible.")
      .def_property_readonly("name", [](const NativeBackbone& b) { return std::string(b.name()); });
  m.def("sample_loop", &sample_loop, py::arg("backbone"), py::arg("x_T"), py::kw_only(), py::arg("u"), py::arg("w"),
        py::arg("p"), py::arg("q"), py::arg("t_call"), py::arg("orders"), py::arg("pred_is_basis"),
        py::arg("reuses_output") = false, py::arg("validate") = true, py::arg("timing") = true,
        "Sample with N backbone calls, each followed by one fused update (no per-step allocation by the loop).\n"
        "backbone: a callable (x [B,...], t [B]) -> prediction (torch module, ONNX Runtime wrapper, ...; close "
        "over the condition) or an indis._C.NativeBackbone. x_T: the prior sample; its dtype is the state dtype "
        "(float32/float64/float16/bfloat16). The step tables, as indis.solvers.step_tables returns them "
        "(C.sample_loop(fn, x_T, **tables._asdict())), float64 for a float64 state, else float32, on x_T's device: "
        "u, p, q, t_call [B,N], w [B,N,M] (M <= 4), orders (N ints, step i uses the newest orders[i] history "
        "entries), pred_is_basis (p = 0, q = 1: the ring may keep the backbone's outputs). Step i: pred = "
        "backbone(x, t_call[:, i]); h_i = p x + q pred; x <- u x + sum_j w[:, i, j] h_{i-j}. reuses_output: the "
        "callable returns the same buffer every call (forces the copying ring; a reused buffer is also detected, "
        "and the loop then reruns with the copying ring). validate: check that x_T and the tables are finite "
        "(synchronises on CUDA; pass False inside CUDA-graph capture). CUDA work runs on the current stream. "
        "Returns a dict: x (the sample), steps, ring ('references' or 'buffer'), reuse_detected (a reused output "
        "buffer was found and the sample recomputed) and, if timing, backbone_ms, update_ms, loop_ms (host wall "
        "times).");
}

}  // namespace indis
