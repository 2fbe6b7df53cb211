// CPU fill of the counter-based random matrix (see philox.h), parallel over rows.
#include "random_matrix_cpu.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

namespace zoo_kernels {
namespace {

// Signs of the 8 bits of every byte: a full 128-column block is 16 copies of 8 entries.
template <typename T>
struct SignTable {
  T v[256][8];
  SignTable() {
    for (int byte = 0; byte < 256; ++byte)
      for (int b = 0; b < 8; ++b) v[byte][b] = ((byte >> b) & 1) ? T(-1) : T(1);
  }
};

template <typename T>
const SignTable<T>& sign_table() {
  static const SignTable<T> table;
  return table;
}

template <typename T>
void fill_row_rademacher(T* o, int64_t cols, uint64_t row, uint64_t col0, uint64_t seed) {
  const SignTable<T>& table = sign_table<T>();
  int64_t j = 0;
  while (j < cols) {
    const uint64_t col = col0 + j;
    const int off = static_cast<int>(col % kRademacherBlock);
    const int64_t len = std::min<int64_t>(kRademacherBlock - off, cols - j);
    const U32x4 bits = philox4x32_10(row, col / kRademacherBlock, seed);
    if (off == 0 && len == kRademacherBlock) {
      for (int w = 0; w < 4; ++w)  // full block: bit b of word w is column 32 w + b
        for (int byte = 0; byte < 4; ++byte)
          std::memcpy(o + j + 32 * w + 8 * byte, table.v[(bits.v[w] >> (8 * byte)) & 0xFFu], 8 * sizeof(T));
    } else {
      for (int64_t q = 0; q < len; ++q) o[j + q] = static_cast<T>(rademacher_sign(bits, off + static_cast<int>(q)));
    }
    j += len;
  }
}

template <typename T>
void fill_row_gaussian(T* o, int64_t cols, uint64_t row, uint64_t col0, uint64_t seed) {
  int64_t j = 0;
  while (j < cols) {
    const uint64_t col = col0 + j;
    const int off = static_cast<int>(col % kGaussianBlock);
    const int64_t len = std::min<int64_t>(kGaussianBlock - off, cols - j);
    double g[4];
    gaussian_block(row, col / kGaussianBlock, seed, g);
    for (int64_t q = 0; q < len; ++q) o[j + q] = static_cast<T>(g[off + q]);
    j += len;
  }
}

template <typename T>
void fill_typed(at::Tensor& out, int64_t row0, int64_t col0, uint64_t seed, Dist dist) {
  T* data = out.data_ptr<T>();
  const int64_t rows = out.size(0), cols = out.size(1);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint64_t row = static_cast<uint64_t>(row0 + r);
      if (dist == Dist::Rademacher)
        fill_row_rademacher(data + r * cols, cols, row, static_cast<uint64_t>(col0), seed);
      else
        fill_row_gaussian(data + r * cols, cols, row, static_cast<uint64_t>(col0), seed);
    }
  });
}

void fill_random_op(at::Tensor out, int64_t row0, int64_t col0, int64_t seed, std::string dist) {
  check_fill_target("fill_random", out, row0, col0);
  fill_random_cpu(out, row0, col0, static_cast<uint64_t>(seed), parse_dist("fill_random", dist));
}

}  // namespace

void fill_random_cpu(at::Tensor& out, int64_t row0, int64_t col0, uint64_t seed, Dist dist) {
  if (out.numel() == 0) return;
  if (out.scalar_type() == at::kDouble)
    fill_typed<double>(out, row0, col0, seed, dist);
  else
    fill_typed<float>(out, row0, col0, seed, dist);
}

}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CPU, m) { m.impl("fill_random", &zoo_kernels::fill_random_op); }
