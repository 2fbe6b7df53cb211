#include <torch/library.h>

#include "../gram_impl.h"

namespace zoo_kernels {
namespace {
void gram_accumulate_cpu(at::Tensor gram, const at::Tensor& sketch, at::Tensor cross, const at::Tensor& targets) {
  gram_accumulate_impl(gram, sketch, cross, targets);
}
}  // namespace
}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CPU, m) { m.impl("gram_accumulate_", &zoo_kernels::gram_accumulate_cpu); }
