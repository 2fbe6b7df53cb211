#pragma once
#include "../common.h"

namespace zoo_kernels {
void fill_random_cpu(at::Tensor& out, int64_t row0, int64_t col0, uint64_t seed, Dist dist);
}
