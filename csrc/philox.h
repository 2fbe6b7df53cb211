// Counter-based random matrix shared by the CPU and CUDA code.
//
// Entry (row, col) of the unscaled random matrix R(seed) is a pure function of
// (seed, row, col): Philox4x32-10 keyed by the 64-bit seed, with the 128-bit
// counter (row, col / B). One Philox call gives the whole block of B columns:
//   rademacher: B = 128, entry = +1 if bit (col % 128) is 0, else -1
//   gaussian:   B = 4,   entries = two Box-Muller pairs (computed in double)
// Tiling, thread count, device and batch chunking therefore never change R.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ZK_HD __host__ __device__ __forceinline__
#else
#define ZK_HD inline
#endif

namespace zoo_kernels {

enum class Dist : int { Rademacher = 0, Gaussian = 1 };

constexpr int64_t kRademacherBlock = 128;
constexpr int64_t kGaussianBlock = 4;

struct U32x4 {
  uint32_t v[4];
};

ZK_HD U32x4 philox4x32_10(uint64_t row, uint64_t block, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(row), c1 = static_cast<uint32_t>(row >> 32);
  uint32_t c2 = static_cast<uint32_t>(block), c3 = static_cast<uint32_t>(block >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return U32x4{{c0, c1, c2, c3}};
}

// Seed of an independent stream derived from (seed, stream): splitmix64.
// zoo_kernels.ops.derive_seed mirrors this in Python.
ZK_HD uint64_t derive_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Sign (+1/-1) of bit `j` (0..127) of one Philox output.
ZK_HD float rademacher_sign(const U32x4& r, int j) {
  return ((r.v[j >> 5] >> (j & 31)) & 1u) ? -1.0f : 1.0f;
}

// Gaussian pair from two 32-bit words; uniform u1 lies in (0, 1), never 0.
ZK_HD void box_muller(uint32_t a, uint32_t b, double* z0, double* z1) {
  const double u1 = (static_cast<double>(a) + 0.5) * 2.3283064365386963e-10;
  const double u2 = static_cast<double>(b) * 2.3283064365386963e-10;
  const double r = sqrt(-2.0 * log(u1));
  const double t = 6.283185307179586 * u2;
  *z0 = r * cos(t);
  *z1 = r * sin(t);
}

// Gaussian stream uses a different key, so it never shares bits with Rademacher.
ZK_HD uint64_t gaussian_key(uint64_t seed) { return seed ^ 0x6A09E667F3BCC909ull; }

// The four Gaussians of column block `block` of row `row`.
ZK_HD void gaussian_block(uint64_t row, uint64_t block, uint64_t seed, double out[4]) {
  const U32x4 r = philox4x32_10(row, block, gaussian_key(seed));
  box_muller(r.v[0], r.v[1], &out[0], &out[1]);
  box_muller(r.v[2], r.v[3], &out[2], &out[3]);
}

// One entry, for references and tail handling (the fill kernels work by block).
ZK_HD double random_entry(uint64_t row, uint64_t col, uint64_t seed, Dist dist) {
  if (dist == Dist::Rademacher) {
    const U32x4 r = philox4x32_10(row, col / kRademacherBlock, seed);
    return rademacher_sign(r, static_cast<int>(col % kRademacherBlock));
  }
  double g[4];
  gaussian_block(row, col / kGaussianBlock, seed, g);
  return g[col % kGaussianBlock];
}

}  // namespace zoo_kernels
