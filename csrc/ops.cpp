// All operator schemas of the zoo_kernels namespace, in one place.
// Backends register implementations in csrc/cpu and csrc/cuda.
#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda.h>
#endif

namespace zoo_kernels {

// CUDA driver-API version the extension was compiled against, or -1 without CUDA.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}

}  // namespace zoo_kernels

TORCH_LIBRARY(zoo_kernels, m) {
  // out[i, j] = R(seed)[row0 + i, col0 + j], unscaled (+-1 or N(0, 1)).
  m.def("fill_random(Tensor(a!) out, int row0, int col0, int seed, str dist) -> ()");
  // acts (N, [T,] n), grads (N, [C,] [T,] o) -> (N, [C,] k)
  m.def("project_dense(Tensor acts, Tensor grads, int k, int seed, str dist=\"rademacher\", int row_offset=0) -> Tensor");
  // acts (N, [T,] n), grads (N, [C,] [T,] o) -> (N, [C,] k_out * k_in)
  m.def("project_kron(Tensor acts, Tensor grads, int k_in, int k_out, int seed, str dist=\"rademacher\") -> Tensor");
  // Exact per-layer NTK <G_ic, G_jd> from two sides' captures -> (N1, C1, N2, C2), or (N1, N2) with trace.
  m.def("ntk_block(Tensor acts1, Tensor grads1, Tensor acts2, Tensor grads2, bool trace=False) -> Tensor");
  // Jᵀ V of one layer: W[b] = sum_{i,c} V[i, c, b] G_ic with G_ic = sum_t grads[i,c,t] (x) acts[i,t];
  // acts (N, [T,] n), grads (N, [C,] [T,] o), V (N, [C,] b) -> (b, o, n). max_tile = 0: default tile size.
  m.def("jacobian_t_matmul(Tensor acts, Tensor grads, Tensor V, int max_tile=0) -> Tensor");
  // J W of one layer: out[i, c, b] = <G_ic, W[b]>; W (b, o, n) -> (N, [C,] b).
  m.def("jacobian_matmul(Tensor acts, Tensor grads, Tensor W, int max_tile=0) -> Tensor");
  // gram += S^T S and cross += S^T targets in float64 (targets may be empty), streamed over row tiles.
  m.def("gram_accumulate_(Tensor(a!) gram, Tensor sketch, Tensor(b!) cross, Tensor targets) -> ()");
  // E SGD steps of the head-aware linearized model for P paths, in place on the state (W, b, theta, c) and the
  // momentum buffers; sketch (n, r, k), basis (D, r) or empty, batches (P, E, Bmax) with sizes (E,), lrs (E,).
  // dead[p] (-1 on entry: alive) becomes the step at which path p's state stopped being finite. CPU only.
  m.def("head_aware_sgd_steps(Tensor sketch, Tensor basis, Tensor phi0, Tensor radius, Tensor offset, "
        "Tensor labels, Tensor batches, Tensor sizes, Tensor lrs, Tensor(a!) W, Tensor(b!) b, Tensor(c!) theta, "
        "Tensor(d!) c, Tensor(e!) bufW, Tensor(f!) bufb, Tensor(g!) buftheta, Tensor(h!) bufc, Tensor(i!) dead, "
        "float momentum, float dampening, bool nesterov, float weight_decay, bool head_trainable, str loss, "
        "bool started) -> ()");
  m.def("cuda_version() -> int", &zoo_kernels::cuda_version);
}
