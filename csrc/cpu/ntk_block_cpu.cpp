#include <torch/library.h>

#include "../ntk_impl.h"

namespace zoo_kernels {
namespace {
at::Tensor ntk_block_cpu(const at::Tensor& acts1, const at::Tensor& grads1, const at::Tensor& acts2,
                         const at::Tensor& grads2, bool trace) {
  return ntk_block_impl(acts1, grads1, acts2, grads2, trace);
}
}  // namespace
}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CPU, m) { m.impl("ntk_block", &zoo_kernels::ntk_block_cpu); }
