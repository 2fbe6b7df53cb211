// Device-generic products of one layer's Jacobian with a block of vectors, from its captures, for block
// Krylov / subspace iteration on the exact NTK Θ = J Jᵀ. The per-sample gradient of (sample i, output c) is
//   G_ic = sum_t grads[i, c, t] (x) acts[i, t]   (o x n),
// and the two products are
//   jacobian_t_matmul:  W[b] = sum_{i,c} V[i, c, b] G_ic                       (Jᵀ V, (b, o, n))
//   jacobian_matmul:    out[i, c, b] = <G_ic, W[b]> = sum_t grads[i,c,t] . (W[b] acts[i,t])   (J W, (N, C, b)).
// Two algorithms, picked by their flop counts:
//   factored: contract over c (Jᵀ V) or over n (J W) first, never forming G:  N T b o (C + n) flops
//   explicit: form G tile by tile, then one GEMM against V or W:               N C o n (T + b) flops
// Both are tiled over samples so that no intermediate exceeds `max_tile` entries (default 2^24);
// the inputs are converted to the accumulation dtype (float32, or float64 for float64) tile by tile.
#pragma once
#include "common.h"

namespace zoo_kernels {

inline int64_t jm_tile(int64_t max_tile) {
  constexpr int64_t kDefault = int64_t{1} << 24;
  return max_tile > 0 ? max_tile : kDefault;
}

// True when forming the per-sample gradients is cheaper than the factored contraction.
inline bool jm_explicit(const LayerShape& s, int64_t b) {
  const double factored = double(s.T) * b * s.o * double(s.C + s.n);
  const double expl = double(s.C) * s.o * s.n * double(s.T + b);
  return expl < factored;
}

// Samples per tile so that `per_sample` entries per sample stay within the tile budget.
inline int64_t jm_block(int64_t per_sample, int64_t max_tile, int64_t N) {
  return std::min<int64_t>(N, std::max<int64_t>(1, jm_tile(max_tile) / std::max<int64_t>(1, per_sample)));
}

inline void check_float_operand(const char* op, const char* name, const at::Tensor& x, const at::Tensor& acts) {
  TORCH_CHECK(x.defined(), op, ": `", name, "` must be a tensor");
  TORCH_CHECK(x.device() == acts.device(), op, ": `", name, "` must be on the device of `acts` (", acts.device(),
              "), got ", x.device());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op, ": `", name,
              "` must be float32, float16, bfloat16 or float64, got ", dt);
}

inline void check_finite(const char* op, const at::Tensor& out, const char* inputs) {
  const bool finite = std::isfinite(out.sum(at::kDouble).item<double>()) || at::isfinite(out).all().item<bool>();
  TORCH_CHECK(finite, op, ": the result is not finite; ", inputs, " contain NaN or Inf");
}

// Per-sample gradients (bi, C*o, n) of samples [i0, i0 + bi), in the accumulation dtype.
inline at::Tensor jm_explicit_grads(const at::Tensor& acts, const at::Tensor& grads, const LayerShape& s,
                                    int64_t i0, int64_t bi, at::ScalarType acc) {
  const at::Tensor A = acts.narrow(0, i0, bi).to(acc).reshape({bi, s.T, s.n});
  const at::Tensor B = grads.narrow(0, i0, bi).to(acc).reshape({bi, s.C, s.T, s.o});
  return at::bmm(B.permute({0, 1, 3, 2}).reshape({bi, s.C * s.o, s.T}), A);
}

// W (b, o, n) = sum_{i,c} V[i, c, b] G_ic, in float32 (float64 for float64 captures).
inline at::Tensor jacobian_t_matmul_impl(const at::Tensor& acts, const at::Tensor& grads, const at::Tensor& V,
                                         int64_t max_tile) {
  const char* op = "jacobian_t_matmul";
  const LayerShape s = check_layer(op, acts, grads);
  check_float_operand(op, "V", V, acts);
  TORCH_CHECK(V.dim() == (s.has_c ? 3 : 2), op, ": `V` must be ", s.has_c ? "(N, C, b)" : "(N, b)",
              " for `grads` of shape ", grads.sizes(), ", got shape ", V.sizes());
  TORCH_CHECK(V.size(0) == s.N && (!s.has_c || V.size(1) == s.C), op, ": `V` must have N = ", s.N,
              s.has_c ? " and C = " : "", s.has_c ? std::to_string(s.C) : std::string(), " to match `grads` of shape ",
              grads.sizes(), ", got shape ", V.sizes());
  const int64_t b = V.size(-1);
  TORCH_CHECK(b > 0, op, ": `V` must have at least one column (b > 0), got shape ", V.sizes());
  TORCH_CHECK(max_tile >= 0, op, ": `max_tile` must be >= 0 (0: default), got ", max_tile);
  c10::DeviceGuard guard(acts.device());
  const auto acc = acc_type(acts);
  const auto opts = acts.options().dtype(acc);
  at::Tensor out;
  if (jm_explicit(s, b)) {
    // W (b, o*n) += V_tile^T (b, bi*C) @ G_tile (bi*C, o*n)
    at::Tensor Wf = at::zeros({b, s.o * s.n}, opts);
    const int64_t bs = jm_block(s.C * s.o * std::max(s.n, s.T), max_tile, s.N);
    for (int64_t i0 = 0; i0 < s.N; i0 += bs) {
      const int64_t bi = std::min(bs, s.N - i0);
      const at::Tensor G = jm_explicit_grads(acts, grads, s, i0, bi, acc).view({bi * s.C, s.o * s.n});
      const at::Tensor Vt = V.narrow(0, i0, bi).to(acc).reshape({bi * s.C, b});
      Wf.addmm_(Vt.t(), G);
    }
    out = Wf.view({b, s.o, s.n});
  } else {
    // H (bi, T*o, b) = B_i^T V_i (contract over c), then W2 (n, o*b) += A_tile^T (n, bi*T) @ H (bi*T, o*b).
    at::Tensor W2 = at::zeros({s.n, s.o * b}, opts);
    const int64_t bs = jm_block(s.T * std::max(s.o * b, s.C * s.o) + s.T * s.n, max_tile, s.N);
    for (int64_t i0 = 0; i0 < s.N; i0 += bs) {
      const int64_t bi = std::min(bs, s.N - i0);
      const at::Tensor A = acts.narrow(0, i0, bi).to(acc).reshape({bi * s.T, s.n});
      const at::Tensor B = grads.narrow(0, i0, bi).to(acc).reshape({bi, s.C, s.T * s.o});
      const at::Tensor Vt = V.narrow(0, i0, bi).to(acc).reshape({bi, s.C, b});
      const at::Tensor H = at::bmm(B.transpose(1, 2), Vt);  // (bi, T*o, b)
      W2.addmm_(A.t(), H.view({bi * s.T, s.o * b}));
    }
    out = W2.view({s.n, s.o, b}).permute({2, 1, 0}).contiguous();
  }
  check_finite(op, out, "`acts`, `grads` or `V`");
  return out;
}

// out (N, [C,] b), out[i, c, b] = <G_ic, W[b]>, in float32 (float64 for float64 captures).
inline at::Tensor jacobian_matmul_impl(const at::Tensor& acts, const at::Tensor& grads, const at::Tensor& W,
                                       int64_t max_tile) {
  const char* op = "jacobian_matmul";
  const LayerShape s = check_layer(op, acts, grads);
  check_float_operand(op, "W", W, acts);
  TORCH_CHECK(W.dim() == 3 && W.size(1) == s.o && W.size(2) == s.n, op, ": `W` must be (b, o, n) = (b, ", s.o,
              ", ", s.n, ") to match `acts` ", acts.sizes(), " and `grads` ", grads.sizes(), ", got shape ", W.sizes());
  const int64_t b = W.size(0);
  TORCH_CHECK(b > 0, op, ": `W` must have at least one row (b > 0), got shape ", W.sizes());
  TORCH_CHECK(max_tile >= 0, op, ": `max_tile` must be >= 0 (0: default), got ", max_tile);
  c10::DeviceGuard guard(acts.device());
  const auto acc = acc_type(acts);
  at::Tensor out = at::empty({s.N, s.C, b}, acts.options().dtype(acc));
  if (jm_explicit(s, b)) {
    // out_tile (bi*C, b) = G_tile (bi*C, o*n) @ W^T (o*n, b)
    const at::Tensor Wt = W.to(acc).reshape({b, s.o * s.n}).t();
    const int64_t bs = jm_block(s.C * s.o * std::max(s.n, s.T), max_tile, s.N);
    for (int64_t i0 = 0; i0 < s.N; i0 += bs) {
      const int64_t bi = std::min(bs, s.N - i0);
      const at::Tensor G = jm_explicit_grads(acts, grads, s, i0, bi, acc).view({bi * s.C, s.o * s.n});
      at::Tensor dst = out.narrow(0, i0, bi).view({bi * s.C, b});
      at::mm_out(dst, G, Wt);
    }
  } else {
    // Z (bi*T, o*b) = A_tile (bi*T, n) @ W2 (n, o*b), then out_tile (bi, C, b) = B_tile (bi, C, T*o) @ Z (bi, T*o, b).
    const at::Tensor W2 = W.to(acc).permute({2, 1, 0}).reshape({s.n, s.o * b});
    const int64_t bs = jm_block(s.T * (s.o * b + s.n) + s.C * s.T * s.o, max_tile, s.N);
    for (int64_t i0 = 0; i0 < s.N; i0 += bs) {
      const int64_t bi = std::min(bs, s.N - i0);
      const at::Tensor A = acts.narrow(0, i0, bi).to(acc).reshape({bi * s.T, s.n});
      const at::Tensor B = grads.narrow(0, i0, bi).to(acc).reshape({bi, s.C, s.T * s.o});
      const at::Tensor Z = at::mm(A, W2).view({bi, s.T * s.o, b});
      at::Tensor dst = out.narrow(0, i0, bi);
      at::bmm_out(dst, B, Z);
    }
  }
  check_finite(op, out, "`acts`, `grads` or `W`");
  return s.has_c ? out : out.view({s.N, b});
}

}  // namespace zoo_kernels
