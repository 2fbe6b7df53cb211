// CUDA fill of the counter-based random matrix (see philox.h).
//
// Rademacher: one warp owns up to 32 consecutive 128-column blocks of one row. Lane l computes the
// Philox output of block l (one call per (row, block), as on the CPU), then the warp writes the blocks
// one by one: the four words of block i are broadcast with shuffles and lane l writes columns
// 32 * w + l (bit l of word w), so every store instruction covers 32 consecutive entries.
// Gaussian: one thread per (row, 4-column block), consecutive threads on consecutive blocks of a row.
// Partial blocks at either end (any row0/col0, any width) are clipped to the target.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "random_matrix_cuda.h"

namespace zoo_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerCta = kThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rademacher_kernel(T* __restrict__ out, int64_t rows, int64_t cols, int64_t row0, int64_t col0, uint64_t seed,
                      int64_t blocks_per_row, int64_t groups_per_row) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t n_items = rows * groups_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerCta;
  const int64_t first_block = col0 / kRademacherBlock;  // global index of the first column block
  const int64_t col_end = col0 + cols;
  // `item` is the same for the whole warp, so the loop and the shuffles below are warp-uniform.
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + (threadIdx.x >> 5); item < n_items;
       item += stride) {
    const int64_t r = item / groups_per_row;
    const int64_t b0 = (item - r * groups_per_row) * 32;  // first block of this group, relative
    const int nb = blocks_per_row - b0 < 32 ? static_cast<int>(blocks_per_row - b0) : 32;
    const uint64_t row = static_cast<uint64_t>(row0 + r);
    U32x4 mine{{0u, 0u, 0u, 0u}};
    if (lane < nb) mine = philox4x32_10(row, static_cast<uint64_t>(first_block + b0 + lane), seed);
    T* orow = out + r * cols;
    for (int i = 0; i < nb; ++i) {
      const int64_t base = (first_block + b0 + i) * kRademacherBlock;  // global column of bit 0
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const uint32_t word = __shfl_sync(0xffffffffu, mine.v[w], i);
        const int64_t c = base + 32 * w + lane;
        if (c >= col0 && c < col_end) orow[c - col0] = T(1) - T(2) * static_cast<T>((word >> lane) & 1u);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gaussian_kernel(T* __restrict__ out, int64_t rows, int64_t cols, int64_t row0, int64_t col0, uint64_t seed,
                    int64_t blocks_per_row) {
  const int64_t n_items = rows * blocks_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first_block = col0 / kGaussianBlock;
  const int64_t col_end = col0 + cols;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < n_items; item += stride) {
    const int64_t r = item / blocks_per_row;
    const int64_t block = first_block + (item - r * blocks_per_row);
    double g[4];
    gaussian_block(static_cast<uint64_t>(row0 + r), static_cast<uint64_t>(block), seed, g);
    T* orow = out + r * cols;
    const int64_t base = block * kGaussianBlock;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t c = base + q;
      if (c >= col0 && c < col_end) orow[c - col0] = static_cast<T>(g[q]);
    }
  }
}

// Enough CTAs to fill the device a few times over; the kernels loop over the rest.
unsigned int grid_for(int64_t ctas_needed) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(ctas_needed, sms * 32)));
}

template <typename T>
void fill_typed(at::Tensor& out, int64_t row0, int64_t col0, uint64_t seed, Dist dist) {
  T* data = out.data_ptr<T>();
  const int64_t rows = out.size(0), cols = out.size(1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (dist == Dist::Rademacher) {
    const int64_t blocks = (col0 + cols - 1) / kRademacherBlock - col0 / kRademacherBlock + 1;
    const int64_t groups = (blocks + 31) / 32;
    const int64_t warps = rows * groups;
    rademacher_kernel<T><<<grid_for((warps + kWarpsPerCta - 1) / kWarpsPerCta), kThreads, 0, stream>>>(
        data, rows, cols, row0, col0, seed, blocks, groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t blocks = (col0 + cols - 1) / kGaussianBlock - col0 / kGaussianBlock + 1;
    const int64_t threads = rows * blocks;
    gaussian_kernel<T><<<grid_for((threads + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        data, rows, cols, row0, col0, seed, blocks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void fill_random_op(at::Tensor out, int64_t row0, int64_t col0, int64_t seed, std::string dist) {
  check_fill_target("fill_random", out, row0, col0);
  fill_random_cuda(out, row0, col0, static_cast<uint64_t>(seed), parse_dist("fill_random", dist));
}

}  // namespace

void fill_random_cuda(at::Tensor& out, int64_t row0, int64_t col0, uint64_t seed, Dist dist) {
  TORCH_CHECK(out.is_cuda(), "fill_random_cuda: `out` must be a CUDA tensor, got ", out.device());
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  if (out.scalar_type() == at::kDouble)
    fill_typed<double>(out, row0, col0, seed, dist);
  else
    fill_typed<float>(out, row0, col0, seed, dist);
}

}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CUDA, m) { m.impl("fill_random", &zoo_kernels::fill_random_op); }
