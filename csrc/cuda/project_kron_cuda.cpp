#include <torch/library.h>

#include "random_matrix_cuda.h"

namespace zoo_kernels {
namespace {
at::Tensor project_kron_cuda(const at::Tensor& acts, const at::Tensor& grads, int64_t k_in, int64_t k_out,
                             int64_t seed, std::string dist) {
  return project_kron_impl(acts, grads, k_in, k_out, seed, dist, &fill_random_cuda);
}
}  // namespace
}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CUDA, m) { m.impl("project_kron", &zoo_kernels::project_kron_cuda); }
