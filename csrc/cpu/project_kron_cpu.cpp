#include <torch/library.h>

#include "random_matrix_cpu.h"

namespace zoo_kernels {
namespace {
at::Tensor project_kron_cpu(const at::Tensor& acts, const at::Tensor& grads, int64_t k_in, int64_t k_out,
                            int64_t seed, std::string dist) {
  return project_kron_impl(acts, grads, k_in, k_out, seed, dist, &fill_random_cpu);
}
}  // namespace
}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CPU, m) { m.impl("project_kron", &zoo_kernels::project_kron_cpu); }
