#pragma once
#include "../common.h"

namespace zoo_kernels {
// CUDA fill of the counter-based random matrix (see philox.h); same result as fill_random_cpu.
// `out`: 2-D contiguous float/double CUDA tensor; runs on the current stream of out's device.
void fill_random_cuda(at::Tensor& out, int64_t row0, int64_t col0, uint64_t seed, Dist dist);
}
