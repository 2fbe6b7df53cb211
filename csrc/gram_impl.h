// Streaming Gram accumulation G += S^T S (and P += S^T Y) in float64, tile by tile over the rows of S,
// so that a float32 sketch of millions of rows never needs a float64 copy of itself.
#pragma once
#include "common.h"

namespace zoo_kernels {

inline void gram_accumulate_impl(at::Tensor& gram, const at::Tensor& sketch, at::Tensor& cross,
                                 const at::Tensor& targets) {
  const char* op = "gram_accumulate_";
  TORCH_CHECK(sketch.dim() == 2, op, ": `sketch` must be 2-D (rows, k), got shape ", sketch.sizes());
  const int64_t rows = sketch.size(0), k = sketch.size(1);
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == k && gram.size(1) == k, op, ": `gram` must be (", k, ", ", k,
              ") to match `sketch` ", sketch.sizes(), ", got ", gram.sizes());
  TORCH_CHECK(gram.scalar_type() == at::kDouble, op, ": `gram` must be float64, got ", gram.scalar_type());
  TORCH_CHECK(gram.device() == sketch.device(), op, ": `gram` and `sketch` must be on the same device, got ",
              gram.device(), " and ", sketch.device());
  const auto dt = sketch.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
              ": `sketch` must be a floating tensor, got ", dt);
  const bool with_y = targets.numel() > 0;
  if (with_y) {
    TORCH_CHECK(targets.dim() == 2 && targets.size(0) == rows, op, ": `targets` must be (", rows,
                ", m) to match `sketch`, got ", targets.sizes());
    TORCH_CHECK(cross.dim() == 2 && cross.size(0) == k && cross.size(1) == targets.size(1) &&
                    cross.scalar_type() == at::kDouble && cross.device() == sketch.device(),
                op, ": `cross` must be float64 (", k, ", ", targets.size(1), ") on ", sketch.device(), ", got ",
                cross.scalar_type(), " ", cross.sizes(), " on ", cross.device());
  }
  c10::DeviceGuard guard(sketch.device());
  constexpr int64_t kRows = 8192;
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t r = std::min(kRows, rows - r0);
    const at::Tensor tile = sketch.narrow(0, r0, r).to(at::kDouble);
    gram.addmm_(tile.t(), tile);
    if (with_y) cross.addmm_(tile.t(), targets.narrow(0, r0, r).to(at::kDouble));
  }
  const bool finite = std::isfinite(gram.sum().item<double>()) || at::isfinite(gram).all().item<bool>();
  TORCH_CHECK(finite, op, ": the Gram is not finite; `sketch` contains NaN or Inf");
}

}  // namespace zoo_kernels
