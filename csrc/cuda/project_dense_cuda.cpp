#include <torch/library.h>

#include "random_matrix_cuda.h"

namespace zoo_kernels {
namespace {
at::Tensor project_dense_cuda(const at::Tensor& acts, const at::Tensor& grads, int64_t k, int64_t seed,
                              std::string dist, int64_t row_offset) {
  return project_dense_impl(acts, grads, k, seed, dist, row_offset, &fill_random_cuda);
}
}  // namespace
}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CUDA, m) { m.impl("project_dense", &zoo_kernels::project_dense_cuda); }
