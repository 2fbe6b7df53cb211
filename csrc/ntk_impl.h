// Device-generic exact NTK block of one layer from its captures (the "ghost" identity):
//   K[i, c, j, d] = <G_ic, G_jd>,  G_ic = sum_t grads[i, c, t] (x) acts[i, t],
// computed without the per-sample gradients where that is cheaper:
//   T = 1:        (A1 A2^T)[i, j] * (B1 B2^T)[ic, jd]
//   ghost (T>1):  sum_{t,s} (a_it . a_js) (b_ict . b_jds), tiled so that no N1 x N2 x T x T factor is stored
//   explicit:     G1 G2^T with G formed once per side (or per tile when a side is too large), when T^2 > o n
//                 makes that cheaper.
// float32 GEMMs on CPU go through oneDNN (mm_nt).
#pragma once
#include <ATen/Config.h>

#include "common.h"

namespace zoo_kernels {

struct NtkSide {
  at::Tensor A, B;  // (N, T, n), (N, C, T, o)
  LayerShape s;
};

inline NtkSide ntk_side(const char* op, const at::Tensor& acts, const at::Tensor& grads, at::ScalarType acc) {
  const LayerShape s = check_layer(op, acts, grads);
  return {acts.to(acc).reshape({s.N, s.T, s.n}), grads.to(acc).reshape({s.N, s.C, s.T, s.o}), s};
}

// Sample-block size so that a tile of `per_pair` entries per (i, j) pair stays near 16M entries.
inline int64_t pair_block(int64_t per_pair, int64_t n_other) {
  constexpr int64_t kTile = int64_t{1} << 24;
  return std::max<int64_t>(1, kTile / std::max<int64_t>(1, per_pair * n_other));
}

// a @ b^T. float32 on CPU goes through oneDNN's matmul: its AVX-512 kernels also run on AMD CPUs, where MKL's
// sgemm takes its AVX2 path (about 2x slower there). Everything else: at::mm (MKL, cuBLAS).
inline at::Tensor mm_nt(const at::Tensor& a, const at::Tensor& b) {
#if AT_MKLDNN_ENABLED()
  if (a.is_cpu() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && at::hasMKLDNN() &&
      a.size(0) > 0 && b.size(0) > 0 && a.size(1) > 0)
    return at::mkldnn_linear(a.contiguous().to_mkldnn(), b.contiguous().to_mkldnn(), {}).to_dense();
#endif
  return at::mm(a, b.t());
}

// Per-sample gradients (N, C, o*n) of one side.
inline at::Tensor explicit_grads(const NtkSide& x) {
  const auto& s = x.s;
  return at::bmm(x.B.permute({0, 1, 3, 2}).reshape({s.N, s.C * s.o, s.T}), x.A).view({s.N, s.C, s.o * s.n});
}

inline NtkSide side_rows(const NtkSide& x, int64_t i0, int64_t n) {
  return {x.A.narrow(0, i0, n), x.B.narrow(0, i0, n), LayerShape{n, x.s.C, x.s.T, x.s.n, x.s.o, true}};
}

// (N1, C1, N2, C2), or (N1, N2) summed over c = d when `trace`.
inline at::Tensor ntk_block_impl(const at::Tensor& acts1, const at::Tensor& grads1, const at::Tensor& acts2,
                                 const at::Tensor& grads2, bool trace) {
  const char* op = "ntk_block";
  TORCH_CHECK(acts1.device() == acts2.device(), op, ": `acts1` and `acts2` must be on the same device, got ",
              acts1.device(), " and ", acts2.device());
  TORCH_CHECK(acts1.scalar_type() == acts2.scalar_type(), op, ": `acts1` and `acts2` must have the same dtype, got ",
              acts1.scalar_type(), " and ", acts2.scalar_type());
  c10::DeviceGuard guard(acts1.device());
  const auto acc = acc_type(acts1);
  // The same captures on both sides (a symmetric diagonal block): form their factors once.
  const bool same = acts1.is_same(acts2) && grads1.is_same(grads2);
  const NtkSide x1 = ntk_side(op, acts1, grads1, acc), x2 = same ? x1 : ntk_side(op, acts2, grads2, acc);
  const LayerShape &s1 = x1.s, &s2 = x2.s;
  TORCH_CHECK(s1.T == s2.T && s1.n == s2.n && s1.o == s2.o, op, ": the two sides must have the same T, n and o, got (",
              s1.T, ", ", s1.n, ", ", s1.o, ") and (", s2.T, ", ", s2.n, ", ", s2.o, ")");
  TORCH_CHECK(!trace || s1.C == s2.C, op, ": `trace` needs the same number of outputs on both sides, got ", s1.C,
              " and ", s2.C);
  const int64_t T = s1.T, n = s1.n, o = s1.o, N1 = s1.N, N2 = s2.N, C1 = s1.C, C2 = s2.C;
  const auto opts = x1.A.options();
  at::Tensor out;

  const double ghost = double(N1) * N2 * T * T * (n + C2 * o) + double(N1) * N2 * T * C1 * C2 * o;
  const double expl = double(N1 * C1 + N2 * C2) * T * o * n + double(N1) * C1 * N2 * C2 * o * n;
  if (T == 1) {
    const at::Tensor KA = mm_nt(x1.A.view({N1, n}), x2.A.view({N2, n}));  // (N1, N2)
    if (trace) {
      out = mm_nt(x1.B.view({N1, C1 * o}), x2.B.view({N2, C2 * o}));
      out.mul_(KA);
    } else {  // the product in place of the (N1 C1, N2 C2) factor: no third N x N tensor
      out = mm_nt(x1.B.view({N1 * C1, o}), x2.B.view({N2 * C2, o})).view({N1, C1, N2, C2});
      out.mul_(KA.view({N1, 1, N2, 1}));
    }
  } else if (expl <= ghost) {
    // Explicit per-sample gradients, each formed once: a whole side when it fits the tile budget (then one
    // GEMM per tile of the other side), else tiles of both sides with the larger side's tile outermost.
    out = trace ? at::empty({N1, N2}, opts) : at::empty({N1, C1, N2, C2}, opts);
    constexpr int64_t kWhole = int64_t{1} << 25;
    const int64_t w1 = C1 * o * n, w2 = C2 * o * n;
    const int64_t b1 = N1 * w1 <= kWhole ? N1 : pair_block(w1, 1), b2 = N2 * w2 <= kWhole ? N2 : pair_block(w2, 1);
    const auto rows = [&](const at::Tensor& G, int64_t m, int64_t C) {
      return trace ? G.view({m, C * o * n}) : G.view({m * C, o * n});
    };
    at::Tensor G1whole = b1 == N1 ? explicit_grads(x1) : at::Tensor();
    at::Tensor G2whole = same && b1 == N1 ? G1whole : (b2 == N2 ? explicit_grads(x2) : at::Tensor());
    for (int64_t j0 = 0; j0 < N2; j0 += b2) {
      const int64_t bj = std::min(b2, N2 - j0);
      const at::Tensor G2 = G2whole.defined() ? G2whole.narrow(0, j0, bj) : explicit_grads(side_rows(x2, j0, bj));
      for (int64_t i0 = 0; i0 < N1; i0 += b1) {
        const int64_t bi = std::min(b1, N1 - i0);
        const at::Tensor G1 = G1whole.defined() ? G1whole.narrow(0, i0, bi) : explicit_grads(side_rows(x1, i0, bi));
        const at::Tensor K = mm_nt(rows(G1, bi, C1), rows(G2, bj, C2));
        if (trace)
          out.narrow(0, i0, bi).narrow(1, j0, bj).copy_(K);
        else
          out.narrow(0, i0, bi).narrow(2, j0, bj).copy_(K.view({bi, C1, bj, C2}));
      }
    }
  } else {
    out = trace ? at::empty({N1, N2}, opts) : at::empty({N1, C1, N2, C2}, opts);
    // Ghost with tiles of bi x bj samples: W[j, (i,t), (d,p)] = sum_s KA[i,t,j,s] b_jds[p], then contract with b_ict.
    const int64_t per_pair = T * std::max(T, C2 * o);
    const int64_t bj = std::min<int64_t>(N2, std::max<int64_t>(1, static_cast<int64_t>(std::sqrt(double(pair_block(per_pair, 1))))));
    const int64_t bi = std::min<int64_t>(N1, pair_block(per_pair, bj));
    for (int64_t j0 = 0; j0 < N2; j0 += bj) {
      const int64_t nj = std::min(bj, N2 - j0);
      const at::Tensor A2 = x2.A.narrow(0, j0, nj);                                                // (nj, T, n)
      const at::Tensor B2 = x2.B.narrow(0, j0, nj).permute({0, 2, 1, 3}).reshape({nj, T, C2 * o});  // (nj, T, C2*o)
      for (int64_t i0 = 0; i0 < N1; i0 += bi) {
        const int64_t ni = std::min(bi, N1 - i0);
        const at::Tensor A1 = x1.A.narrow(0, i0, ni);
        const at::Tensor KA = mm_nt(A1.reshape({ni * T, n}), A2.reshape({nj * T, n}))  // (ni*T, nj*T)
                                  .view({ni * T, nj, T}).permute({1, 0, 2});          // (nj, ni*T, T)
        const at::Tensor W = at::bmm(KA, B2)                                            // (nj, ni*T, C2*o)
                                 .view({nj, ni, T, C2, o}).permute({1, 2, 4, 0, 3})      // (ni, T, o, nj, C2)
                                 .reshape({ni, T * o, nj * C2});
        const at::Tensor B1 = x1.B.narrow(0, i0, ni).reshape({ni, C1, T * o});
        const at::Tensor K = at::bmm(B1, W).view({ni, C1, nj, C2});
        if (trace)
          out.narrow(0, i0, ni).narrow(1, j0, nj).copy_(K.diagonal(0, 1, 3).sum(-1));
        else
          out.narrow(0, i0, ni).narrow(2, j0, nj).copy_(K);
      }
    }
  }
  // One reduction in the result's dtype; the exact elementwise test only when that sum is not finite.
  const bool finite = std::isfinite(out.sum().item<double>()) || at::isfinite(out).all().item<bool>();
  TORCH_CHECK(finite, op, ": the result is not finite; the captures contain NaN or Inf");
  return out;
}

}  // namespace zoo_kernels
