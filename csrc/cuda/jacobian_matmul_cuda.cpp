#include <torch/library.h>

#include "../jacobian_matmul_impl.h"

namespace zoo_kernels {
namespace {
at::Tensor jacobian_t_matmul_cuda(const at::Tensor& acts, const at::Tensor& grads, const at::Tensor& V,
                                  int64_t max_tile) {
  return jacobian_t_matmul_impl(acts, grads, V, max_tile);
}
at::Tensor jacobian_matmul_cuda(const at::Tensor& acts, const at::Tensor& grads, const at::Tensor& W,
                                int64_t max_tile) {
  return jacobian_matmul_impl(acts, grads, W, max_tile);
}
}  // namespace
}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CUDA, m) {
  m.impl("jacobian_t_matmul", &zoo_kernels::jacobian_t_matmul_cuda);
  m.impl("jacobian_matmul", &zoo_kernels::jacobian_matmul_cuda);
}
