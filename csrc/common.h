// Input checks and the device-generic tiling of the projection ops.
// Each backend supplies only its random-matrix fill; the GEMMs go to ATen
// (MKL/oneDNN on CPU, cuBLAS on CUDA).
#pragma once
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <cmath>
#include <string>

#include "philox.h"

namespace zoo_kernels {

// Fills the 2-D contiguous float/double tensor `out` with R[row0 + i, col0 + j].
using FillFn = void (*)(at::Tensor& out, int64_t row0, int64_t col0, uint64_t seed, Dist dist);

inline Dist parse_dist(const char* op, const std::string& dist) {
  if (dist == "rademacher") return Dist::Rademacher;
  if (dist == "gaussian") return Dist::Gaussian;
  TORCH_CHECK(false, op, ": `dist` must be \"rademacher\" or \"gaussian\", got \"", dist, "\"");
}

inline void check_fill_target(const char* op, const at::Tensor& out, int64_t row0, int64_t col0) {
  TORCH_CHECK(out.dim() == 2, op, ": `out` must be 2-D, got ", out.dim(), "-D");
  TORCH_CHECK(out.is_contiguous(), op, ": `out` must be contiguous");
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble, op,
              ": `out` must be float32 or float64, got ", out.scalar_type());
  TORCH_CHECK(row0 >= 0 && col0 >= 0, op, ": `row0` and `col0` must be >= 0, got ", row0, " and ", col0);
}

// Shapes of one layer's captures, normalized to acts (N, T, n) and grads (N, C, T, o).
struct LayerShape {
  int64_t N, C, T, n, o;
  bool has_c;  // grads carried an explicit output dimension C
};

inline LayerShape check_layer(const char* op, const at::Tensor& acts, const at::Tensor& grads) {
  TORCH_CHECK(acts.defined() && grads.defined(), op, ": `acts` and `grads` must be tensors");
  TORCH_CHECK(acts.device() == grads.device(), op, ": `acts` and `grads` must be on the same device, got ",
              acts.device(), " and ", grads.device());
  const auto dt = acts.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op,
              ": `acts` must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(grads.scalar_type() == dt, op, ": `acts` and `grads` must have the same dtype, got ", dt,
              " and ", grads.scalar_type());
  TORCH_CHECK(acts.dim() == 2 || acts.dim() == 3, op, ": `acts` must be (N, n) or (N, T, n), got shape ",
              acts.sizes());
  LayerShape s{};
  s.N = acts.size(0);
  s.T = acts.dim() == 3 ? acts.size(1) : 1;
  s.n = acts.size(-1);
  const int64_t gd = grads.dim() - (acts.dim() - 2);  // 2: no C dimension, 3: with C
  TORCH_CHECK(gd == 2 || gd == 3, op, ": `grads` must be ", acts.dim() == 2 ? "(N, o) or (N, C, o)" : "(N, T, o) or (N, C, T, o)",
              " to match `acts` of shape ", acts.sizes(), ", got shape ", grads.sizes());
  s.has_c = gd == 3;
  s.C = s.has_c ? grads.size(1) : 1;
  s.o = grads.size(-1);
  TORCH_CHECK(grads.size(0) == s.N, op, ": `acts` and `grads` must have the same batch size N, got ", s.N,
              " and ", grads.size(0));
  if (acts.dim() == 3)
    TORCH_CHECK(grads.size(-2) == s.T, op, ": `acts` and `grads` must have the same T, got ", s.T, " and ",
                grads.size(-2));
  TORCH_CHECK(s.N > 0, op, ": empty batch (N = 0)");
  TORCH_CHECK(s.T > 0 && s.n > 0 && s.o > 0 && s.C > 0, op, ": `acts` ", acts.sizes(), " and `grads` ",
              grads.sizes(), " must have no zero-sized dimension");
  return s;
}

inline at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::Tensor finish(const char* op, at::Tensor out, const LayerShape& s, int64_t k) {
  // One cheap reduction; the exact elementwise test only when the sum is not finite.
  const bool finite = std::isfinite(out.sum(at::kDouble).item<double>()) || at::isfinite(out).all().item<bool>();
  TORCH_CHECK(finite, op, ": the result is not finite; `acts` or `grads` contains NaN or Inf");
  return s.has_c ? out.view({s.N, s.C, k}) : out.view({s.N, k});
}

// S = vec(G) @ R[row_offset:, :] / sqrt(k), R generated tile by tile.
inline at::Tensor project_dense_impl(const at::Tensor& acts, const at::Tensor& grads, int64_t k, int64_t seed,
                                     const std::string& dist, int64_t row_offset, FillFn fill) {
  const char* op = "project_dense";
  const Dist d = parse_dist(op, dist);
  const LayerShape s = check_layer(op, acts, grads);
  TORCH_CHECK(k > 0, op, ": `k` must be positive, got ", k);
  TORCH_CHECK(row_offset >= 0, op, ": `row_offset` must be >= 0, got ", row_offset);
  c10::DeviceGuard guard(acts.device());
  const auto opts = acts.options().dtype(acc_type(acts));
  const at::Tensor A = acts.to(opts.dtype()).reshape({s.N, s.T, s.n});
  const at::Tensor B = grads.to(opts.dtype()).reshape({s.N, s.C, s.T, s.o});
  const int64_t rows = s.N * s.C;
  at::Tensor out = at::zeros({rows, k}, opts);

  // Tile sizes: R tile about 4M entries, per-sample gradient tile at most 16M entries.
  constexpr int64_t kTile = int64_t{1} << 22;
  int64_t kb = std::min<int64_t>(k, std::max<int64_t>(kRademacherBlock, kTile / s.n));
  if (kb < k) kb = std::max<int64_t>(kRademacherBlock, kb / kRademacherBlock * kRademacherBlock);
  int64_t ob = std::max<int64_t>(1, std::min<int64_t>(kTile / (s.n * kb), (4 * kTile) / (rows * s.n)));
  ob = std::min(ob, s.o);

  at::Tensor R_buf = at::empty({ob * s.n * kb}, opts);
  for (int64_t p0 = 0; p0 < s.o; p0 += ob) {
    const int64_t b = std::min(ob, s.o - p0);
    // Per-sample gradient rows p0..p0+b of every (sample, output): (N*C, b*n).
    const at::Tensor G =
        s.T == 1  // outer products: elementwise
            ? (B.narrow(3, p0, b).view({s.N, s.C, b, 1}) * A.view({s.N, 1, 1, s.n})).view({rows, b * s.n})
            : at::bmm(B.narrow(3, p0, b).permute({0, 1, 3, 2}).reshape({s.N, s.C * b, s.T}), A).view({rows, b * s.n});
    for (int64_t c0 = 0; c0 < k; c0 += kb) {
      const int64_t w = std::min(kb, k - c0);
      at::Tensor R = R_buf.narrow(0, 0, b * s.n * w).view({b * s.n, w});
      fill(R, row_offset + p0 * s.n, c0, static_cast<uint64_t>(seed), d);
      at::Tensor dst = out.narrow(1, c0, w);
      dst.addmm_(G, R);
    }
  }
  out.mul_(1.0 / std::sqrt(static_cast<double>(k)));
  return finish(op, out, s, k);
}

// S = sum_t (R_out^T g_t) (R_in^T a_t)^T / sqrt(k_in k_out), flattened row-major (k_out, k_in).
inline at::Tensor project_kron_impl(const at::Tensor& acts, const at::Tensor& grads, int64_t k_in,
                                    int64_t k_out, int64_t seed, const std::string& dist, FillFn fill) {
  const char* op = "project_kron";
  const Dist d = parse_dist(op, dist);
  const LayerShape s = check_layer(op, acts, grads);
  TORCH_CHECK(k_in > 0, op, ": `k_in` must be positive, got ", k_in);
  TORCH_CHECK(k_out > 0, op, ": `k_out` must be positive, got ", k_out);
  c10::DeviceGuard guard(acts.device());
  const auto opts = acts.options().dtype(acc_type(acts));
  at::Tensor R_in = at::empty({s.n, k_in}, opts);
  at::Tensor R_out = at::empty({s.o, k_out}, opts);
  fill(R_in, 0, 0, derive_seed(static_cast<uint64_t>(seed), 0), d);
  fill(R_out, 0, 0, derive_seed(static_cast<uint64_t>(seed), 1), d);
  const at::Tensor Ap = at::matmul(acts.to(opts.dtype()).reshape({s.N, s.T, s.n}), R_in);          // (N, T, k_in)
  const at::Tensor B = grads.to(opts.dtype()).reshape({s.N, s.C, s.T, s.o});
  at::Tensor out;
  if (s.T * k_out * (s.o + k_in) <= s.o * k_in * (s.T + k_out)) {
    // (R_out^T B^T) A': project the gradients first.
    const at::Tensor Bt = at::matmul(B, R_out).permute({0, 1, 3, 2}).reshape({s.N, s.C * k_out, s.T});
    out = at::bmm(Bt, Ap).view({s.N * s.C, k_out * k_in});
  } else {
    // R_out^T (B^T A'): contract over T first, cheaper when T is large.
    const at::Tensor BtA = at::bmm(B.permute({0, 1, 3, 2}).reshape({s.N, s.C * s.o, s.T}), Ap);  // (N, C*o, k_in)
    out = at::matmul(R_out.t(), BtA.view({s.N * s.C, s.o, k_in})).view({s.N * s.C, k_out * k_in});
  }
  out.mul_(1.0 / std::sqrt(static_cast<double>(k_in) * static_cast<double>(k_out)));
  return finish(op, out, s, k_out * k_in);
}

}  // namespace zoo_kernels
