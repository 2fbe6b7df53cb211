// SGD steps of the head-aware linearized model (zoo_kernels.calibrate.HeadAwarePredictor), fused: per path and
// step, only the minibatch's rows of the feature-Jacobian sketch are read, in place (no gather copy, no
// per-step dispatch). CPU only: the prediction's dynamics run on the CPU in float64 on every device.
//
// State per path p: head W (C, D), b (C); sketch coordinates theta (k); the warm-up buffer's coefficient c.
// Features of row i: z = phi0_i + U (S_i theta + c V_i), phi = z (or radius_i z / |z| with a radius), outputs
// W phi + b. Gradients of the batch's mean loss go back through the same chain; torch.optim.SGD's momentum,
// dampening, Nesterov and weight decay (toward w0: on W, b, theta and c alike) update the state.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace zoo_kernels {
namespace {

// torch.optim.SGD's buffer update and step direction for one parameter group of n values.
struct Momentum {
  double m, d;
  bool nesterov;
  void apply(double* param, double* buf, const double* g, int64_t n, double lr, bool started) const {
    for (int64_t j = 0; j < n; ++j) {
      const double bj = (!started || m == 0.0) ? g[j] : m * buf[j] + (1.0 - d) * g[j];
      buf[j] = bj;
      param[j] -= lr * (nesterov ? g[j] + m * bj : bj);
    }
  }
};

// The inner loops, compiled for AVX2+FMA too (chosen at load time). dot keeps 32 partial sums (four or eight
// vector registers) so that the additions do not wait on each other.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZK_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define ZK_CLONES
#endif
template <typename T>
__attribute__((always_inline)) inline T dot_impl(const T* a, const T* b, int64_t n) {
  constexpr int64_t L = 32;
  T acc[L] = {};
  int64_t j = 0;
  for (; j + L <= n; j += L) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) acc[l] += a[j + l] * b[j + l];
  }
  T sum = 0;
  for (; j < n; ++j) sum += a[j] * b[j];
  for (int64_t l = 0; l < L; ++l) sum += acc[l];
  return sum;
}
ZK_CLONES float dot(const float* a, const float* b, int64_t n) { return dot_impl(a, b, n); }
ZK_CLONES double dot(const double* a, const double* b, int64_t n) { return dot_impl(a, b, n); }
ZK_CLONES void axpy(const float* x, float a, float* y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] += a * x[j];
}
ZK_CLONES void axpy(const double* x, double a, double* y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] += a * x[j];
}

template <typename scalar_t>
void run_path(int64_t p, const scalar_t* S, const double* Ut, const double* phi0, const double* radius,
              const double* V, const int64_t* y, const int64_t* batches, const int64_t* sizes, const double* lrs,
              double* W, double* b, double* theta, double* c, double* bW, double* bb, double* bth, double* bc,
              int64_t* dead, int64_t E, int64_t Bmax, int64_t r, int64_t k, int64_t D, int64_t C,
              const Momentum& mom, double wd, bool head_trainable, bool ce, bool started) {
  W += p * C * D, b += p * C, theta += p * k, c += p;
  bW += p * C * D, bb += p * C, bth += p * k, bc += p;
  std::vector<scalar_t> th(k), vr_s(r), gth_s(k);
  std::vector<double> gW(C * D), gb(C), gth(k), zr(r), z(D), ph(D), f(C), g(C), vphi(D);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t B = sizes[e];
    const int64_t* idx = batches + (p * E + e) * Bmax;
    for (int64_t j = 0; j < k; ++j) th[j] = static_cast<scalar_t>(theta[j]);
    std::fill(gW.begin(), gW.end(), 0.0), std::fill(gb.begin(), gb.end(), 0.0);
    std::fill(gth_s.begin(), gth_s.end(), scalar_t(0));
    for (int64_t q = 0; q < B; ++q) {
      const int64_t i = idx[q];
      const scalar_t* Si = S + i * r * k;
      for (int64_t a = 0; a < r; ++a) {  // S_i theta (in the sketch's dtype, as the reference) + c V_i
        zr[a] = static_cast<double>(dot(Si + a * k, th.data(), k)) + (V ? *c * V[i * r + a] : 0.0);
      }
      std::copy(phi0 + i * D, phi0 + (i + 1) * D, z.begin());  // z = phi0 + U zr
      for (int64_t a = 0; a < r; ++a) {
        if (Ut) {
          axpy(Ut + a * D, zr[a], z.data(), D);
        } else {
          z[a] += zr[a];
        }
      }
      double scale = 1.0, inv = 0.0;
      if (radius) {
        double nn = 0.0;
        for (int64_t d = 0; d < D; ++d) nn += z[d] * z[d];
        const double norm = std::max(std::sqrt(nn), 1e-12);
        scale = radius[i] / norm, inv = 1.0 / norm;
      }
      for (int64_t d = 0; d < D; ++d) ph[d] = z[d] * scale;
      double fmax = -INFINITY;
      for (int64_t o = 0; o < C; ++o) {
        f[o] = b[o] + dot(W + o * D, ph.data(), D);
        fmax = std::max(fmax, f[o]);
      }
      if (ce) {  // softmax - onehot
        double sum = 0.0;
        for (int64_t o = 0; o < C; ++o) sum += (g[o] = std::exp(f[o] - fmax));
        for (int64_t o = 0; o < C; ++o) g[o] /= sum;
      } else {
        for (int64_t o = 0; o < C; ++o) g[o] = f[o];
      }
      g[y[i]] -= 1.0;
      for (int64_t o = 0; o < C; ++o) g[o] /= static_cast<double>(B);
      if (head_trainable) {
        for (int64_t o = 0; o < C; ++o) {
          gb[o] += g[o];
          axpy(ph.data(), g[o], gW.data() + o * D, D);
        }
      }
      std::fill(vphi.begin(), vphi.end(), 0.0);  // dl/dphi = W^T g
      for (int64_t o = 0; o < C; ++o) axpy(W + o * D, g[o], vphi.data(), D);
      if (radius) {  // back through phi = radius z/|z|: scale (I - zh zh^T), zh = z/|z|
        double along = 0.0;
        for (int64_t d = 0; d < D; ++d) along += z[d] * inv * vphi[d];
        for (int64_t d = 0; d < D; ++d) vphi[d] = scale * (vphi[d] - z[d] * inv * along);
      }
      for (int64_t a = 0; a < r; ++a) {  // U^T vphi
        if (Ut) {
          vr_s[a] = static_cast<scalar_t>(dot(Ut + a * D, vphi.data(), D));
        } else {
          vr_s[a] = static_cast<scalar_t>(vphi[a]);
        }
      }
      for (int64_t a = 0; a < r; ++a) axpy(Si + a * k, vr_s[a], gth_s.data(), k);  // theta's gradient S_i^T v
    }
    for (int64_t j = 0; j < k; ++j) gth[j] = static_cast<double>(gth_s[j]);
    if (wd != 0.0) {
      if (head_trainable) {
        for (int64_t j = 0; j < C * D; ++j) gW[j] += wd * W[j];
        for (int64_t o = 0; o < C; ++o) gb[o] += wd * b[o];
      }
      for (int64_t j = 0; j < k; ++j) gth[j] += wd * theta[j];
    }
    const double lr = lrs[e];
    const bool st = started || e > 0;
    mom.apply(W, bW, gW.data(), C * D, lr, st);
    mom.apply(b, bb, gb.data(), C, lr, st);
    mom.apply(theta, bth, gth.data(), k, lr, st);
    if (V) {
      const double gc = wd * *c;
      mom.apply(c, bc, &gc, 1, lr, st);
    }
    bool finite = true;
    for (int64_t j = 0; j < C * D && finite; ++j) finite = std::isfinite(W[j]);
    for (int64_t j = 0; j < k && finite; ++j) finite = std::isfinite(theta[j]);
    if (!finite) {
      dead[p] = e;
      return;
    }
  }
}

void check(bool ok, const char* what) { TORCH_CHECK(ok, "head_aware_sgd_steps: ", what); }

void head_aware_sgd_steps_cpu(const at::Tensor& sketch, const at::Tensor& basis, const at::Tensor& phi0,
                              const at::Tensor& radius, const at::Tensor& offset, const at::Tensor& labels,
                              const at::Tensor& batches, const at::Tensor& sizes, const at::Tensor& lrs,
                              const at::Tensor& W, const at::Tensor& b, const at::Tensor& theta, const at::Tensor& c,
                              const at::Tensor& bufW, const at::Tensor& bufb, const at::Tensor& buftheta,
                              const at::Tensor& bufc, const at::Tensor& dead, double momentum, double dampening,
                              bool nesterov, double weight_decay, bool head_trainable, const std::string& loss,
                              bool started) {
  check(sketch.dim() == 3 && sketch.is_contiguous() &&
            (sketch.scalar_type() == at::kFloat || sketch.scalar_type() == at::kDouble),
        "sketch must be a contiguous (n, r, k) float32/float64 tensor");
  check(loss == "ce" || loss == "mse", "loss must be 'ce' or 'mse'");
  const int64_t n = sketch.size(0), r = sketch.size(1), k = sketch.size(2);
  check(phi0.dim() == 2 && phi0.size(0) == n, "phi0 must be (n, D)");
  const int64_t D = phi0.size(1);
  check(W.dim() == 3 && W.size(2) == D, "W must be (P, C, D)");
  const int64_t P = W.size(0), C = W.size(1);
  check(batches.dim() == 3 && batches.size(0) == P, "batches must be (P, E, Bmax)");
  const int64_t E = batches.size(1), Bmax = batches.size(2);
  auto f64 = [](const at::Tensor& t) { return t.scalar_type() == at::kDouble && t.is_contiguous(); };
  check(basis.numel() == 0 ? r == D : (basis.dim() == 2 && basis.size(0) == D && basis.size(1) == r && f64(basis)),
        "basis must be empty (r == D) or a contiguous float64 (D, r) tensor");
  check(f64(phi0) && f64(W) && f64(b) && f64(theta) && f64(c) && f64(bufW) && f64(bufb) && f64(buftheta) &&
            f64(bufc) && f64(lrs),
        "phi0, W, b, theta, c, the buffers and lrs must be contiguous float64");
  check(b.numel() == P * C && theta.numel() == P * k && c.numel() == P && bufW.numel() == W.numel() &&
            bufb.numel() == P * C && buftheta.numel() == P * k && bufc.numel() == P,
        "state shapes: b (P, C), theta (P, k), c (P,), buffers as their parameters");
  check(radius.numel() == 0 || (f64(radius) && radius.numel() == n), "radius must be empty or float64 (n,)");
  check(offset.numel() == 0 || (f64(offset) && offset.numel() == n * r), "offset must be empty or float64 (n, r)");
  check(labels.scalar_type() == at::kLong && labels.is_contiguous() && labels.numel() == n, "labels must be int64 (n,)");
  check(batches.scalar_type() == at::kLong && batches.is_contiguous(), "batches must be contiguous int64");
  check(sizes.scalar_type() == at::kLong && sizes.is_contiguous() && sizes.numel() == E, "sizes must be int64 (E,)");
  check(lrs.numel() == E, "lrs must be (E,)");
  check(dead.scalar_type() == at::kLong && dead.is_contiguous() && dead.numel() == P, "dead must be int64 (P,)");
  const int64_t* sz = sizes.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) check(sz[e] >= 1 && sz[e] <= Bmax, "sizes must be in [1, Bmax]");
  const int64_t* yy = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) check(yy[i] >= 0 && yy[i] < C, "labels must be in [0, C)");
  const int64_t* bi = batches.data_ptr<int64_t>();
  for (int64_t j = 0; j < batches.numel(); ++j) check(bi[j] >= 0 && bi[j] < n, "batch indices must be in [0, n)");
  const Momentum mom{momentum, dampening, nesterov};
  const bool ce = loss == "ce";
  int64_t* dd = dead.data_ptr<int64_t>();
  const at::Tensor Ut = basis.numel() ? basis.t().contiguous() : basis;  // (r, D): rows contiguous
  AT_DISPATCH_FLOATING_TYPES(sketch.scalar_type(), "head_aware_sgd_steps", [&] {
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        if (dd[p] >= 0) continue;  // already diverged
        run_path<scalar_t>(p, sketch.data_ptr<scalar_t>(), basis.numel() ? Ut.data_ptr<double>() : nullptr,
                           phi0.data_ptr<double>(), radius.numel() ? radius.data_ptr<double>() : nullptr,
                           offset.numel() ? offset.data_ptr<double>() : nullptr, yy, bi, sz, lrs.data_ptr<double>(),
                           W.data_ptr<double>(), b.data_ptr<double>(), theta.data_ptr<double>(), c.data_ptr<double>(),
                           bufW.data_ptr<double>(), bufb.data_ptr<double>(), buftheta.data_ptr<double>(),
                           bufc.data_ptr<double>(), dd, E, Bmax, r, k, D, C, mom, weight_decay, head_trainable, ce,
                           started);
      }
    });
  });
}

}  // namespace
}  // namespace zoo_kernels

TORCH_LIBRARY_IMPL(zoo_kernels, CPU, m) { m.impl("head_aware_sgd_steps", &zoo_kernels::head_aware_sgd_steps_cpu); }
