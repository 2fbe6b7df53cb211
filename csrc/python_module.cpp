// pybind11 module zoo_kernels._C: loading it registers the ops; build_info() reports the build.
#include <pybind11/pybind11.h>

#ifndef ZK_VERSION
#define ZK_VERSION "unknown"
#endif
#ifndef ZK_CUDA_ARCHS
#define ZK_CUDA_ARCHS ""
#endif

namespace zoo_kernels {
int64_t cuda_version();
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "zoo_kernels compiled ops (registered under torch.ops.zoo_kernels)";
  m.def("build_info", []() {
    pybind11::dict d;
    d["version"] = ZK_VERSION;
#ifdef WITH_CUDA
    d["with_cuda"] = true;
#else
    d["with_cuda"] = false;
#endif
    const int64_t v = zoo_kernels::cuda_version();
    d["cuda_version"] = v < 0 ? pybind11::object(pybind11::none())
                              : pybind11::object(pybind11::str(std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10)));
    d["cuda_archs"] = ZK_CUDA_ARCHS;
#ifdef _OPENMP
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    return d;
  });
}
